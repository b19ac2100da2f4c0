//! [`Risk`] and [`RiskEdge`]: the services.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::store::StickyAction;
use http::{Request, Response, StatusCode};
use nhi_guard_core::denial::{GrpcCode, respond};
use nhi_guard_core::{Control, Denial, GuardBody, Protocol, SecurityContext};
use tower_service::Service;

use crate::engine::{Engine, Mode, share_failure, shared_check};
use crate::future::{Observation, ResponseFuture};
use crate::signal::{AddrFacts, CredentialClass, Phase, RouteFacts};

/// Marks that a risk layer of this engine observes the request's outcome (the edge
/// half does, so the inner half does not count it twice), with what the edge half
/// already worked out: the matched route and the hashed address and network, which
/// the inner half of the same engine then does not compute again.
#[derive(Debug, Clone, Copy)]
struct ObservedBy {
    engine: u64,
    route: Option<RouteFacts>,
    addr: Option<AddrFacts>,
}

/// The risk service (see [`crate::RiskLayer`]).
#[derive(Clone)]
pub struct Risk<S> {
    inner: S,
    // `None`: passes requests through (see `passthrough`).
    engine: Option<Arc<Engine>>,
    phase: Phase,
}

impl<S: fmt::Debug> fmt::Debug for Risk<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Risk")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .field("config", &self.engine)
            .finish()
    }
}

impl<S> Risk<S> {
    pub(crate) fn new(inner: S, engine: Arc<Engine>, phase: Phase) -> Self {
        Self {
            inner,
            engine: Some(engine),
            phase,
        }
    }

