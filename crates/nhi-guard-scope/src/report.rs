//! The least-privilege report: per client, what it was granted, what it used and
//! when, what it never used, and what it tried without holding it.
//!
//! It joins the inventory ([`ClientRegistry`]) with what the scope layer recorded
//! in a [`ScopeUsageStore`]. Serialise it with serde (JSON), or mount
//! [`ReportService::get_handler`] (feature `axum`) as `GET /admin/clients`.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::{Duration, UNIX_EPOCH};
//! use nhi_guard_core::clock::ManualClock;
//! use nhi_guard_core::registry::{ClientRecord, InMemoryRegistry, Inventory};
//! use nhi_guard_scope::usage::{InMemoryUsageStore, ScopeUsageStore};
//! use nhi_guard_core::{ClientId, ScopeSet};
//! use nhi_guard_scope::report::ReportService;
//!
//! let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! let record = ClientRecord::builder("billing-export", "finance@example.com", "Nightly export", now + Duration::from_secs(10 * 86_400))
//!     .scopes(ScopeSet::parse("invoices:read invoices:write").unwrap())
//!     .build().unwrap();
//! let registry = Arc::new(InMemoryRegistry::new(Inventory::builder().client(record).build().unwrap()));
//! let store = Arc::new(InMemoryUsageStore::new());
//! store.record_use(&ClientId::from("billing-export"), "invoices:read", now);
//!
//! let reports = ReportService::new(registry, store).clock(Arc::new(ManualClock::at(now)));
//! let report = futures_lite_block_on(reports.report());
//! let client = &report.unwrap().clients[0];
//! assert_eq!(client.days_left, 10);
//! assert_eq!(client.unused.to_string(), "invoices:write");
//! # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::usage::{ClientUsage, ScopeUsageStore, SharedUsageStore, UsageStoreError};
use nhi_guard_core::clock::SharedClock;
use nhi_guard_core::registry::{ClientRecord, ClientRegistry, ClientStatus, SharedRegistry};
use nhi_guard_core::{ClientId, ScopeSet, SystemClock, rfc3339};
use serde::Serialize;

use crate::policy::{Access, Policy};

/// One scope a client exercised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UsedScope {
    /// The scope.
    pub scope: String,
    /// Allowed requests that needed it.
    pub uses: u64,
    /// The most recent one (RFC 3339).
    pub last_used: String,
    /// Whether the client is still granted it (the inventory may have narrowed).
    pub granted: bool,
}

/// One scope a client was refused for lacking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeniedScope {
    /// The missing scope.
    pub scope: String,
    /// Refused (or, in shadow mode, would-be refused) requests that lacked it.
    pub attempts: u64,
    /// The most recent attempt (RFC 3339).
    pub last_attempt: String,
}

/// One API key of a client, by its hash prefix, with its age.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyReport {
    /// `sha256:` and the first 8 hex digits of the key's hash.
    pub fingerprint_prefix: String,
    /// When it was issued (RFC 3339), if the inventory says.
    pub created: Option<String>,
    /// When it must be rotated (RFC 3339), if the inventory says.
    pub rotate_by: Option<String>,
    /// Whole days since it was issued, if known.
    pub age_days: Option<u64>,
    /// Past its rotation date: it works, and is flagged.
    pub rotation_due: bool,
    /// Older than the inventory's maximum key age: it is refused.
    pub too_old: bool,
}

/// The newest token a client presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TokenReport {
    /// When it was issued (its `iat`, RFC 3339).
    pub issued_at: String,
    /// Seconds between its issue and the report.
    pub age_seconds: u64,
    /// Whole days between its issue and the report.
    pub age_days: u64,
}

