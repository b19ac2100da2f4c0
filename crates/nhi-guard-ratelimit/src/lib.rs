//! GCRA rate limiting for machine-to-machine APIs.
//!
//! [`RateLimitLayer`] checks every request against a set of [`Limit`]s: per client
//! address (before authentication), per verified client (with the quota of the
//! client's inventory tier), per client and route group, or per key of your own.
//! All limits of a request must pass, and a request refused by one spends nothing on
//! the others. Decisions happen in `call` (never by holding `poll_ready`), so axum
//! and tonic services get an answer at once:
//!
//! - HTTP 429 `application/problem+json` with `violated-policies`, `Retry-After`
//!   (whole seconds, rounded up: never earlier than the quota allows) and the
//!   `RateLimit-Policy` / `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers;
//! - gRPC `RESOURCE_EXHAUSTED`;
//! - the same fields on allowed responses (configurable), and the deciding limit in
//!   the [`SecurityContext`](nhi_guard_core::SecurityContext) (`rate_limit`).
//!
//! [`AuthFailureLimitLayer`] is the fail2ban-style companion: only failed
//! authentications spend its quota, per address and per credential fingerprint.
//!
//! State lives in an [`InMemoryRateLimitStore`] (sharded, bounded, exact under concurrency,
//! no allocation or boxed future per request) or in any shared
//! [`RateLimitStore`](crate::store::RateLimitStore), such as
//! `nhi_guard_redis::RedisStore`.
//!
//! ```
//! use std::sync::Arc;
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use nhi_guard_ratelimit::store::Quota;
//! use nhi_guard_ratelimit::{Limit, RateLimitLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The default: per-client tier quotas; plus a custom limit on a tenant header.
//! let layer = RateLimitLayer::new()
//!     .limit(Limit::per_client("per-client"))?
//!     .limit(Limit::custom("per-tenant", Quota::per_second(1)?, |parts, _ctx| {
//!         parts.headers.get("x-tenant").and_then(|v| v.to_str().ok()).map(str::to_owned)
//!     }))?;
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
//!
//! let req = || Request::builder().header("x-tenant", "acme").body(()).unwrap();
//! let first = svc.clone().oneshot(req()).await?;
//! assert_eq!(first.status(), 200);
//! assert_eq!(first.headers()["ratelimit"], r#""per-tenant";r=0;t=1"#);
//! let second = svc.oneshot(req()).await?;
//! assert_eq!(second.status(), 429);
//! assert_eq!(second.headers()["retry-after"], "1");
//! # Ok(()) }
//! ```

mod failure;
mod future;
mod layer;
mod limit;
mod memory;
mod route;
mod service;
pub mod store;

pub use crate::failure::{
    AuthFailureLimit, AuthFailureLimitLayer, FAILURES_BY_ADDRESS, FAILURES_BY_CREDENTIAL, FailureFuture,
};
pub use crate::future::ResponseFuture;
pub use crate::layer::{ConfigError, RateLimitLayer};
pub use crate::limit::{KeyFn, Limit, RequestCost};
pub use crate::memory::{DEFAULT_MAX_KEYS, InMemoryRateLimitStore, LocalCheck, MAX_LIMITS};
pub use crate::route::RateGroup;

/// The former name of [`InMemoryRateLimitStore`].
#[deprecated(
    since = "0.1.0",
    note = "renamed `InMemoryRateLimitStore`, as the other in-memory stores"
)]
pub type InMemoryStore = InMemoryRateLimitStore;
pub use crate::service::RateLimitService;
