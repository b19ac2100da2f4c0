//! A control of the composed stack that may be off, without a second service type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use nhi_guard_identity::{IdentityLayer, IdentityService};
use nhi_guard_ratelimit::{AuthFailureLimit, AuthFailureLimitLayer, RateLimitLayer, RateLimitService};
use nhi_guard_risk::{Risk, RiskEdge, RiskEdgeLayer, RiskLayer};
use nhi_guard_scope::{Scope, ScopeLayer};
use tower_layer::Layer;
use tower_service::Service;

/// A control layer whose service can also stand in for the control when it is
/// off: it then passes requests through, so the stack's type is the same either
/// way (and holds each inner service once, which keeps the type a chain rather than
/// a tree that doubles at every control).
pub(crate) trait Passthrough<S>: Layer<S> {
    fn passthrough(inner: S) -> Self::Service;
}

macro_rules! passthrough {
    ($($layer:ty => $service:ident),* $(,)?) => {$(
        impl<S> Passthrough<S> for $layer {
            fn passthrough(inner: S) -> Self::Service {
                $service::passthrough(inner)
            }
        }
    )*};
}

passthrough! {
    ScopeLayer => Scope,
    RateLimitLayer => RateLimitService,
    RiskLayer => Risk,
    IdentityLayer => IdentityService,
    RiskEdgeLayer => RiskEdge,
    AuthFailureLimitLayer => AuthFailureLimit,
}

/// Applies the control `L` when present; otherwise its pass-through service.
#[derive(Debug, Clone)]
pub(crate) struct Maybe<L>(pub(crate) Option<L>);

impl<L: Passthrough<S>, S> Layer<S> for Maybe<L> {
    type Service = L::Service;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(l) => l.layer(inner),
            None => L::passthrough(inner),
        }
    }
}

/// The application service under [`NhiGuardLayer`](crate::NhiGuardLayer), its
/// future boxed: every layer's future then holds a pointer instead of the
/// application's whole future, which each of them would otherwise move again as it
/// wraps it.
#[derive(Debug, Clone)]
pub(crate) struct Boxed<S>(pub(crate) S);

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
