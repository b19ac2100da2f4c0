//! Rate-limit state behind a store trait, and the GCRA arithmetic every store shares.
//!
//! A [`Quota`] is a sustained rate plus a burst. The generic cell rate algorithm
//! (GCRA) keeps one number per key, the *theoretical arrival time* (TAT): the instant
//! at which the key's allowance is fully spent if requests keep arriving at the
//! sustained rate. With emission interval `T` (nanoseconds per request) and
//! tolerance `τ = burst × T`, a request of cost `c` arriving at `now` passes when
//!
//! ```text
//! max(TAT, now) + c·T − now ≤ τ
//! ```
//!
//! and then moves the TAT there. All arithmetic is on integer nanoseconds; the
//! stores only differ in where the TAT lives. [`Quota::step`] is the single
//! definition every store uses, so the in-memory store and the Redis script agree
//! to the nanosecond.
//!
//! A key whose TAT is in the past is indistinguishable from a key never seen, so
//! stores may forget idle keys (evict them, let them expire) without changing any
//! decision.
//!
//! ```
//! use std::time::Duration;
//! use nhi_guard_ratelimit::store::Quota;
//!
//! // 10 requests per second, bursts of 20.
//! let quota = Quota::per_second(10).and_then(|q| q.with_burst(20)).unwrap();
//! let mut diff = 0; // TAT − now: an idle key
//! for _ in 0..20 {
//!     let step = quota.step(diff, 1);
//!     assert!(step.allowed);
//!     diff = step.diff_after;
//! }
//! let refused = quota.step(diff, 1);
//! assert!(!refused.allowed);
//! assert_eq!(refused.decision.retry_after, Duration::from_millis(100));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nhi_guard_core::clock::duration_nanos;
use nhi_guard_core::context::RateLimitOutcome;
use nhi_guard_core::registry::Tier;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The largest tolerance (`burst × emission interval`) a quota may have: 2^50 ns,
/// about 13 days. Keeps every sum of the algorithm exact in a double too (the Redis
/// script runs in Lua, whose numbers are doubles exact up to 2^53).
pub const MAX_TOLERANCE_NANOS: u64 = 1 << 50;

/// A sustained rate and a burst, as one GCRA cell.
///
/// The burst is the number of requests an idle key may send at once; afterwards
/// requests pass at the sustained rate. The emission interval is the period divided
/// by the count, rounded up to a whole nanosecond (so rounding never admits more
/// than the quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    emission_nanos: u64,
    burst: u32,
}

/// Why a quota is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quota: {field} {problem}")]
pub struct QuotaError {
    field: &'static str,
    problem: &'static str,
}

impl QuotaError {
    /// The field at fault (`count`, `period`, `burst`).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl Quota {
    /// `count` requests per `period`, with a burst of `count`.
    ///
    /// # Errors
    /// `count` or `period` is zero, or the tolerance exceeds [`MAX_TOLERANCE_NANOS`].
    pub fn new(count: u32, period: Duration) -> Result<Self, QuotaError> {
        if count == 0 {
            return Err(QuotaError {
                field: "count",
                problem: "must be at least 1",
            });
        }
        let period = duration_nanos(period);
        if period == 0 {
            return Err(QuotaError {
                field: "period",
                problem: "must be longer than zero",
            });
        }
        let emission_nanos = period.div_ceil(u64::from(count));
        Self {
            emission_nanos,
            burst: count,
        }
        .checked()
    }

    /// `count` requests per second, with a burst of `count`.
    ///
    /// # Errors
    /// `count` is zero.
    pub fn per_second(count: u32) -> Result<Self, QuotaError> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute, with a burst of `count`.
    ///
    /// # Errors
    /// `count` is zero.
    pub fn per_minute(count: u32) -> Result<Self, QuotaError> {
        Self::new(count, Duration::from_secs(60))
    }

