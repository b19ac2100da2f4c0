//! Metrics through the [`metrics`] facade: stable names every nhi-guard crate
//! records under, and [`ControlMetrics`], the per-layer counters of one control.
//!
//! nhi-guard records; the application chooses the exporter by installing a
//! [`metrics`] recorder (for Prometheus, `metrics-exporter-prometheus`). Without a
//! recorder every metric is a no-op.
//!
//! **Install the recorder before the first request.** A layer resolves its counter
//! handles once, on the first request it sees, so that counting an allowed request
//! is one atomic add (no label allocation, no registry look-up). A layer that served
//! a request before the recorder was installed keeps counting into the no-op
//! recorder it found. Cold paths (denials, JWKS fetches, store failures) look their
//! series up on each event and see a recorder installed at any time.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `nhi_guard_requests_total` | counter | `control`, `decision` | every request a control decided: `decision` is `allow`, `deny` or `shadow_deny` (a control in shadow mode would have denied and let it through) |
//! | `nhi_guard_denials_total` | counter | `control`, `reason` | every refusal, by the denial's stable reason code (`token_expired`, `insufficient_scope`, `rate_limited`, ...) |
//! | `nhi_guard_shadow_denials_total` | counter | `control`, `reason` | the refusals a control in shadow mode would have made (not in `nhi_guard_denials_total`) |
//! | `nhi_guard_jwks_fetches_total` | counter | `host`, `outcome` | JWKS fetches by the identity layer's key manager: `outcome` is `ok`, `not_modified` or `error`; `host` is the JWKS URL's host and port |
//! | `nhi_guard_jwks_keys` | gauge | `host` | keys in the last key set fetched from that host |
//! | `nhi_guard_issuer_metadata_fetches_total` | counter | `host`, `outcome` | issuer metadata documents fetched to discover the JWKS URL: `outcome` is `ok` or `error`; RFC 8414's location is tried before OpenID Connect's, so an issuer serving only the latter counts one `error` then one `ok` |
//! | `nhi_guard_store_errors_total` | counter | `store`, `backend` | failed operations of a shared store: `store` is `rate_limit` or `risk`, `backend` is `redis` |
//! | `nhi_guard_store_fallbacks_total` | counter | `store`, `policy` | requests decided without the shared store because it failed: `policy` is `fail_open`, `fail_closed` or `fallback_local` |
//! | `nhi_guard_risk_score` | histogram | | the score (0–100) of every request the risk layer assessed |
//! | `nhi_guard_audit_queue_depth` | gauge | | records waiting in the audit writer's queue, set by the writer at each batch |
//! | `nhi_guard_scope_unreachable_rules` | gauge | | scope policy rules no client in the inventory can pass (a route before its first client, or a misspelt scope), set at start-up and on each inventory reload |
//! | `nhi_guard_audit_dropped_total` | counter | `reason` | audit records not written: `queue_full` (overflow policy `drop`) or `shutdown` (offered after the writer stopped) |
//! | `nhi_guard_decision_duration_seconds` | histogram | `control` | the time one layer of a control spent deciding a request (from its `call` to its allow or deny, a JWKS refetch or shared store round trip included; the inner service excluded); buckets: [`DECISION_DURATION_BUCKETS`] |
//! | `nhi_guard_jwks_last_success_timestamp_seconds` | gauge | `host` | Unix time of the last successful JWKS fetch from that host (`ok` or `not_modified`); its age is `time() - nhi_guard_jwks_last_success_timestamp_seconds` |
//! | `nhi_guard_clients` | gauge | `status` | clients of the inventory by `status`: `active` (served), `expired` (active but past its expiry), `suspended`; set when the inventory is loaded or replaced and when a stack is built |
//! | `nhi_guard_clients_expiring_soon` | gauge | | active clients whose registration expires within the inventory's expiry warning window (`expiry_warning`, default 14 days), as of the same moments |
//!
//! Every decision a control counts is also a `DEBUG` `tracing` event under the
//! target `nhi_guard::decision` ([`DECISION_TARGET`]), with the fields
//! `nhi.control`, `nhi.decision` and `nhi.reason`.
//!
//! `control` is [`Control::as_str`]: `identity`, `scope`, `rate_limit`, `risk`, or a
//! custom control's name. Labels never carry a credential, a client id or a
//! request's path: every value comes from a fixed set (or the configured JWKS
//! hosts), so the number of series stays bounded.
//!
//! Counting rules: each layer counts the requests *it* decided. A stack with two
//! rate-limit layers (by address, then by client) counts an allowed request twice
//! under `control="rate_limit"`; the failure-only limit
//! (`AuthFailureLimitLayer`) counts only the requests it refuses; the risk layer's
//! edge half counts only its refusals, the inner half every request it assessed.
//! `nhi_guard_decision_duration_seconds` has one sample per layer and request it
//! decided, passes included: the failure-only limit and the risk edge time every
//! request they look at, so its count may exceed `nhi_guard_requests_total`'s.
//!
//! The inventory gauges describe the registry last loaded: a process that serves
//! several registries (tests) shows the last one. A client's expiry moves it from
//! `active` to `expired` at the next reload or build, not at the second it expires
//! (the identity layer refuses it at once either way); call [`inventory`] from a
//! timer to refresh them in between.
//!
//! ```
//! use metrics_util::debugging::DebuggingRecorder;
//! use nhi_guard_core::metrics::ControlMetrics;
//! use nhi_guard_core::{Control, Denial};
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || {
//!     let m = ControlMetrics::new(Control::Scope);
//!     m.allow();
//!     m.allow();
//!     m.deny(&Denial::forbidden(Control::Scope, "insufficient_scope", "no"));
//! });
//! let requests: u64 = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .filter(|(key, ..)| key.key().name() == nhi_guard_core::metrics::REQUESTS_TOTAL)
//!     .map(|(.., value)| match value {
//!         metrics_util::debugging::DebugValue::Counter(n) => n,
//!         _ => 0,
//!     })
//!     .sum();
//! assert_eq!(requests, 3);
//! ```

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Histogram, Unit};