/// The least-privilege view of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClientReport {
    /// The client id.
    pub client_id: ClientId,
    /// Who answers for it.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
    /// Active or suspended.
    pub status: ClientStatus,
    /// When its registration expires (RFC 3339).
    pub expires: String,
    /// Whole days until expiry (negative once expired).
    pub days_left: i64,
    /// The registration expires within the inventory's warning window.
    pub expiring_soon: bool,
    /// The scopes it may hold (its ceiling in the inventory).
    pub granted: ScopeSet,
    /// The scopes it exercised, with the last use.
    pub used: Vec<UsedScope>,
    /// Granted scopes not exercised since the report's `unused_since` time: the
    /// candidates for narrowing the grant.
    pub unused: ScopeSet,
    /// Scopes it was refused for lacking, with attempt counts.
    pub denied: Vec<DeniedScope>,
    /// The usage store dropped some scopes of this client (memory bound).
    pub truncated: bool,
    /// The last request of it the usage store saw (allowed with a scope, or
    /// refused for lacking one), RFC 3339; `None` when none was seen.
    pub last_seen: Option<String>,
    /// Seen before, but not since the report's `unused_since` time: an identity
    /// nobody uses any more, a candidate for retirement.
    pub stale: bool,
    /// Never seen since the usage store started (the guard's start, for the
    /// in-memory store).
    pub never_seen: bool,
    /// Its API keys with their age and rotation state.
    pub api_keys: Vec<KeyReport>,
    /// The newest token it presented (for clients whose tokens come from an
    /// issuer and say when they were issued); `None` when none was seen.
    pub newest_token: Option<TokenReport>,
}

/// The least-privilege report over the whole inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InventoryReport {
    /// When the report was made (RFC 3339).
    pub generated_at: String,
    /// Scopes count as unused when not exercised at or after this time (RFC 3339).
    pub unused_since: String,
    /// One entry per client, sorted by id.
    pub clients: Vec<ClientReport>,
    /// Rules of the policy (when the report knows it, [`ReportService::policy`])
    /// that no client in the inventory can pass today, in policy order.
    pub unreachable_rules: Vec<UnreachableRule>,
    /// Clients marked `stale`.
    pub stale_clients: usize,
    /// Clients marked `never_seen`.
    pub never_seen_clients: usize,
}

/// A policy rule whose scopes no client in the inventory holds: nobody can call
/// the route until a client is granted them. Normal for a route added before its
/// first client is onboarded, or after its last one left; worth a look otherwise
/// (a scope misspelt in the policy or the inventory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UnreachableRule {
    /// The rule: its name, or `METHODS pattern`.
    pub rule: String,
    /// What no client holds: the scopes of `all_of` nobody has, or `one of …`.
    pub missing: String,
}

/// The rules of `policy` that no client of `clients` can pass, in policy order.
pub fn unreachable_rules(policy: &Policy, clients: &[Arc<ClientRecord>]) -> Vec<UnreachableRule> {
    let holdable = clients
        .iter()
        .fold(ScopeSet::empty(), |acc, c| acc.union(c.scopes()));
    policy
        .rules()
        .iter()
        .filter_map(|rule| {
            let Access::Scopes { all_of, any_of, .. } = rule.access() else {
                return None;
            };
            let never = all_of.difference(&holdable);
            let missing = if !never.is_empty() {
                never.to_string()
            } else if !any_of.is_empty() && !any_of.intersects(&holdable) {
                format!("one of {any_of}")
            } else {
                return None;
            };
            Some(UnreachableRule {
                rule: rule.label().to_owned(),
                missing,
            })
        })
        .collect()
}

/// Checks `policy` against the clients `registry` holds now: logs a warning per
/// unreachable rule, sets the `nhi_guard_scope_unreachable_rules` gauge, and
/// returns the rules. Run it at start-up and after every inventory reload.
pub fn warn_unreachable_rules(policy: &Policy, registry: &dyn ClientRegistry) -> Vec<UnreachableRule> {
    let rules = unreachable_rules(policy, &registry.clients());
    for r in &rules {
        tracing::warn!(
            target: "nhi_guard::scope",
            rule = %r.rule,
            missing = %r.missing,
            "no client in the inventory can pass this policy rule yet"
        );
    }
    metrics::gauge!(nhi_guard_core::metrics::SCOPE_UNREACHABLE_RULES).set(rules.len() as f64);
    rules
}

fn days_left(expires: SystemTime, now: SystemTime) -> i64 {
    const DAY: u64 = 86_400;
    match expires.duration_since(now) {
        Ok(left) => i64::try_from(left.as_secs() / DAY).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs().div_ceil(DAY)).unwrap_or(i64::MAX),
    }
}

