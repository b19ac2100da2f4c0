//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use nhi_guard_core::denial::Protocol;
use nhi_guard_core::store::StoreFuture;
use nhi_guard_core::{GuardBody, SecurityContext};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::layer::Config;
use crate::service::{Fields, Meta, Verdict, unavailable, verdict};

/// What the future needs to finish a request after a shared store answered.
pub(crate) struct Pending<S, ReqB> {
    pub(crate) inner: S,
    pub(crate) req: Request<ReqB>,
    pub(crate) config: Arc<Config>,
    pub(crate) ctx: SecurityContext,
    pub(crate) meta: Meta,
    pub(crate) n: usize,
    pub(crate) protocol: Protocol,
}

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit): waits for a shared store
    /// if there is one, then runs the inner service (adding the rate-limit fields to
    /// its response) or answers the denial.
    pub struct ResponseFuture<S, ReqB, F, ResB> {
        #[pin]
        state: State<S, ReqB, F, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, F, ResB> {
        Checking {
            check: StoreFuture,
            pending: Option<Box<Pending<S, ReqB>>>,
        },
        Inner {
            #[pin]
            future: F,
            fields: Option<Fields>,
        },
        // Boxed: refusals are the rare path, and the future is moved on every call.
        Ready {
            response: Option<Box<Response<GuardBody<ResB>>>>,
        },
    }
}

impl<S, ReqB, F, ResB> fmt::Debug for ResponseFuture<S, ReqB, F, ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Inner { .. } => "inner",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<S, ReqB, F, ResB> ResponseFuture<S, ReqB, F, ResB> {
    pub(crate) fn inner(future: F, outcomes: Option<Fields>) -> Self {
        Self {
            state: State::Inner {
                future,
                fields: outcomes,
            },
        }
    }

    pub(crate) fn ready(response: Response<GuardBody<ResB>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn checking(check: StoreFuture, pending: Pending<S, ReqB>) -> Self {
        Self {
            state: State::Checking {
                check,
                pending: Some(Box::new(pending)),
            },
        }
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB, S::Future, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Output = Result<Response<GuardBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Checking { check, pending } => {
                    let result = ready!(check.as_mut().poll(cx));
                    let Some(p) = pending.take() else {
                        return Poll::Ready(Ok(internal_error()));
                    };
                    let Pending {
                        mut inner,
                        req,
                        config,
                        ctx,
                        meta,
                        n,
                        protocol,
                    } = *p;
                    let v = match result {
                        Ok(decisions) if decisions.len() == n => {
                            verdict(&config, &ctx, &meta[..n], &decisions, req.headers())
                        }
                        Ok(_) => unavailable(
                            &config,
                            &ctx,
                            protocol,
                            &"store answered the wrong number of decisions",
                        ),
                        Err(e) => unavailable(&config, &ctx, protocol, &e),
                    };
                    let next = match v {
                        Verdict::Pass(fields) => State::Inner {
                            future: inner.call(req),
                            fields,
                        },
                        Verdict::Reject(res) => State::Ready {
                            response: Some(Box::new(res)),
                        },
                    };
                    self.as_mut().project().state.set(next);
                }
                StateProj::Inner { future, fields } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some(f) = fields.take() {
                        f.apply(res.headers_mut());
                    }
                    return Poll::Ready(Ok(res.map(GuardBody::inner)));
                }
                StateProj::Ready { response } => {
                    return Poll::Ready(Ok(response.take().map_or_else(internal_error, |r| *r)));
                }
            }
        }
    }
}

/// Polled after completion: a well-formed empty 500 rather than a panic.
fn internal_error<B>() -> Response<GuardBody<B>> {
    let mut res = Response::new(GuardBody::full(bytes::Bytes::new()));
    *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    res
}
