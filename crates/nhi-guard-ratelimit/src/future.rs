//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use crate::store::{CheckMode, RateLimitCheck, RateLimitDecision, StoreFuture};
use http::{Request, Response};
use nhi_guard_core::denial::Protocol;
use nhi_guard_core::future::Rejection;
use nhi_guard_core::{GuardBody, SecurityContext};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::layer::{Backend, Config};
use crate::memory::{LocalCheck, MAX_LIMITS};
use crate::service::{Fields, Meta, Verdict, addr_bytes, quota_for, unavailable, verdict};

/// What the future needs to finish a request after a shared store answered.
pub(crate) struct Pending<S, ReqB> {
    pub(crate) inner: S,
    pub(crate) req: Request<ReqB>,
    pub(crate) config: Arc<Config>,
    pub(crate) ctx: SecurityContext,
    pub(crate) meta: Meta,
    pub(crate) n: usize,
    pub(crate) protocol: Protocol,
    pub(crate) deferred: Option<Box<Deferred>>,
    /// When the layer's `call` began (`nhi_guard_decision_duration_seconds`).
    pub(crate) started: Option<std::time::Instant>,
}

/// Limits that [exempt verified clients](crate::Limit::exempt_verified), left out
/// on arrival because the request presents a credential: counted against the
/// client address once the inner service answered, if no client verified.
pub(crate) struct Deferred {
    pub(crate) config: Arc<Config>,
    pub(crate) ctx: SecurityContext,
    /// Bit `i` set: the layer's limit `i`.
    pub(crate) mask: u8,
    pub(crate) cost_override: Option<u32>,
    pub(crate) group: Option<Arc<str>>,
}

impl Deferred {
    /// Counts the request against its address unless a client verified: at once on
    /// the in-process store, or through the returned future on a shared one.
    fn charge(self) -> Option<StoreFuture> {
        if self.ctx.read(|s| s.principal.is_some()) {
            return None;
        }
        let addr = self.ctx.client_addr()?;
        let cfg = &*self.config;
        let mut buf = [0u8; 16];
        let len = addr_bytes(addr.key_ip(), &mut buf);
        let checks: Vec<LocalCheck<'_>> = cfg
            .limits
            .iter()
            .enumerate()
            .filter(|(i, _)| self.mask & (1 << i) != 0)
            .map(|(_, limit)| LocalCheck {
                policy: &limit.name,
                key: &buf[..len],
                qualifier: b"",
                quota: quota_for(cfg, limit, None, self.group.as_deref()),
                cost: self.cost_override.unwrap_or(limit.cost),
            })
            .collect();
        match &cfg.backend {
            Backend::Local(store) => {
                let mut out = [RateLimitDecision::default(); MAX_LIMITS];
                let n = checks.len().min(MAX_LIMITS);
                store.check_at(
                    self.ctx.unix_nanos_by(&*cfg.clock),
                    &checks[..n],
                    CheckMode::Consume,
                    &mut out[..n],
                );
                None
            }
            Backend::Shared(store) => {
                let owned: Arc<[RateLimitCheck]> = checks
                    .iter()
                    .map(|c| RateLimitCheck {
                        policy: Arc::from(c.policy),
                        key: c.key.into(),
                        qualifier: Box::default(),
                        quota: c.quota,
                        cost: c.cost,
                    })
                    .collect();
                Some(store.check(owned, CheckMode::Consume))
            }
        }
    }
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
            deferred: Option<Box<Deferred>>,
        },
        // A request that presented a credential and did not verify, counted against
        // its address on a shared store before its answer goes out.
        Charging {
            check: StoreFuture,
            response: Rejection<ResB>,
        },
        Ready {
            response: Rejection<ResB>,
        },
    }
}

impl<S, ReqB, F, ResB> fmt::Debug for ResponseFuture<S, ReqB, F, ResB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Inner { .. } => "inner",
            State::Charging { .. } => "charging",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish()
    }
}

impl<S, ReqB, F, ResB> ResponseFuture<S, ReqB, F, ResB> {
    pub(crate) fn inner(future: F, outcomes: Option<Fields>, deferred: Option<Box<Deferred>>) -> Self {
        Self {
            state: State::Inner {
                future,
                fields: outcomes,
                deferred,
            },
        }
    }

    pub(crate) fn ready(response: Response<GuardBody<ResB>>) -> Self {
        Self {
            state: State::Ready {
                response: Rejection::new(response),
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
                        return Poll::Ready(Ok(Rejection::default().take()));
                    };
                    let Pending {
                        mut inner,
                        req,
                        config,
                        ctx,
                        meta,
                        n,
                        protocol,
                        deferred,
                        started,
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
                    config.metrics.decided(started);
                    let next = match v {
                        Verdict::Pass(fields) => State::Inner {
                            future: inner.call(req),
                            fields,
                            deferred,
                        },
                        Verdict::Reject(res) => State::Ready {
                            response: Rejection::new(res),
                        },
                    };
                    self.as_mut().project().state.set(next);
                }
                StateProj::Inner {
                    future,
                    fields,
                    deferred,
                } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some(f) = fields.take() {
                        f.apply(res.headers_mut());
                    }
                    let res = res.map(GuardBody::inner);
                    let Some(check) = deferred.take().and_then(|d| d.charge()) else {
                        return Poll::Ready(Ok(res));
                    };
                    self.as_mut().project().state.set(State::Charging {
                        check,
                        response: Rejection::new(res),
                    });
                }
                StateProj::Charging { check, response } => {
                    if let Err(e) = ready!(check.as_mut().poll(cx)) {
                        // The request is answered either way; only its count is lost.
                        tracing::debug!(target: "nhi_guard::rate_limit", error = %e, "counting an unverified request failed");
                    }
                    return Poll::Ready(Ok(response.take()));
                }
                StateProj::Ready { response } => {
                    return Poll::Ready(Ok(response.take()));
                }
            }
        }
    }
}