    /// The same rate with a different burst.
    ///
    /// # Errors
    /// `burst` is zero or the tolerance exceeds [`MAX_TOLERANCE_NANOS`].
    pub fn with_burst(self, burst: u32) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError {
                field: "burst",
                problem: "must be at least 1",
            });
        }
        Self { burst, ..self }.checked()
    }

    fn checked(self) -> Result<Self, QuotaError> {
        match self.emission_nanos.checked_mul(u64::from(self.burst)) {
            Some(t) if t <= MAX_TOLERANCE_NANOS => Ok(self),
            _ => Err(QuotaError {
                field: "period",
                problem: "makes burst × interval longer than 2^50 ns (about 13 days)",
            }),
        }
    }

    /// The quota of an inventory tier. Tiers are validated by the inventory
    /// (`per_second ≥ 1`, `burst ≥ 1`); a zero is treated as 1 here and a burst
    /// too large for [`MAX_TOLERANCE_NANOS`] is capped.
    pub fn from_tier(tier: Tier) -> Self {
        let emission_nanos = NANOS_PER_SEC.div_ceil(u64::from(tier.per_second.max(1)));
        let max_burst = u32::try_from(MAX_TOLERANCE_NANOS / emission_nanos).unwrap_or(u32::MAX);
        Self {
            emission_nanos,
            burst: tier.burst.clamp(1, max_burst),
        }
    }

    /// Nanoseconds between two requests at the sustained rate (`T`).
    pub fn emission_nanos(&self) -> u64 {
        self.emission_nanos
    }

    /// Requests an idle key may send at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The tolerance `τ = burst × T` in nanoseconds: how far ahead of now a key's
    /// TAT may be, and how long a fully spent key takes to recover.
    pub fn tolerance_nanos(&self) -> u64 {
        self.emission_nanos * u64::from(self.burst)
    }

    /// The window advertised in `RateLimit-Policy` (`w`): the whole seconds it takes
    /// to earn the full burst back, at least 1. The advertised quota (`q`) is the
    /// burst.
    pub fn window_secs(&self) -> u64 {
        self.tolerance_nanos().div_ceil(NANOS_PER_SEC).max(1)
    }

    /// One GCRA step for a key whose TAT is `diff_before` nanoseconds ahead of now
    /// (0 for an idle or unknown key), for a request of `cost`.
    ///
    /// Every store runs exactly this: pass if `diff_before + cost·T ≤ τ`. The cost
    /// counts as at least 1 and at most the burst (a request costing more than the
    /// whole burst is charged the whole burst), so every refusal's `retry_after` is
    /// a wait after which the request does pass.
    pub fn step(&self, diff_before: u64, cost: u32) -> GcraStep {
        let tau = self.tolerance_nanos();
        let t = self.emission_nanos;
        let cost = self.effective_cost(cost);
        let diff_before = diff_before.min(tau);
        let new_diff = diff_before.saturating_add(u64::from(cost).saturating_mul(t));
        if new_diff <= tau {
            GcraStep {
                allowed: true,
                diff_after: new_diff,
                decision: RateLimitDecision {
                    allowed: true,
                    remaining: (tau - new_diff) / t,
                    reset: Duration::from_nanos(new_diff),
                    retry_after: Duration::ZERO,
                },
            }
        } else {
            let wait = new_diff - tau;
            GcraStep {
                allowed: false,
                diff_after: diff_before,
                decision: RateLimitDecision {
                    allowed: false,
                    remaining: (tau - diff_before) / t,
                    reset: Duration::from_nanos(wait),
                    retry_after: Duration::from_nanos(wait),
                },
            }
        }
    }

    /// The cost a store charges for a request of `cost`: clamped to `1..=burst`.
    pub fn effective_cost(&self, cost: u32) -> u32 {
        cost.clamp(1, self.burst)
    }

    /// The state of a key `diff` nanoseconds ahead of now, without a request.
    pub fn state(&self, diff: u64) -> RateLimitDecision {
        let tau = self.tolerance_nanos();
        let diff = diff.min(tau);
        RateLimitDecision {
            allowed: true,
            remaining: (tau - diff) / self.emission_nanos,
            reset: Duration::from_nanos(diff),
            retry_after: Duration::ZERO,
        }
    }
}