use crate::context::Control;
use crate::denial::Denial;

/// Requests decided, by `control` and `decision` (`allow`, `deny`, `shadow_deny`).
pub const REQUESTS_TOTAL: &str = "nhi_guard_requests_total";
/// Refusals, by `control` and `reason`.
pub const DENIALS_TOTAL: &str = "nhi_guard_denials_total";
/// Refusals a control in shadow mode would have made, by `control` and `reason`.
pub const SHADOW_DENIALS_TOTAL: &str = "nhi_guard_shadow_denials_total";
/// JWKS fetches, by `host` and `outcome` (`ok`, `not_modified`, `error`).
pub const JWKS_FETCHES_TOTAL: &str = "nhi_guard_jwks_fetches_total";
/// Keys in the last key set fetched, by `host`.
pub const JWKS_KEYS: &str = "nhi_guard_jwks_keys";
/// Issuer metadata fetches of JWKS discovery, by `host` and `outcome` (`ok`,
/// `error`).
pub const ISSUER_METADATA_FETCHES_TOTAL: &str = "nhi_guard_issuer_metadata_fetches_total";
/// Failed shared-store operations, by `store` and `backend`.
pub const STORE_ERRORS_TOTAL: &str = "nhi_guard_store_errors_total";
/// Requests decided by the failure policy instead of the shared store, by `store`
/// and `policy`.
pub const STORE_FALLBACKS_TOTAL: &str = "nhi_guard_store_fallbacks_total";
/// Risk scores of assessed requests (0 to 100).
pub const RISK_SCORE: &str = "nhi_guard_risk_score";
/// Risk signals that fired, by `signal` and the `action` the request got
/// (`allow`, `throttle`, `step_up`, `block`).
pub const RISK_SIGNALS_TOTAL: &str = "nhi_guard_risk_signals_total";
/// Requests refused because their credential named no client of the inventory,
/// by `kind` (`token`: a trusted issuer's token for an unregistered client;
/// `api_key`: a key matching no client).
pub const UNGOVERNED_REQUESTS_TOTAL: &str = "nhi_guard_ungoverned_requests_total";
/// Clients of the inventory by `state`: `stale` (seen before, not within the
/// report's window) or `never_seen` (not since the usage store started), as of the
/// last least-privilege report.
pub const STALE_CLIENTS: &str = "nhi_guard_stale_clients";
/// Requests made with an API key past the rotation date the inventory gave it.
pub const ROTATION_DUE_REQUESTS_TOTAL: &str = "nhi_guard_rotation_due_requests_total";
/// Records waiting in the audit writer's queue.
pub const AUDIT_QUEUE_DEPTH: &str = "nhi_guard_audit_queue_depth";
/// Scope policy rules that no client in the inventory can pass.
pub const SCOPE_UNREACHABLE_RULES: &str = "nhi_guard_scope_unreachable_rules";
/// Audit records not written, by `reason` (`queue_full`, `shutdown`).
pub const AUDIT_DROPPED_TOTAL: &str = "nhi_guard_audit_dropped_total";
/// Seconds one layer of a control spent deciding a request, by `control`.
pub const DECISION_DURATION_SECONDS: &str = "nhi_guard_decision_duration_seconds";
/// Unix time (seconds) of the last successful JWKS fetch, by `host`.
pub const JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "nhi_guard_jwks_last_success_timestamp_seconds";
/// Clients of the inventory by `status` (`active`, `expired`, `suspended`).
pub const CLIENTS: &str = "nhi_guard_clients";
/// Active clients whose registration expires within the inventory's expiry warning
/// window.
pub const CLIENTS_EXPIRING_SOON: &str = "nhi_guard_clients_expiring_soon";

