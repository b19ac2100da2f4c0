//! The response future shared by guard layers that either call the inner service or
//! answer a denial themselves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::GuardBody;

pin_project! {
    /// Response future of a guard service: the inner service's future, or a ready
    /// denial response.
    #[project = ResponseFutureProj]
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Inner {
            #[pin]
            future: F,
        },
        // Boxed: a denial is the rare path, and an inline `Response` would make
        // every layer's future (moved on each call) a hundred bytes bigger.
        Rejected {
            response: Option<Box<Response<GuardBody<B>>>>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// Wraps the inner service's future.
    pub fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    /// A ready denial.
    pub fn rejected(response: Response<GuardBody<B>>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(res.map(GuardBody::inner)))
            }
            KindProj::Rejected { response } => match response.take() {
                Some(res) => Poll::Ready(Ok(*res)),
                // Polled after completion: keep returning a well-formed empty 500
                // rather than panicking.
                None => {
                    let mut res = Response::new(GuardBody::full(bytes::Bytes::new()));
                    *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    Poll::Ready(Ok(res))
                }
            },
        }
    }
}
