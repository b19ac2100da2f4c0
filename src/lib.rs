//! nhi-guard: tower layers that protect machine-to-machine APIs.
//!
//! Every client is a governed non-human identity. The controls — identity, scope,
//! rate limiting, risk and audit — are tower layers that share one per-request
//! [`SecurityContext`]; each also works alone, and [`NhiGuard::builder`] composes
//! them in the order that makes sense:
//!
//! ```text
//! audit → rate limit (address) → failure limit → risk edge → identity → risk → rate limit (client) → scope → handler
//! ```
//!
//! The same layer works for axum routers, tonic servers
//! (`Server::builder().layer(guard)`) and any hyper / tower service.
//!
//! Every control records metrics through the `metrics` facade under the stable names
//! of [`core::metrics`]; install the application's recorder (for Prometheus,
//! `metrics-exporter-prometheus`) before the first request.
//!
//! Cargo features: `identity`, `scope`, `ratelimit`, `risk`, `audit` (default: all
//! five; the [`NhiGuard`] builder needs all of them), `redis` (shared state across
//! replicas), `rustls` (identity's glue reading client certificates from a
//! tokio-rustls server connection, for mTLS), `tonic` (client addresses from tonic's
//! connect info), `demo` (identity's `DemoIssuer`, a throw-away signing key for
//! examples) and `otel` ([`otel`]: the request spans and the metrics exported with
//! OpenTelemetry, over OTLP/gRPC). Fetching an issuer's keys over https needs no
//! feature.

/// Items that need all five controls (the builder and what it composes).
macro_rules! with_every_control {
    ($($item:item)*) => {$(
        #[cfg(all(
            feature = "identity",
            feature = "scope",
            feature = "ratelimit",
            feature = "risk",
            feature = "audit"
        ))]
        $item
    )*};
}

with_every_control! {
    mod builder;
    pub mod config;
    mod maybe;
    mod span;
    pub use crate::builder::{
        BuildError, NhiGuard, NhiGuardBody, NhiGuardBuilder, NhiGuardLayer, NhiGuardService, ResponseFuture,
    };
}

#[cfg(feature = "otel")]
pub mod otel;

pub use nhi_guard_core as core;
pub use nhi_guard_core::{
    ClientAddr, ClientAddrResolver, ClientId, ClientRecord, ClientRegistry, Control, CredentialInfo,
    Decision, Denial, IdentityKind, InMemoryRegistry, Inventory, Principal, ScopeSet, SecurityContext, Tier,
};

/// The audit control (`nhi-guard-audit`).
#[cfg(feature = "audit")]
pub use nhi_guard_audit as audit;
/// The identity control (`nhi-guard-identity`).
#[cfg(feature = "identity")]
pub use nhi_guard_identity as identity;
/// The rate-limit control (`nhi-guard-ratelimit`).
#[cfg(feature = "ratelimit")]
pub use nhi_guard_ratelimit as ratelimit;
/// Redis stores for several replicas (`nhi-guard-redis`).
#[cfg(feature = "redis")]
pub use nhi_guard_redis as redis;
/// The risk control (`nhi-guard-risk`).
#[cfg(feature = "risk")]
pub use nhi_guard_risk as risk;
/// The scope control (`nhi-guard-scope`).
#[cfg(feature = "scope")]
pub use nhi_guard_scope as scope;

/// The types a handler or a `main` usually needs.
pub mod prelude {
    pub use nhi_guard_core::clock::{Clock, SharedClock, SystemClock};
    pub use nhi_guard_core::registry::{ClientRecord, ClientRegistry, InMemoryRegistry, Inventory, Tier};
    pub use nhi_guard_core::route::Routes;
    pub use nhi_guard_core::{ClientAddrResolver, Denial, Principal, ScopeSet, SecurityContext};

    #[cfg(feature = "audit")]
    pub use nhi_guard_audit::{AuditLayer, AuditWriter};
    #[cfg(feature = "identity")]
    pub use nhi_guard_identity::{IdentityLayer, IdentityLayerBuilder, Issuer};
    #[cfg(feature = "ratelimit")]
    pub use nhi_guard_ratelimit::{Limit, RateGroup, RateLimitLayer};
    #[cfg(feature = "risk")]
    pub use nhi_guard_risk::{RiskLayer, Route, RouteRisk};
    #[cfg(feature = "scope")]
    pub use nhi_guard_scope::{Policy, Require, ScopeLayer};

    with_every_control! {
        pub use crate::builder::NhiGuard;
    }
}