/// Builds the report of one client from its record and recorded usage;
/// `max_key_age` is the maximum API-key age for the client's tier, if any.
pub fn client_report(
    record: &ClientRecord,
    usage: &ClientUsage,
    now: SystemTime,
    since: SystemTime,
    expiry_warning: Duration,
    max_key_age: Option<Duration>,
) -> ClientReport {
    let granted = record.scopes().clone();
    let used = usage
        .used
        .iter()
        .map(|(scope, stat)| UsedScope {
            scope: scope.clone(),
            uses: stat.count,
            last_used: rfc3339(stat.last),
            granted: granted.contains(scope),
        })
        .collect();
    let unused = ScopeSet::try_from_iter(
        granted
            .iter()
            .filter(|s| usage.used.get(*s).is_none_or(|stat| stat.last < since)),
    )
    .unwrap_or_default();
    let denied = usage
        .denied
        .iter()
        .map(|(scope, stat)| DeniedScope {
            scope: scope.clone(),
            attempts: stat.count,
            last_attempt: rfc3339(stat.last),
        })
        .collect();
    let expires = record.expires();
    let last_seen = usage
        .used
        .values()
        .chain(usage.denied.values())
        .map(|stat| stat.last)
        .max();
    ClientReport {
        client_id: record.id().clone(),
        owner: record.owner().to_owned(),
        purpose: record.purpose().to_owned(),
        status: record.status(),
        expires: rfc3339(expires),
        days_left: days_left(expires, now),
        expiring_soon: expires > now && expires.duration_since(now).is_ok_and(|l| l <= expiry_warning),
        granted,
        used,
        unused,
        denied,
        truncated: usage.truncated,
        last_seen: last_seen.map(rfc3339),
        stale: last_seen.is_some_and(|t| t < since),
        never_seen: last_seen.is_none(),
        api_keys: record
            .api_keys()
            .iter()
            .map(|hash| {
                let dates = record.api_key_dates(hash);
                let age = dates.created.and_then(|c| now.duration_since(c).ok());
                KeyReport {
                    fingerprint_prefix: hash.to_string()[..15].to_owned(),
                    created: dates.created.map(rfc3339),
                    rotate_by: dates.rotate_by.map(rfc3339),
                    age_days: age.map(|a| a.as_secs() / 86_400),
                    rotation_due: dates.rotate_by.is_some_and(|t| t <= now),
                    too_old: age.zip(max_key_age).is_some_and(|(a, max)| a >= max),
                }
            })
            .collect(),
        newest_token: usage.newest_token.map(|issued| {
            let age = now.duration_since(issued).unwrap_or_default().as_secs();
            TokenReport {
                issued_at: rfc3339(issued),
                age_seconds: age,
                age_days: age / 86_400,
            }
        }),
    }
}

/// Builds the report over every client of `registry`.
///
/// # Errors
/// The first error of the usage store.
pub async fn inventory_report(
    registry: &dyn ClientRegistry,
    store: &dyn ScopeUsageStore,
    now: SystemTime,
    since: SystemTime,
) -> Result<InventoryReport, UsageStoreError> {
    let warning = registry.expiry_warning();
    let records = registry.clients();
    let mut clients = Vec::with_capacity(records.len());
    for record in &records {
        let usage = store.usage(record.id()).await?;
        clients.push(client_report(
            record,
            &usage,
            now,
            since,
            warning,
            registry.max_key_age_for(record.tier()),
        ));
    }
    let stale_clients = clients.iter().filter(|c| c.stale).count();
    let never_seen_clients = clients.iter().filter(|c| c.never_seen).count();
    Ok(InventoryReport {
        generated_at: rfc3339(now),
        unused_since: rfc3339(since),
        clients,
        unreachable_rules: Vec::new(),
        stale_clients,
        never_seen_clients,
    })
}

/// The report, ready to serve: a registry, a usage store, a clock and the default
/// window after which a granted scope counts as unused.
#[derive(Clone)]
pub struct ReportService {
    registry: SharedRegistry,
    store: SharedUsageStore,
    clock: SharedClock,
    window: Duration,
    policy: Option<Arc<Policy>>,
}