/// Histogram buckets (seconds) suited to `nhi_guard_decision_duration_seconds`:
/// a decision from memory takes a few microseconds, one that waits for a JWKS
/// refetch or a shared store milliseconds to seconds. For exporters that need
/// buckets (`metrics-exporter-prometheus`'s `set_buckets_for_metric`).
pub const DECISION_DURATION_BUCKETS: [f64; 14] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.001,
    0.005,
    0.025,
    0.1,
    0.5,
    2.5,
];

/// The values of `nhi_guard_clients{status}`.
pub const CLIENT_STATUSES: [&str; 3] = ["active", "expired", "suspended"];

/// Registers the description and unit of every nhi-guard metric with the
/// installed recorder (Prometheus renders them as `# HELP` lines). Call it once,
/// after installing the recorder; recording works without it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests decided by each nhi-guard control, by decision (allow, deny, shadow_deny)"
    );
    describe_counter!(
        DENIALS_TOTAL,
        Unit::Count,
        "Requests refused by each nhi-guard control, by stable reason code"
    );
    describe_counter!(
        SHADOW_DENIALS_TOTAL,
        Unit::Count,
        "Requests a control in shadow mode would have refused, by stable reason code"
    );
    describe_counter!(
        JWKS_FETCHES_TOTAL,
        Unit::Count,
        "JWKS fetches by the identity layer, by host and outcome (ok, not_modified, error)"
    );
    describe_counter!(
        ISSUER_METADATA_FETCHES_TOTAL,
        Unit::Count,
        "Issuer metadata fetches of JWKS discovery, by host and outcome (ok, error)"
    );
    describe_gauge!(
        JWKS_KEYS,
        Unit::Count,
        "Keys in the last JWK Set fetched from a host"
    );
    describe_counter!(
        STORE_ERRORS_TOTAL,
        Unit::Count,
        "Failed operations of a shared store (rate_limit, risk), by backend"
    );
    describe_counter!(
        STORE_FALLBACKS_TOTAL,
        Unit::Count,
        "Requests decided by a store's failure policy (fail_open, fail_closed, fallback_local)"
    );
    describe_histogram!(
        RISK_SCORE,
        "Risk score (0-100) of every request the risk layer assessed"
    );
    describe_counter!(
        RISK_SIGNALS_TOTAL,
        Unit::Count,
        "Risk signals that fired, by signal and the action the request got (allow, throttle, step_up, block)"
    );
    describe_counter!(
        UNGOVERNED_REQUESTS_TOTAL,
        Unit::Count,
        "Requests whose credential named no client of the inventory, by kind (token, api_key)"
    );
    describe_gauge!(
        STALE_CLIENTS,
        Unit::Count,
        "Inventory clients not seen within the report's window (stale) or not since the start (never_seen)"
    );
    describe_counter!(
        ROTATION_DUE_REQUESTS_TOTAL,
        Unit::Count,
        "Requests made with an API key past the rotation date the inventory gave it"
    );
    describe_gauge!(
        SCOPE_UNREACHABLE_RULES,
        Unit::Count,
        "Scope policy rules that no client in the inventory can pass"
    );
    describe_gauge!(
        AUDIT_QUEUE_DEPTH,
        Unit::Count,
        "Records waiting in the audit writer's queue"
    );
    describe_counter!(
        AUDIT_DROPPED_TOTAL,
        Unit::Count,
        "Audit records not written, by reason (queue_full, shutdown)"
    );
    describe_histogram!(
        DECISION_DURATION_SECONDS,
        Unit::Seconds,
        "Time one layer of a control spent deciding a request (inner service excluded)"
    );
    describe_gauge!(
        JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the last successful JWKS fetch (ok or not_modified) from a host"
    );
    describe_gauge!(
        CLIENTS,
        Unit::Count,
        "Clients of the inventory by status (active, expired, suspended)"
    );
    describe_gauge!(
        CLIENTS_EXPIRING_SOON,
        Unit::Count,
        "Active clients whose registration expires within the inventory's expiry warning window"
    );
}

