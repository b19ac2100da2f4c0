//! Redis implementations of the nhi-guard store traits, so that several replicas
//! share one state.
//!
//! [`RedisStore`] implements [`RateLimitStore`](nhi_guard_ratelimit::store::RateLimitStore):
//! GCRA in one atomic Lua script per request (all of its limits, one round trip),
//! on the Redis server's clock, keys with TTLs, and an explicit
//! [`FailurePolicy`](nhi_guard_ratelimit::store::FailurePolicy) with a timeout when Redis
//! is slow or down. Plug it into `nhi_guard_ratelimit::RateLimitLayer::shared_store`.
//!
//! ```
//! use std::time::Duration;
//! use nhi_guard_ratelimit::store::FailurePolicy;
//! use nhi_guard_redis::RedisStore;
//!
//! // Invalid configuration fails when the store is built, naming the field.
//! let err = RedisStore::builder("redis://127.0.0.1:6379")
//!     .failure_policy(FailurePolicy::FallbackLocal)
//!     .timeout(Duration::from_millis(20))
//!     .build_lazy()
//!     .expect_err("invalid configuration");
//! assert_eq!(err.field(), "fallback_store");
//! ```

//! Every store connects through a [`RedisTarget`]: one server (`redis://`), the same
//! over TLS (`rediss://`, the platform's trust anchors or a CA file), or a Redis
//! Cluster given as a comma-separated list of seeds. Credentials in a URL never
//! appear in `Debug` output, errors or logs. On a cluster, the keys one script
//! touches share a hash tag (one slot), the client follows `MOVED`/`ASK` and
//! re-learns the slot map as nodes fail and return.
//!
//! One feature per control whose store this crate implements: `ratelimit`,
//! `risk` and `usage` (on by default), and `revocations`.

mod connection;
#[cfg(feature = "ratelimit")]
mod ratelimit;
#[cfg(feature = "revocations")]
pub mod revocations;
#[cfg(feature = "risk")]
pub mod risk;
pub mod testing;
#[cfg(feature = "usage")]
pub mod usage;

pub use nhi_guard_core::config::ConfigError;

pub use crate::connection::{IntoRedisTarget, RedisTarget};

#[cfg(feature = "ratelimit")]
pub use crate::ratelimit::{RedisStore, RedisStoreBuilder};