impl std::fmt::Debug for ReportService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportService")
            .field("registry", &self.registry)
            .field("store", &self.store)
            .field("window", &self.window)
            .field("policy", &self.policy.as_ref().map(|p| p.rules().len()))
            .finish_non_exhaustive()
    }
}

/// The default window of [`ReportService`]: 30 days.
pub const DEFAULT_UNUSED_WINDOW: Duration = Duration::from_secs(30 * 86_400);

impl ReportService {
    /// Reports on `registry` from `store`, with the system clock and a 30-day
    /// window.
    pub fn new(registry: SharedRegistry, store: SharedUsageStore) -> Self {
        Self {
            registry,
            store,
            clock: Arc::new(SystemClock),
            window: DEFAULT_UNUSED_WINDOW,
            policy: None,
        }
    }

    /// The scope policy: each report lists its rules that no client in the
    /// inventory can pass ([`InventoryReport::unreachable_rules`]).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// The clock ("now" of the report).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// A granted scope counts as unused when not exercised within this window
    /// before now.
    #[must_use]
    pub fn unused_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The report with the default window.
    ///
    /// # Errors
    /// The usage store's error.
    pub async fn report(&self) -> Result<InventoryReport, UsageStoreError> {
        let now = self.clock.now();
        let since = now.checked_sub(self.window).unwrap_or(SystemTime::UNIX_EPOCH);
        self.report_since(since).await
    }

    /// The report counting scopes unused when not exercised at or after `since`.
    ///
    /// # Errors
    /// The usage store's error.
    pub async fn report_since(&self, since: SystemTime) -> Result<InventoryReport, UsageStoreError> {
        let mut report = inventory_report(&*self.registry, &*self.store, self.clock.now(), since).await?;
        nhi_guard_core::metrics::identity_staleness(report.stale_clients, report.never_seen_clients);
        if let Some(policy) = &self.policy {
            report.unreachable_rules = unreachable_rules(policy, &self.registry.clients());
        }
        Ok(report)
    }

    /// Answers a request for the report with the query `since=<RFC 3339>` or
    /// `unused_days=<n>` (or none, for the default window): 200 JSON, 400
    /// problem+json for a bad query, 503 problem+json when the store fails.
    pub async fn respond(&self, query: Option<&str>) -> http::Response<bytes::Bytes> {
        let since = match parse_query(query, self.clock.now(), self.window) {
            Ok(since) => since,
            Err(detail) => return problem(http::StatusCode::BAD_REQUEST, "invalid-query", &detail),
        };
        match self.report_since(since).await {
            Ok(report) => match serde_json::to_vec(&report) {
                Ok(body) => {
                    let mut res = http::Response::new(bytes::Bytes::from(body));
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    res.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("no-store"),
                    );
                    res
                }
                Err(_) => problem(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "report-unavailable",
                    "The report could not be serialised",
                ),
            },
            Err(e) => {
                tracing::warn!(target: "nhi_guard::scope", error = %e, "least-privilege report failed");
                problem(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "report-unavailable",
                    "The usage store is unavailable",
                )
            }
        }
    }

    /// An axum `GET` handler serving [`ReportService::respond`], to mount as
    /// `GET /admin/clients` behind a scope requirement:
    ///
    /// ```text
    /// router.route("/admin/clients", reports.get_handler().route_layer(scope.for_route(Require::all_of("admin"))?))
    /// ```
    #[cfg(feature = "axum")]
    pub fn get_handler<S>(&self) -> axum::routing::MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let svc = self.clone();
        axum::routing::get(move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
            let svc = svc.clone();
            async move { svc.respond(query.as_deref()).await.map(axum::body::Body::from) }
        })
    }
}