/// Sets the inventory gauges (`nhi_guard_clients{status}`,
/// `nhi_guard_clients_expiring_soon`) from what `registry` serves at `now`.
///
/// [`InMemoryRegistry`](crate::InMemoryRegistry) calls it when created and after
/// each replacement, and the facade's stack builder when it builds; call it from a
/// timer to move clients that expired since into `expired` without a reload.
pub fn inventory(registry: &dyn crate::ClientRegistry, now: SystemTime) {
    let (counts, expiring_soon) = inventory_counts(&registry.clients(), registry.expiry_warning(), now);
    for (status, n) in CLIENT_STATUSES.iter().zip(counts) {
        metrics::gauge!(CLIENTS, "status" => *status).set(n as f64);
    }
    metrics::gauge!(CLIENTS_EXPIRING_SOON).set(expiring_soon as f64);
}

/// Clients by [`CLIENT_STATUSES`], and the active ones expiring within `warning`.
fn inventory_counts(
    clients: &[std::sync::Arc<crate::ClientRecord>],
    warning: Duration,
    now: SystemTime,
) -> ([usize; 3], usize) {
    let mut counts = [0; 3];
    let mut expiring_soon = 0;
    for c in clients {
        let i = if c.status() == crate::registry::ClientStatus::Suspended {
            2
        } else if c.expires() <= now {
            1
        } else {
            if c.expires().duration_since(now).is_ok_and(|left| left <= warning) {
                expiring_soon += 1;
            }
            0
        };
        counts[i] += 1;
    }
    (counts, expiring_soon)
}

#[doc(hidden)]
/// Sets a JWKS host's last-success gauge to `at` (a fetch answered `ok` or
/// `not_modified`).
pub fn jwks_success(host: &str, at: SystemTime) {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS, "host" => host.to_owned()).set(secs);
}

#[doc(hidden)]
/// Counts a risk signal that fired on a request, by the action the request got
/// (`allow`, `throttle`, `step_up`, `block`). Called only when a signal fires.
pub fn risk_signal(signal: &'static str, action: &'static str) {
    metrics::counter!(RISK_SIGNALS_TOTAL, "signal" => signal, "action" => action).increment(1);
}

#[doc(hidden)]
/// Counts a request whose credential named no client of the inventory (`kind`:
/// `token` or `api_key`).
pub fn ungoverned(kind: &'static str) {
    metrics::counter!(UNGOVERNED_REQUESTS_TOTAL, "kind" => kind).increment(1);
}