    /// A service that hands every request to `inner` untouched, its response body
    /// wrapped as the control's own: what the `nhi-guard` facade puts in this
    /// control's place when it is off, so the composed service has one type
    /// whichever controls are on.
    #[doc(hidden)]
    pub fn passthrough(inner: S) -> Self {
        Self {
            inner,
            engine: None,
            phase: Phase::Identified,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Risk<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let engine = match &self.engine {
            Some(engine) if engine.mode != Mode::Off => engine,
            _ => return ResponseFuture::inner(self.inner.call(req), None),
        };
        let ctx = SecurityContext::get_or_insert(&mut req, &engine.resolver, &*engine.clock);
        let started = engine.metrics.start();
        let edge = match self.phase {
            Phase::Edge => None,
            _ => req
                .extensions()
                .get::<ObservedBy>()
                .filter(|o| o.engine == engine.id)
                .copied(),
        };
        let route = match edge {
            Some(o) => o.route,
            None if engine.routes.is_empty() => None,
            None => engine.routes.find(
                Some(&ctx),
                req.method(),
                req.uri().path(),
                req.extensions(),
                &engine.hasher,
            ),
        };
        let protocol = Protocol::of(req.headers());
        let observe = self.phase == Phase::Edge || edge.is_none();

        if engine.shared.is_some() {
            if self.phase == Phase::Edge {
                req.extensions_mut().insert(ObservedBy {
                    engine: engine.id,
                    route,
                    addr: None,
                });
            }
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let call = Call {
                engine: engine.clone(),
                ctx,
                route,
                protocol,
                observe,
                phase: self.phase,
                started,
            };
            return ResponseFuture::shared(Box::pin(call.run(inner, req)));
        }

        let facts = engine.facts(&ctx, route, edge.and_then(|o| o.addr));
        if self.phase == Phase::Edge {
            req.extensions_mut().insert(ObservedBy {
                engine: engine.id,
                route,
                addr: facts.addr_facts(),
            });
        }
        let identified = self.phase == Phase::Identified;
        let verdict = engine.assess(&ctx, &facts, self.phase, identified, identified && !observe);
        engine.metrics.decided(started);
        if let Some(denial) = verdict.denial {
            if engine.mode == Mode::Enforce {
                ctx.deny(&denial);
                engine.metrics.deny(&denial);
                let res = respond(
                    &*engine.renderer,
                    denial.with_request_id(ctx.request_id()),
                    protocol,
                );
                if observe {
                    engine.observe(&ctx, facts, res.status());
                }
                return ResponseFuture::rejected(res);
            }
            ctx.record_shadow_denial(&denial);
            engine.metrics.shadow_deny(&denial);
            if self.phase == Phase::Identified {
                ctx.allow();
            }
        } else if self.phase == Phase::Identified {
            engine.metrics.allow();
        }
        // Boxed: the facts are a few hundred bytes that every outer layer would
        // otherwise move again as it wraps this future.
        let observe = observe.then(|| {
            Box::new(Observation {
                engine: engine.clone(),
                ctx,
                facts,
            })
        });
        ResponseFuture::inner(self.inner.call(req), observe)
    }
}

/// One request through a layer with a shared store.
struct Call {
    engine: Arc<Engine>,
    ctx: SecurityContext,
    route: Option<RouteFacts>,
    protocol: Protocol,
    observe: bool,
    phase: Phase,
    /// When the layer's `call` began (`nhi_guard_decision_duration_seconds`).
    started: Option<std::time::Instant>,
}

impl Call {
    async fn run<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<GuardBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let Call {
            engine,
            ctx,
            route,
            protocol,
            observe,
            phase,
            started,
        } = self;
        let Some(shared) = engine.shared.clone() else {
            unreachable!("only called with a shared store")
        };
        let f = engine.facts(&ctx, route, None);
        let mut denial = None;
        match shared_check(&shared, &f).await {
            Ok(Some(d)) => match d.action {
                StickyAction::Block => denial = Some(engine.block_denial(&d, &f)),
                // Before identity the credential is unknown: the inner half decides.
                StickyAction::StepUp
                    if phase == Phase::Identified
                        && !matches!(
                            f.credential_class(),
                            CredentialClass::Bearer { fresh: true } | CredentialClass::SenderConstrained
                        ) =>
                {
                    denial = Some(engine.step_up_denial());
                }
                _ => {}
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(target: "nhi_guard::risk", error = %e, "shared risk store failed");
                nhi_guard_core::metrics::store_fallback(
                    "risk",
                    if shared.fail_closed {
                        "fail_closed"
                    } else {
                        "fail_open"
                    },
                );
                if shared.fail_closed {
                    denial = Some(
                        Denial::custom(
                            Control::Risk,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "risk_store_unavailable",
                            "Service unavailable",
                            "Risk state is unavailable; retry later",
                            GrpcCode::Unavailable,
                        )
                        .retry_after(Duration::from_secs(1)),
                    );
                }
            }
        }
        if let Some(d) = &denial {
            ctx.update(|s| {
                s.risk = Some(nhi_guard_core::context::RiskAssessment {
                    score: 100,
                    action: std::borrow::Cow::Borrowed(if d.status() == StatusCode::UNAUTHORIZED {
                        "step_up"
                    } else {
                        "block"
                    }),
                    signals: vec![nhi_guard_core::context::SignalHit {
                        signal: "shared_sticky",
                        points: 100,
                        reason: std::borrow::Cow::Borrowed("decision shared by another replica"),
                    }],
                })
            });
        } else {
            let identified = phase == Phase::Identified;
            let verdict = engine.assess(&ctx, &f, phase, false, identified && !observe);
            if let Some(d) = verdict.new_sticky
                && d.action >= StickyAction::StepUp
                && let Err(e) = shared.store.put(d.clone(), f.now()).await
            {
                // Keep it on this replica at least.
                tracing::warn!(target: "nhi_guard::risk", error = %e, "could not share a risk decision");
                engine.sticky.put_decision(d, f.now());
            }
            denial = verdict.denial;
        }
        engine.metrics.decided(started);
        if let Some(denial) = denial {
            if engine.mode == Mode::Enforce {
                ctx.deny(&denial);
                engine.metrics.deny(&denial);
                let res = respond(
                    &*engine.renderer,
                    denial.with_request_id(ctx.request_id()),
                    protocol,
                );
                if observe {
                    engine.observe(&ctx, f, res.status());
                }
                return Ok(res);
            }
            ctx.record_shadow_denial(&denial);
            engine.metrics.shadow_deny(&denial);
        } else if phase == Phase::Identified {
            engine.metrics.allow();
        }
        if phase == Phase::Identified {
            ctx.allow();
        }
        let res = inner.call(req).await?;
        if observe {
            let of = engine.observe(&ctx, f, res.status());
            if let Err(e) = share_failure(&shared, &of, engine.cooldowns.block).await {
                tracing::warn!(target: "nhi_guard::risk", error = %e, "could not share failure evidence");
            }
        }
        Ok(res.map(GuardBody::inner))
    }
}

/// The edge half of the risk service (see [`crate::RiskLayer::edge`]).
#[derive(Clone)]
pub struct RiskEdge<S>(Risk<S>);

impl<S: fmt::Debug> fmt::Debug for RiskEdge<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RiskEdge").field(&self.0).finish()
    }
}

impl<S> RiskEdge<S> {
    pub(crate) fn new(inner: Risk<S>) -> Self {
        Self(inner)
    }

    /// A service that hands every request to `inner` untouched, its response body
    /// wrapped as the control's own: what the `nhi-guard` facade puts in this
    /// control's place when it is off, so the composed service has one type
    /// whichever controls are on.
    #[doc(hidden)]
    pub fn passthrough(inner: S) -> Self {
        Self(Risk::passthrough(inner))
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RiskEdge<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.0.call(req)
    }
}