impl From<Tier> for Quota {
    fn from(tier: Tier) -> Self {
        Self::from_tier(tier)
    }
}

/// The result of [`Quota::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraStep {
    /// Whether the request passes.
    pub allowed: bool,
    /// TAT − now after the step (unchanged when refused).
    pub diff_after: u64,
    /// What to tell the client.
    pub decision: RateLimitDecision,
}

/// What a store decided for one limit of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitDecision {
    /// Whether this limit lets the request pass.
    pub allowed: bool,
    /// Requests of cost 1 the key could still send now.
    pub remaining: u64,
    /// When allowed, time until the key's full burst is available again; when
    /// refused, time until this request could pass.
    pub reset: Duration,
    /// When refused, how long to wait before this request could pass (zero when
    /// allowed).
    pub retry_after: Duration,
}

impl RateLimitDecision {
    /// A decision for a request the store let through without checking (fail-open).
    pub fn unchecked(quota: &Quota) -> Self {
        Self {
            allowed: true,
            remaining: u64::from(quota.burst()),
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        }
    }

    /// The outcome to record and render for policy `policy` with quota `quota`.
    /// Seconds are rounded up, so a client is never told to come back too early.
    pub fn outcome(&self, policy: Arc<str>, quota: &Quota) -> RateLimitOutcome {
        RateLimitOutcome {
            policy,
            limited: !self.allowed,
            quota: u64::from(quota.burst()),
            window_secs: quota.window_secs(),
            remaining: self.remaining,
            reset_secs: ceil_secs(self.reset),
        }
    }
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whether a check spends quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckMode {
    /// Check every limit and, if all pass, spend their cost; if one refuses, spend
    /// nothing anywhere.
    #[default]
    Consume,
    /// Only report whether the request would pass; spend nothing.
    Peek,
}

/// One limit of one request, as sent to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitCheck {
    /// The policy name (part of the key: two policies never share state).
    pub policy: Arc<str>,
    /// The subject of the limit: a client id, an address, a fingerprint, ...
    pub key: Box<[u8]>,
    /// A qualifier of the subject (a route group), empty when none.
    pub qualifier: Box<[u8]>,
    /// The quota.
    pub quota: Quota,
    /// The cost of this request (at least 1).
    pub cost: u32,
}

/// Why a store could not decide.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate-limit store {kind}: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: Arc<str>,
}

/// The kind of a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The backend did not answer in time.
    Timeout,
    /// The backend is unreachable.
    Unavailable,
    /// The backend answered something unexpected.
    Protocol,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timed out",
            Self::Unavailable => "unavailable",
            Self::Protocol => "protocol error",
        })
    }
}

impl StoreError {
    /// A new error. `message` must not contain secrets or key material.
    pub fn new(kind: StoreErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

/// What a shared store does when its backend is slow or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through unchecked (availability over protection).
    FailOpen,
    /// Refuse the request (the layer answers 503 / `UNAVAILABLE`).
    FailClosed,
    /// Decide with a local in-process store (each replica enforces the quota on its
    /// own share of the traffic).
    #[default]
    FallbackLocal,
}

impl FailurePolicy {
    /// Stable name (`fail_open`, `fail_closed`, `fallback_local`), as in the
    /// `policy` label of `nhi_guard_store_fallbacks_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
            Self::FallbackLocal => "fallback_local",
        }
    }
}

/// The future a [`RateLimitStore`] returns.
pub type StoreFuture =
    Pin<Box<dyn Future<Output = Result<Vec<RateLimitDecision>, StoreError>> + Send + 'static>>;

