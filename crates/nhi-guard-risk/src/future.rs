//! The response future of the risk services.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use nhi_guard_core::future::Rejection;
use nhi_guard_core::{GuardBody, SecurityContext};
use pin_project_lite::pin_project;

use crate::engine::Engine;
use crate::signal::RequestFacts;

/// What to observe once the inner service answered.
pub(crate) struct Observation {
    pub(crate) engine: Arc<Engine>,
    pub(crate) ctx: SecurityContext,
    pub(crate) facts: RequestFacts,
}

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<GuardBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`crate::Risk`] and [`crate::RiskEdge`]: the inner
    /// service's future (observed when it completes), a ready denial, or — with a
    /// shared store — the whole exchange as one boxed future.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner {
            #[pin]
            future: F,
            observe: Option<Box<Observation>>,
        },
        Rejected {
            response: Rejection<B>,
        },
        Shared {
            future: Boxed<B, E>,
        },
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Rejected { .. } => "rejected",
            Kind::Shared { .. } => "shared",
        };
        f.debug_struct("ResponseFuture").field("kind", &kind).finish()
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn inner(future: F, observe: Option<Box<Observation>>) -> Self {
        Self {
            kind: Kind::Inner { future, observe },
        }
    }

    pub(crate) fn rejected(response: Response<GuardBody<B>>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Rejection::new(response),
            },
        }
    }

    pub(crate) fn shared(future: Boxed<B, E>) -> Self {
        Self {
            kind: Kind::Shared { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, observe } => {
                let res = ready!(future.poll(cx))?;
                if let Some(o) = observe.take() {
                    let o = *o;
                    o.engine.observe(&o.ctx, o.facts, res.status());
                }
                Poll::Ready(Ok(res.map(GuardBody::inner)))
            }
            KindProj::Rejected { response } => Poll::Ready(Ok(response.take())),
            KindProj::Shared { future } => future.as_mut().poll(cx),
        }
    }
}