fn parse_query(query: Option<&str>, now: SystemTime, window: Duration) -> Result<SystemTime, String> {
    let mut since = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => {
                // `+` of an offset arrives percent-encoded or as a space; accept `Z` and `%2B`.
                let value = value.replace("%2B", "+").replace("%3A", ":").replace("%3a", ":");
                since = nhi_guard_core::parse_rfc3339(&value)
                    .map_err(|_| "`since` must be an RFC 3339 date-time".to_owned())?;
            }
            "unused_days" => {
                let days: u32 = value
                    .parse()
                    .map_err(|_| "`unused_days` must be a whole number of days".to_owned())?;
                since = now
                    .checked_sub(Duration::from_secs(u64::from(days) * 86_400))
                    .unwrap_or(SystemTime::UNIX_EPOCH);
            }
            _ => return Err("unknown query parameter; use `since` or `unused_days`".to_owned()),
        }
    }
    Ok(since)
}

fn problem(status: http::StatusCode, kind: &str, detail: &str) -> http::Response<bytes::Bytes> {
    let body = serde_json::json!({
        "type": format!("urn:nhi-guard:problem:{kind}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut res = http::Response::new(bytes::Bytes::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_left_rounds_towards_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let d = |s: i64| {
            if s >= 0 {
                now + Duration::from_secs(s.unsigned_abs())
            } else {
                now - Duration::from_secs(s.unsigned_abs())
            }
        };
        assert_eq!(days_left(d(86_400 * 3 + 5), now), 3);
        assert_eq!(days_left(d(86_399), now), 0);
        assert_eq!(days_left(d(-1), now), -1);
        assert_eq!(days_left(d(-86_400), now), -1);
        assert_eq!(days_left(d(-86_401), now), -2);
    }

    #[test]
    fn query_parsing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let w = Duration::from_secs(86_400);
        assert_eq!(parse_query(None, now, w), Ok(now - w));
        assert_eq!(
            parse_query(Some("unused_days=2"), now, w),
            Ok(now - Duration::from_secs(2 * 86_400))
        );
        assert_eq!(parse_query(Some("since=2027-01-15T08:00:00Z"), now, w), Ok(now));
        assert_eq!(
            parse_query(Some("since=2027-01-15T09%3A00%3A00%2B01%3A00"), now, w),
            Ok(now)
        );
        assert!(parse_query(Some("since=yesterday"), now, w).is_err());
        assert!(parse_query(Some("unused_days=-1"), now, w).is_err());
        assert!(parse_query(Some("limit=3"), now, w).is_err());
    }
}

#[cfg(test)]
mod key_tests {
    use nhi_guard_core::registry::{ApiKeyDates, ApiKeyHash};

    use super::*;

    #[test]
    fn keys_are_reported_with_their_age_and_rotation_state() {
        let day = Duration::from_secs(86_400);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let (old, due, plain) = (
            ApiKeyHash::of_key(b"old"),
            ApiKeyHash::of_key(b"due"),
            ApiKeyHash::of_key(b"plain"),
        );
        let record = ClientRecord::builder("etl", "data@example.com", "export", now + day * 100)
            .api_key_hash_dated(old, ApiKeyDates::new(Some(now - day * 400), None))
            .api_key_hash_dated(due, ApiKeyDates::new(Some(now - day * 30), Some(now - day)))
            .api_key_hash(plain)
            .build()
            .expect("record");
        let r = client_report(
            &record,
            &ClientUsage::default(),
            now,
            now - day * 30,
            day * 14,
            Some(day * 365),
        );
        let keys = &r.api_keys;
        assert_eq!(keys.len(), 3);
        assert!(old.to_string().starts_with(&keys[0].fingerprint_prefix));
        assert_eq!(
            (keys[0].age_days, keys[0].too_old, keys[0].rotation_due),
            (Some(400), true, false)
        );
        assert_eq!(
            (keys[1].age_days, keys[1].too_old, keys[1].rotation_due),
            (Some(30), false, true)
        );
        assert_eq!(keys[1].rotate_by.as_deref(), Some(rfc3339(now - day).as_str()));
        assert_eq!(
            (keys[2].created.as_deref(), keys[2].age_days, keys[2].too_old),
            (None, None, false)
        );
        // Without a maximum age nothing is too old.
        let r = client_report(&record, &ClientUsage::default(), now, now, day, None);
        assert!(r.api_keys.iter().all(|k| !k.too_old));
        // The report names keys by a hash prefix only.
        let json = serde_json::to_string(&r).expect("json");
        assert!(!json.contains(&old.to_string()), "{json}");
    }
}