#[doc(hidden)]
/// Sets the stale-identity gauges from a least-privilege report.
pub fn identity_staleness(stale: usize, never_seen: usize) {
    metrics::gauge!(STALE_CLIENTS, "state" => "stale").set(stale as f64);
    metrics::gauge!(STALE_CLIENTS, "state" => "never_seen").set(never_seen as f64);
}

#[doc(hidden)]
/// Counts a request made with an API key past its rotation date.
pub fn rotation_due() {
    metrics::counter!(ROTATION_DUE_REQUESTS_TOTAL).increment(1);
}

/// Counts a failed operation of a shared store (`store`: `rate_limit`, `risk`;
/// `backend`: `redis`, or a custom store's name). For store implementations.
pub fn store_error(store: &'static str, backend: &'static str) {
    metrics::counter!(STORE_ERRORS_TOTAL, "store" => store, "backend" => backend).increment(1);
}

/// Counts a request decided by a failure policy because the shared store failed
/// (`policy`: `FailurePolicy::as_str` (the rate-limit crate's `store` module)).
pub fn store_fallback(store: &'static str, policy: &'static str) {
    metrics::counter!(STORE_FALLBACKS_TOTAL, "store" => store, "policy" => policy).increment(1);
}

/// The `tracing` target of the decision event every control emits (see
/// [`ControlMetrics`]).
pub const DECISION_TARGET: &str = "nhi_guard::decision";

struct Handles {
    allow: Counter,
    deny: Counter,
    shadow_deny: Counter,
    duration: Histogram,
    /// Whether a recorder was found (decision times are read only then).
    timed: bool,
}

#[doc(hidden)]
/// The `nhi_guard_requests_total` counters of one control in one layer, resolved
/// from the recorder on first use and then incremented without a look-up.
///
/// A layer keeps one in its shared configuration and calls [`allow`], [`deny`] or
/// [`shadow_deny`] once per request it decides, and [`decided`] with what
/// [`start`] returned when its `call` began. Denials also count `nhi_guard_denials_total` (or
/// `nhi_guard_shadow_denials_total`) by the denial's reason code.
///
/// Each call also emits one `DEBUG` event under the target [`DECISION_TARGET`]
/// (`nhi_guard::decision`) with the fields `nhi.control`, `nhi.decision` (`allow`,
/// `deny`, `shadow_deny`) and, for refusals, `nhi.reason`: static strings only, so
/// with tracing off (or filtered out) an event costs a level check and allocates
/// nothing. Inside the facade's request span they are the span's events.
///
/// Cloning gives a fresh, unresolved set (a reconfigured layer resolves its own).
///
/// [`allow`]: ControlMetrics::allow
/// [`deny`]: ControlMetrics::deny
/// [`shadow_deny`]: ControlMetrics::shadow_deny
/// [`decided`]: ControlMetrics::decided
/// [`start`]: ControlMetrics::start
pub struct ControlMetrics {
    control: Control,
    handles: OnceLock<Handles>,
}

impl ControlMetrics {
    /// Unresolved counters for `control`.
    pub const fn new(control: Control) -> Self {
        Self {
            control,
            handles: OnceLock::new(),
        }
    }

    /// The control counted.
    pub fn control(&self) -> Control {
        self.control
    }