/// A rate-limit store: decides a whole request's limits atomically.
///
/// `check` must behave as if all limits were checked at one instant: when every
/// limit passes and `mode` is [`CheckMode::Consume`], each spends its cost; when
/// any refuses, none spends anything. It returns one decision per check, in order.
///
/// The in-process store of `nhi-guard-ratelimit` also offers a synchronous path
/// that the layer uses directly, so the local case neither boxes a future nor
/// allocates; this trait is for stores that do I/O (`nhi-guard-redis`).
pub trait RateLimitStore: Send + Sync + fmt::Debug + 'static {
    /// Checks `checks` at the store's current time.
    fn check(&self, checks: Arc<[RateLimitCheck]>, mode: CheckMode) -> StoreFuture;
}

impl From<QuotaError> for nhi_guard_core::config::ConfigError {
    /// The quota's error as the controls' configuration error (control
    /// `rate_limit`, field `quota.<field>`).
    fn from(e: QuotaError) -> Self {
        nhi_guard_core::config::ConfigError::new("rate_limit", format!("quota.{}", e.field), e.problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_validate_and_name_the_field() {
        assert_eq!(Quota::per_second(0).unwrap_err().field(), "count");
        assert_eq!(Quota::new(1, Duration::ZERO).unwrap_err().field(), "period");
        let q = Quota::per_second(10).expect("quota");
        assert_eq!(q.with_burst(0).unwrap_err().field(), "burst");
        assert_eq!(
            Quota::new(1, Duration::from_secs(30 * 86_400))
                .unwrap_err()
                .field(),
            "period"
        );
        assert_eq!(q.emission_nanos(), 100_000_000);
        assert_eq!(q.window_secs(), 1);
        // 3 per second: the interval rounds up, never down.
        assert_eq!(Quota::per_second(3).expect("quota").emission_nanos(), 333_333_334);
    }

    #[test]
    fn tiers_convert() {
        let q = Quota::from_tier(Tier {
            per_second: 50,
            burst: 100,
        });
        assert_eq!(
            (q.emission_nanos(), q.burst(), q.window_secs()),
            (20_000_000, 100, 2)
        );
    }

    #[test]
    fn step_spends_cost_and_refuses_without_spending() {
        let q = Quota::per_second(10)
            .and_then(|q| q.with_burst(5))
            .expect("quota");
        let s = q.step(0, 3);
        assert!(s.allowed);
        assert_eq!(s.diff_after, 300_000_000);
        assert_eq!(s.decision.remaining, 2);
        let r = q.step(s.diff_after, 3);
        assert!(!r.allowed);
        assert_eq!(r.diff_after, 300_000_000);
        assert_eq!(r.decision.remaining, 2);
        assert_eq!(r.decision.retry_after, Duration::from_millis(100));
        let ok = q.step(s.diff_after, 2);
        assert!(ok.allowed);
        assert_eq!(ok.decision.remaining, 0);
        assert_eq!(ok.decision.reset, Duration::from_millis(500));
    }

    #[test]
    fn costs_are_clamped_to_the_burst_so_retry_after_is_truthful() {
        let q = Quota::per_second(10)
            .and_then(|q| q.with_burst(5))
            .expect("quota");
        let s = q.step(0, 50);
        assert!(s.allowed);
        assert_eq!(s.decision.remaining, 0);
        let r = q.step(s.diff_after, 50);
        assert!(!r.allowed);
        // After the advertised wait the key is idle again and the request passes.
        let waited = s.diff_after - u64::try_from(r.decision.retry_after.as_nanos()).expect("fits");
        assert!(q.step(waited, 50).allowed);
        assert_eq!(q.step(0, 0).diff_after, 100_000_000);
    }

    #[test]
    fn outcome_rounds_up() {
        let q = Quota::per_second(10).expect("quota");
        let d = q.step(950_000_000, 2).decision;
        let o = d.outcome(Arc::from("p"), &q);
        assert!(o.limited);
        assert_eq!((o.quota, o.window_secs, o.remaining, o.reset_secs), (10, 1, 0, 1));
    }
}
