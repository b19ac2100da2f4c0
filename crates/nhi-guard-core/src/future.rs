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
        Rejected {
            response: Rejection<B>,
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
                response: Rejection::new(response),
            },
        }
    }
}

/// A denial a guard layer answers itself, held by its response future until the
/// first poll: the one rejected state of every guard future.
///
/// Boxed: a denial is the rare path, and an inline `Response` would make every
/// layer's future (moved on each call) a hundred bytes bigger.
#[derive(Debug)]
pub struct Rejection<B>(Option<Box<Response<GuardBody<B>>>>);

impl<B> Default for Rejection<B> {
    /// Already taken: [`Rejection::take`] gives the empty 500.
    fn default() -> Self {
        Self(None)
    }
}

impl<B> Rejection<B> {
    /// Holds `response`.
    pub fn new(response: Response<GuardBody<B>>) -> Self {
        Self(Some(Box::new(response)))
    }

    /// The response. A future polled again after it completed gets a well-formed
    /// empty 500 rather than a panic.
    pub fn take(&mut self) -> Response<GuardBody<B>> {
        match self.0.take() {
            Some(res) => *res,
            None => {
                let mut res = Response::new(GuardBody::full(bytes::Bytes::new()));
                *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                res
            }
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
            KindProj::Rejected { response } => Poll::Ready(Ok(response.take())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_is_the_denial_once_then_an_empty_500() {
        let mut denied = Response::new(GuardBody::<()>::full(bytes::Bytes::from_static(b"no")));
        *denied.status_mut() = http::StatusCode::FORBIDDEN;
        let mut r = Rejection::new(denied);
        assert_eq!(r.take().status(), http::StatusCode::FORBIDDEN);
        assert_eq!(r.take().status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            Rejection::<()>::default().take().status(),
            http::StatusCode::INTERNAL_SERVER_ERROR
        );

        // Through the response future: ready at the first poll, 500 after.
        let mut fut = std::pin::pin!(
            ResponseFuture::<std::future::Ready<Result<Response<()>, ()>>, ()>::rejected(Response::new(
                GuardBody::full(bytes::Bytes::new())
            ))
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let first = fut.as_mut().poll(&mut cx);
        assert!(matches!(first, Poll::Ready(Ok(ref r)) if r.status() == http::StatusCode::OK));
        let again = fut.as_mut().poll(&mut cx);
        assert!(
            matches!(again, Poll::Ready(Ok(ref r)) if r.status() == http::StatusCode::INTERNAL_SERVER_ERROR)
        );
    }
}