    #[inline]
    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let control = self.control.as_str();
            Handles {
                allow: metrics::counter!(REQUESTS_TOTAL, "control" => control, "decision" => "allow"),
                deny: metrics::counter!(REQUESTS_TOTAL, "control" => control, "decision" => "deny"),
                shadow_deny: metrics::counter!(
                    REQUESTS_TOTAL,
                    "control" => control,
                    "decision" => "shadow_deny"
                ),
                duration: metrics::histogram!(DECISION_DURATION_SECONDS, "control" => control),
                // The no-op recorder (none installed) is zero-sized; every real
                // one holds its series. Without one the clock is not read at all.
                timed: metrics::with_recorder(|r| std::mem::size_of_val(r) != 0),
            }
        })
    }

    /// The control let a request through.
    #[inline]
    pub fn allow(&self) {
        self.handles().allow.increment(1);
        tracing::event!(
            target: DECISION_TARGET,
            tracing::Level::DEBUG,
            nhi.control = self.control.as_str(),
            nhi.decision = "allow",
            "allowed"
        );
    }

    /// The instant a control starts deciding, for [`ControlMetrics::decided`]:
    /// `None`, without reading the clock, when no recorder was installed as this
    /// layer resolved its handles (a zero-sized recorder counts as none).
    #[inline]
    pub fn start(&self) -> Option<Instant> {
        self.handles().timed.then(Instant::now)
    }

    /// The time the control spent deciding one request, from `started` (what
    /// [`ControlMetrics::start`] returned when its `call` began) until now: one
    /// `nhi_guard_decision_duration_seconds` sample.
    #[inline]
    pub fn decided(&self, started: Option<Instant>) {
        if let Some(started) = started {
            self.handles().duration.record(started.elapsed().as_secs_f64());
        }
    }

    /// The control refused a request.
    pub fn deny(&self, denial: &Denial) {
        tracing::event!(
            target: DECISION_TARGET,
            tracing::Level::DEBUG,
            nhi.control = self.control.as_str(),
            nhi.decision = "deny",
            nhi.reason = denial.reason(),
            "denied"
        );
        self.handles().deny.increment(1);
        metrics::counter!(
            DENIALS_TOTAL,
            "control" => self.control.as_str(),
            "reason" => denial.reason()
        )
        .increment(1);
    }

    /// The control, in shadow mode, would have refused a request and let it
    /// through.
    pub fn shadow_deny(&self, denial: &Denial) {
        tracing::event!(
            target: DECISION_TARGET,
            tracing::Level::DEBUG,
            nhi.control = self.control.as_str(),
            nhi.decision = "shadow_deny",
            nhi.reason = denial.reason(),
            "would deny (shadow mode)"
        );
        self.handles().shadow_deny.increment(1);
        metrics::counter!(
            SHADOW_DENIALS_TOTAL,
            "control" => self.control.as_str(),
            "reason" => denial.reason()
        )
        .increment(1);
    }
}

impl Clone for ControlMetrics {
    fn clone(&self) -> Self {
        Self::new(self.control)
    }
}

impl fmt::Debug for ControlMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlMetrics")
            .field("control", &self.control)
            .field("resolved", &self.handles.get().is_some())
            .finish()
    }
}

#[doc(hidden)]
/// A histogram resolved from the recorder on first use (see the module docs on
/// installing the recorder first).
pub struct LazyHistogram {
    name: &'static str,
    handle: OnceLock<Histogram>,
}

impl LazyHistogram {
    /// An unresolved histogram named `name`, without labels.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            handle: OnceLock::new(),
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&self, value: f64) {
        self.handle
            .get_or_init(|| metrics::histogram!(self.name))
            .record(value);
    }
}

impl Clone for LazyHistogram {
    fn clone(&self) -> Self {
        Self::new(self.name)
    }
}

