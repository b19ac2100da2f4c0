//! Risk scoring for machine-to-machine APIs: contextual signals, an explainable
//! score, and graded actions a machine client understands.
//!
//! Machine traffic has none of the signals browser defences rely on. What an
//! in-process layer sees instead: which governed identity called, what it may do,
//! how it authenticated, which objects it touched and how each request ended. Every
//! request gets an additive score from 0 to 100 from weighted [`Signal`]s (the way
//! OWASP CRS adds anomaly points), times a per-route sensitivity and a per-tier
//! multiplier, recorded with its contributing signals in the
//! [`SecurityContext`](nhi_guard_core::SecurityContext) (`risk`). Thresholds map the
//! score to an action:
//!
//! | action | default | HTTP | gRPC |
//! |---|---|---|---|
//! | allow | < 40 | — | — |
//! | throttle | ≥ 40 | 429, `Retry-After`, `violated-policies: ["abnormal-usage-detected"]` | `RESOURCE_EXHAUSTED` (8) |
//! | step-up | ≥ 60 | 401, `WWW-Authenticate: Bearer error="insufficient_user_authentication", max_age=300` (RFC 9470) | `UNAUTHENTICATED` (16) |
//! | block | ≥ 80 | 403 `risk_blocked`, `Retry-After` | `PERMISSION_DENIED` (7) |
//!
//! Throttles, step-ups and blocks are sticky on the key that earned them (address,
//! network, credential or client) for a cool-down, and lapse on their own; a
//! [`RiskOperator`] lists and lifts them. A step-up is answered by a bearer token
//! issued within `max_age` (the identity layer records its `iat` in
//! `ContextState::credential_issued_at`) or by a sender-constrained credential (an
//! mTLS-bound token or a client certificate); an API key cannot be refreshed, so
//! for it the step-up escalates to a block. [`Mode::Shadow`] scores and records
//! everything and refuses nothing.
//!
//! # Placement
//!
//! [`RiskLayer`] goes after the identity layer (it needs the principal).
//! [`RiskLayer::edge`] returns its other half, [`RiskEdgeLayer`], for *before* the
//! identity layer: it refuses blocked addresses and networks before any credential
//! is verified and observes identity failures, which the inner half never sees
//! because the identity layer answers them. Both halves share one state.
//!
//! ```text
//! audit → rate limit (address) → RiskEdgeLayer → identity → RiskLayer → rate limit → scope → handler
//! ```
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use nhi_guard_core::address::PeerAddr;
//! use nhi_guard_risk::{RiskLayer, Route};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio_test();
//! # fn tokio_test() { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // Defaults: the eight signals, throttle 40, step-up 60, block 80.
//! let risk = RiskLayer::new()
//!     .route(Route::new("GET", "/items/{id}").unwrap().group("items")).unwrap()
//!     .route(Route::new("POST", "/inventory/{sku}/reserve").unwrap().scarce()).unwrap();
//! let operator = risk.operator();
//! let svc = ServiceBuilder::new()
//!     .layer(risk.edge()) // before identity
//!     // .layer(identity)
//!     .layer(risk)        // after identity
//!     .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new("ok")) });
//!
//! let mut req = Request::get("/items/1").body(()).unwrap();
//! req.extensions_mut().insert(PeerAddr("127.0.0.1:40000".parse().unwrap()));
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert!(operator.active().is_empty());
//! # }) }
//! ```
//!
//! A customised setup: shadow mode, stricter thresholds, a trusted batch tier, and
//! a signal of your own.
//!
//! ```
//! use std::borrow::Cow;
//! use nhi_guard_risk::store::RiskKey;
//! use nhi_guard_risk::{Mode, Points, RequestFacts, RiskLayer, Signal, Thresholds};
//!
//! /// Anything from 127.66.0.0/16 is suspicious (a known bad range, say).
//! #[derive(Debug)]
//! struct BadRange;
//! impl Signal for BadRange {
//!     fn name(&self) -> &'static str { "bad_range" }
//!     fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
//!         let ip = f.addr()?;
//!         let bad = matches!(ip, std::net::IpAddr::V4(v4) if v4.octets()[..2] == [127, 66]);
//!         bad.then(|| Points { points: 50, key: RiskKey::address(ip), reason: Cow::Borrowed("bad range") })
//!     }
//! }
//!
//! let mut t = Thresholds::default();
//! t.throttle = 30;
//! let layer = RiskLayer::new()
//!     .mode(Mode::Shadow)
//!     .thresholds(t).unwrap()
//!     .tier_multiplier("batch", 0.5).unwrap()
//!     .signal(BadRange);
//! assert_eq!(layer.operator().memory().signals.len(), 9);
//! ```

mod engine;
mod error;
mod explain;
mod future;
mod layer;
mod operator;
mod route;
mod service;
mod signal;
pub mod signals;
pub mod state;
mod sticky;
pub mod store;

pub use crate::engine::{ABNORMAL_USAGE_POLICY, Cooldowns, Mode, SharedLimits, Thresholds};
pub use crate::error::ConfigError;
pub use crate::explain::ExplainedDecision;
pub use crate::future::ResponseFuture;
pub use crate::layer::{RiskEdgeLayer, RiskLayer};
pub use crate::operator::{MemoryReport, RiskOperator};
pub use crate::route::{Route, RouteRisk};
pub use crate::service::{Risk, RiskEdge};
pub use crate::signal::{
    CredentialClass, Curve, Outcome, Phase, Points, RequestFacts, RouteFacts, Signal, SignalMemory,
};
pub use crate::sticky::InMemoryRiskStore;

/// The former name of [`InMemoryRiskStore`].
#[deprecated(
    since = "0.1.0",
    note = "renamed `InMemoryRiskStore`, as the other in-memory stores"
)]
pub type MemoryRiskStore = InMemoryRiskStore;
