//! An optional guard layer whose response type does not depend on whether it is on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use nhi_guard_core::GuardBody;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// Applies the guard layer `L` when present; otherwise passes requests through and
/// wraps the response body in [`GuardBody`] so both cases have one response type.
#[derive(Debug, Clone)]
pub struct Maybe<L>(pub(crate) Option<L>);

impl<L, S> Layer<S> for Maybe<L>
where
    L: Layer<S>,
{
    type Service = MaybeService<L::Service, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(l) => MaybeService::On { svc: l.layer(inner) },
            None => MaybeService::Off { svc: inner },
        }
    }
}

/// The service of [`Maybe`].
#[derive(Debug, Clone)]
pub enum MaybeService<A, S> {
    /// The control is on.
    On {
        /// The guarded service.
        svc: A,
    },
    /// The control is off.
    Off {
        /// The inner service.
        svc: S,
    },
}

impl<A, S, ReqBody, ResBody> Service<Request<ReqBody>> for MaybeService<A, S>
where
    A: Service<Request<ReqBody>, Response = Response<GuardBody<ResBody>>, Error = S::Error>,
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = MaybeFuture<A::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::On { svc } => svc.poll_ready(cx),
            Self::Off { svc } => svc.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match self {
            Self::On { svc } => MaybeFuture {
                kind: Kind::On { fut: svc.call(req) },
            },
            Self::Off { svc } => MaybeFuture {
                kind: Kind::Off { fut: svc.call(req) },
            },
        }
    }
}

pin_project! {
    /// The response future of [`MaybeService`].
    #[derive(Debug)]
    pub struct MaybeFuture<FA, FS> {
        #[pin]
        kind: Kind<FA, FS>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<FA, FS> {
        On { #[pin] fut: FA },
        Off { #[pin] fut: FS },
    }
}

impl<FA, FS, ResBody, E> Future for MaybeFuture<FA, FS>
where
    FA: Future<Output = Result<Response<GuardBody<ResBody>>, E>>,
    FS: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<GuardBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::On { fut } => fut.poll(cx),
            KindProj::Off { fut } => {
                let res = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(res.map(GuardBody::inner)))
            }
        }
    }
}

/// The application service under [`NhiGuardLayer`](crate::NhiGuardLayer), its
/// future boxed: every layer's future then holds a pointer instead of the
/// application's whole future, which each of them would otherwise move again as it
/// wraps it.
#[derive(Debug, Clone)]
pub struct Boxed<S>(pub(crate) S);

impl<S, R> Service<R> for Boxed<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}