impl fmt::Debug for LazyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyHistogram")
            .field("name", &self.name)
            .field("resolved", &self.handle.get().is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::MetricKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use nhi_guard_testkit::metrics::Snapshot;

    #[test]
    fn counts_decisions_and_denials_by_reason() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let m = ControlMetrics::new(Control::Custom("geo_fence"));
        metrics::with_local_recorder(&recorder, || {
            m.allow();
            m.allow();
            m.deny(&Denial::forbidden(
                Control::Custom("geo_fence"),
                "country_blocked",
                "no",
            ));
            m.shadow_deny(&Denial::forbidden(
                Control::Custom("geo_fence"),
                "country_watch",
                "no",
            ));
        });
        // The handles resolved under the recorder keep counting into it.
        m.allow();
        let seen = Snapshot::take(&snap);
        let c = |decision| {
            seen.counter(
                REQUESTS_TOTAL,
                &[("control", "geo_fence"), ("decision", decision)],
            )
        };
        assert_eq!((c("allow"), c("deny"), c("shadow_deny")), (3, 1, 1));
        let by_reason = |name, reason| seen.counter(name, &[("control", "geo_fence"), ("reason", reason)]);
        assert_eq!(by_reason(DENIALS_TOTAL, "country_blocked"), 1);
        assert_eq!(by_reason(DENIALS_TOTAL, "country_watch"), 0);
        assert_eq!(by_reason(SHADOW_DENIALS_TOTAL, "country_watch"), 1);
    }

    #[test]
    fn decision_time_is_one_sample_per_decision_by_control() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let m = ControlMetrics::new(Control::RateLimit);
        metrics::with_local_recorder(&recorder, || {
            let started = m.start();
            assert!(started.is_some(), "a recorder: timed");
            m.allow();
            m.decided(started);
            m.decided(started);
        });
        let seen = Snapshot::take(&snap);
        match seen.get(
            MetricKind::Histogram,
            DECISION_DURATION_SECONDS,
            &[("control", "rate_limit")],
        ) {
            Some(DebugValue::Histogram(v)) => {
                assert_eq!(v.len(), 2);
                assert!(
                    v.iter().all(|s| s.into_inner() >= 0.0 && s.into_inner() < 60.0),
                    "{v:?}"
                );
            }
            other => panic!("no histogram: {other:?}"),
        }
    }

    #[test]
    fn without_a_recorder_the_clock_is_not_read() {
        let m = ControlMetrics::new(Control::Scope);
        assert_eq!(m.start(), None);
        m.decided(None);
    }

    #[test]
    fn inventory_gauges_count_clients_by_status_and_expiring_soon() {
        use crate::registry::{ClientRecord, ClientStatus, InMemoryRegistry, Inventory};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let day = Duration::from_secs(86_400);
        let client = |id: &str, expires| ClientRecord::builder(id, "o@example.com", "p", expires);
        let registry = InMemoryRegistry::new(
            Inventory::builder()
                .expiry_warning(7 * day)
                .client(client("steady", now + 30 * day).build().expect("record"))
                .client(client("leaving", now + 6 * day).build().expect("record"))
                .client(client("at-the-edge", now + 7 * day).build().expect("record"))
                .client(client("gone", now - day).build().expect("record"))
                .client(client("just-gone", now).build().expect("record"))
                .client(
                    client("paused", now - day)
                        .status(ClientStatus::Suspended)
                        .build()
                        .expect("record"),
                )
                .build()
                .expect("inventory"),
        );
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || inventory(&registry, now));
        let seen = Snapshot::take(&snap);
        let gauge = |name, labels: &[(&str, &str)]| match seen.get(MetricKind::Gauge, name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("no gauge {name} {labels:?}: {other:?}"),
        };
        let by_status = CLIENT_STATUSES.map(|status| gauge(CLIENTS, &[("status", status)]));
        // A suspended client is `suspended` whatever its expiry; one expiring at
        // `now` is expired (the identity layer refuses it from that instant).
        assert_eq!(by_status, [3.0, 2.0, 1.0]);
        assert_eq!(gauge(CLIENTS_EXPIRING_SOON, &[]), 2.0, "leaving and at-the-edge");
    }

    #[test]
    fn a_clone_resolves_afresh_and_a_histogram_records() {
        let first = DebuggingRecorder::new();
        let m = ControlMetrics::new(Control::Scope);
        metrics::with_local_recorder(&first, || m.allow());
        let second = DebuggingRecorder::new();
        let snap = second.snapshotter();
        let h = LazyHistogram::new(RISK_SCORE);
        metrics::with_local_recorder(&second, || {
            m.clone().allow();
            h.record(42.0);
            store_fallback("rate_limit", "fail_open");
        });
        let seen = Snapshot::take(&snap);
        assert_eq!(
            seen.counter(REQUESTS_TOTAL, &[("control", "scope"), ("decision", "allow")]),
            1
        );
        assert_eq!(
            seen.counter(
                STORE_FALLBACKS_TOTAL,
                &[("store", "rate_limit"), ("policy", "fail_open")]
            ),
            1
        );
        match seen.get(MetricKind::Histogram, RISK_SCORE, &[]) {
            Some(DebugValue::Histogram(v)) => {
                assert_eq!(v.iter().map(|f| f.into_inner()).collect::<Vec<_>>(), [42.0]);
            }
            other => panic!("no histogram: {other:?}"),
        }
    }
}
