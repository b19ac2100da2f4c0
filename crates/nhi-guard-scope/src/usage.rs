//! Which granted scopes each client actually exercises, and which scopes it tried
//! without holding them: the raw material of the least-privilege report.
//!
//! The scope layer calls [`ScopeUsageStore::record_use`] for every scope an allowed
//! request needed and [`ScopeUsageStore::record_denied`] for every scope a refused
//! request lacked. Both are synchronous and must not block: they sit on the request
//! path. A store shared between replicas (Redis) buffers locally and flushes in the
//! background; reads ([`ScopeUsageStore::usage`]) are asynchronous and return the
//! merged view. [`ClientUsage::merge`] combines views of several replicas.
//!
//! [`InMemoryUsageStore`] is the bounded in-process default.
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use nhi_guard_core::ClientId;
//! use nhi_guard_scope::usage::{InMemoryUsageStore, ScopeUsageStore};
//!
//! let store = InMemoryUsageStore::new();
//! let client = ClientId::from("inventory-sync");
//! let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
//! store.record_use(&client, "orders:read", t);
//! store.record_denied(&client, "orders:write", t);
//! let usage = store.usage_now(&client);
//! assert_eq!(usage.used["orders:read"].count, 1);
//! assert_eq!(usage.used["orders:read"].last, t);
//! assert_eq!(usage.denied["orders:write"].count, 1);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use nhi_guard_core::clock::duration_nanos;
use nhi_guard_core::principal::ClientId;

/// How often, and when last, a client exercised (or was refused) one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScopeStat {
    /// Number of requests.
    pub count: u64,
    /// The most recent one.
    #[serde(serialize_with = "serialize_time")]
    pub last: SystemTime,
}

impl ScopeStat {
    /// Combines two observations of the same scope: counts add, the later time wins.
    #[must_use]
    pub fn merge(self, other: ScopeStat) -> ScopeStat {
        ScopeStat {
            count: self.count.saturating_add(other.count),
            last: self.last.max(other.last),
        }
    }
}

fn serialize_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&nhi_guard_core::rfc3339(*t))
}

/// What a store knows about one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientUsage {
    /// Granted scopes that allowed requests needed, by scope.
    pub used: BTreeMap<String, ScopeStat>,
    /// Scopes that refused requests lacked, by scope.
    pub denied: BTreeMap<String, ScopeStat>,
    /// The store hit a memory bound for this client and dropped some scopes.
    pub truncated: bool,
    /// When the newest token the client presented was issued (its `iat`), if it
    /// presented tokens that say.
    #[serde(serialize_with = "serialize_opt_time")]
    pub newest_token: Option<SystemTime>,
}

fn serialize_opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_time(t, s),
        None => s.serialize_none(),
    }
}

impl ClientUsage {
    /// Merges the view of another replica into this one.
    pub fn merge(&mut self, other: &ClientUsage) {
        for (map, theirs) in [(&mut self.used, &other.used), (&mut self.denied, &other.denied)] {
            for (scope, stat) in theirs {
                map.entry(scope.clone())
                    .and_modify(|s| *s = s.merge(*stat))
                    .or_insert(*stat);
            }
        }
        self.truncated |= other.truncated;
        self.newest_token = self.newest_token.max(other.newest_token);
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty() && self.denied.is_empty() && self.newest_token.is_none()
    }
}

/// A store could not answer (a remote store was unreachable, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope usage store error: {message}")]
pub struct UsageStoreError {
    message: String,
}

impl UsageStoreError {
    /// An error with a description (never include credentials).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The future returned by [`ScopeUsageStore::usage`].
pub type UsageFuture<'a> = Pin<Box<dyn Future<Output = Result<ClientUsage, UsageStoreError>> + Send + 'a>>;

/// Where the scope layer records which scopes clients exercise and lack.
///
/// Writes are synchronous, cheap and infallible from the caller's point of view:
/// they run on every request. Implementations keep memory bounded and, when they
/// talk to a remote store, buffer and flush in the background.
pub trait ScopeUsageStore: Send + Sync + fmt::Debug + 'static {
    /// `client` made an allowed request at `at` that needed `scope`, which it holds.
    fn record_use(&self, client: &ClientId, scope: &str, at: SystemTime);

    /// `client` made a request at `at` that was (or, in shadow mode, would have
    /// been) refused because it lacks `scope`.
    fn record_denied(&self, client: &ClientId, scope: &str, at: SystemTime);

    /// `client` presented a token issued at `issued_at` (its `iat`). The store
    /// keeps the newest, so the report can tell how old the tokens a client still
    /// uses are. The default implementation keeps nothing.
    fn record_token(&self, client: &ClientId, issued_at: SystemTime) {
        let _ = (client, issued_at);
    }

    /// Everything known about `client` (merged across replicas for shared stores).
    fn usage(&self, client: &ClientId) -> UsageFuture<'_>;
}

/// A shared, type-erased usage store.
pub type SharedUsageStore = Arc<dyn ScopeUsageStore>;

impl<T: ScopeUsageStore + ?Sized> ScopeUsageStore for Arc<T> {
    fn record_use(&self, client: &ClientId, scope: &str, at: SystemTime) {
        (**self).record_use(client, scope, at);
    }
    fn record_denied(&self, client: &ClientId, scope: &str, at: SystemTime) {
        (**self).record_denied(client, scope, at);
    }
    fn record_token(&self, client: &ClientId, issued_at: SystemTime) {
        (**self).record_token(client, issued_at);
    }
    fn usage(&self, client: &ClientId) -> UsageFuture<'_> {
        (**self).usage(client)
    }
}

/// Memory bounds of an [`InMemoryUsageStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimits {
    /// Clients tracked at once; when full, the client seen least recently is
    /// forgotten to make room.
    pub max_clients: usize,
    /// Distinct used scopes kept per client; further scopes are dropped and the
    /// client's usage is marked truncated.
    pub max_scopes_per_client: usize,
    /// Distinct denied scopes kept per client (same rule).
    pub max_denied_per_client: usize,
}

impl Default for UsageLimits {
    fn default() -> Self {
        Self {
            max_clients: 10_000,
            max_scopes_per_client: 256,
            max_denied_per_client: 64,
        }
    }
}

#[derive(Debug)]
struct Stat {
    scope: Box<str>,
    count: AtomicU64,
    last: AtomicU64,
}

impl Stat {
    #[inline]
    fn bump(&self, nanos: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if self.last.load(Ordering::Relaxed) < nanos {
            self.last.fetch_max(nanos, Ordering::Relaxed);
        }
    }
}

fn find<'a>(stats: &'a [Stat], scope: &str) -> Option<&'a Stat> {
    stats.iter().find(|s| &*s.scope == scope)
}

fn snapshot(stats: &[Stat]) -> BTreeMap<String, ScopeStat> {
    stats
        .iter()
        .map(|s| {
            let stat = ScopeStat {
                count: s.count.load(Ordering::Relaxed),
                last: UNIX_EPOCH + Duration::from_nanos(s.last.load(Ordering::Relaxed)),
            };
            (s.scope.to_string(), stat)
        })
        .collect()
}

type ClientMap = HashMap<ClientId, ClientCell, nhi_guard_core::hash::FxBuildHasher>;

#[derive(Debug, Default)]
struct ClientCell {
    last_seen: AtomicU64,
    /// The newest token's `iat` in nanoseconds since the epoch; 0 for none.
    newest_token: AtomicU64,
    used: Vec<Stat>,
    denied: Vec<Stat>,
    truncated: AtomicBool,
}

#[derive(Clone, Copy)]
enum Kind {
    Used,
    Denied,
}

impl ClientCell {
    fn usage(&self) -> ClientUsage {
        ClientUsage {
            used: snapshot(&self.used),
            denied: snapshot(&self.denied),
            truncated: self.truncated.load(Ordering::Relaxed),
            newest_token: match self.newest_token.load(Ordering::Relaxed) {
                0 => None,
                nanos => Some(UNIX_EPOCH + Duration::from_nanos(nanos)),
            },
        }
    }

    fn stats(&self, kind: Kind) -> &Vec<Stat> {
        match kind {
            Kind::Used => &self.used,
            Kind::Denied => &self.denied,
        }
    }
}

/// The in-process [`ScopeUsageStore`]: per client, a short list of scopes with an
/// atomic counter and last-seen time each. Recording a scope seen before takes one
/// read lock and one or two atomic operations and allocates nothing.
///
/// Memory is bounded by [`UsageLimits`].
pub struct InMemoryUsageStore {
    // One lock: recording a scope seen before takes the read side only.
    clients: RwLock<ClientMap>,
    limits: UsageLimits,
}

impl fmt::Debug for InMemoryUsageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryUsageStore")
            .field("clients", &self.len())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for InMemoryUsageStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryUsageStore {
    /// A store with the default [`UsageLimits`].
    pub fn new() -> Self {
        Self::with_limits(UsageLimits::default())
    }

    /// A store with these bounds (each at least 1).
    pub fn with_limits(limits: UsageLimits) -> Self {
        Self {
            clients: RwLock::new(ClientMap::default()),
            limits: UsageLimits {
                max_clients: limits.max_clients.max(1),
                max_scopes_per_client: limits.max_scopes_per_client.max(1),
                max_denied_per_client: limits.max_denied_per_client.max(1),
            },
        }
    }

    /// Number of clients tracked.
    pub fn len(&self) -> usize {
        self.clients.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The usage of `client`, synchronously.
    pub fn usage_now(&self, client: &ClientId) -> ClientUsage {
        let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
        match clients.get(client.as_str()) {
            None => ClientUsage::default(),
            Some(cell) => cell.usage(),
        }
    }

    /// The cell of `client`, made (evicting the least recently seen client when
    /// full) when absent. Holds the write side of the lock.
    fn cell_mut<'a>(&self, clients: &'a mut ClientMap, client: &ClientId) -> &'a mut ClientCell {
        if !clients.contains_key(client.as_str()) && clients.len() >= self.limits.max_clients {
            let oldest = clients
                .iter()
                .min_by_key(|(_, c)| c.last_seen.load(Ordering::Relaxed))
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                clients.remove(&id);
            }
        }
        clients.entry(client.clone()).or_default()
    }

    /// Takes everything recorded so far, leaving the store empty: the deltas a
    /// shared store flushes to its backend. A record made while draining lands
    /// either in what is returned or in the emptied store, never in neither.
    pub fn drain(&self) -> Vec<(ClientId, ClientUsage)> {
        let taken = std::mem::take(&mut *self.clients.write().unwrap_or_else(PoisonError::into_inner));
        taken
            .into_iter()
            .map(|(id, cell)| {
                let usage = cell.usage();
                (id, usage)
            })
            .collect::<Vec<_>>()
    }

    fn record(&self, client: &ClientId, scope: &str, at: SystemTime, kind: Kind) {
        let nanos = duration_nanos(at.duration_since(UNIX_EPOCH).unwrap_or_default());
        {
            let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cell) = clients.get(client.as_str())
                && let Some(stat) = find(cell.stats(kind), scope)
            {
                if cell.last_seen.load(Ordering::Relaxed) < nanos {
                    cell.last_seen.fetch_max(nanos, Ordering::Relaxed);
                }
                stat.bump(nanos);
                return;
            }
        }
        // First time for this client or scope: the write side.
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        let cell = self.cell_mut(&mut clients, client);
        cell.last_seen.fetch_max(nanos, Ordering::Relaxed);
        let (stats, max) = match kind {
            Kind::Used => (&mut cell.used, self.limits.max_scopes_per_client),
            Kind::Denied => (&mut cell.denied, self.limits.max_denied_per_client),
        };
        if let Some(stat) = find(stats, scope) {
            stat.bump(nanos);
        } else if stats.len() < max {
            stats.push(Stat {
                scope: scope.into(),
                count: AtomicU64::new(1),
                last: AtomicU64::new(nanos),
            });
        } else {
            cell.truncated.store(true, Ordering::Relaxed);
        }
    }
}

impl ScopeUsageStore for InMemoryUsageStore {
    fn record_use(&self, client: &ClientId, scope: &str, at: SystemTime) {
        self.record(client, scope, at, Kind::Used);
    }

    fn record_denied(&self, client: &ClientId, scope: &str, at: SystemTime) {
        self.record(client, scope, at, Kind::Denied);
    }

    fn record_token(&self, client: &ClientId, issued_at: SystemTime) {
        // At least 1 ns: 0 stands for "none".
        let nanos = duration_nanos(issued_at.duration_since(UNIX_EPOCH).unwrap_or_default()).max(1);
        {
            let clients = self.clients.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cell) = clients.get(client.as_str()) {
                if cell.newest_token.load(Ordering::Relaxed) < nanos {
                    cell.newest_token.fetch_max(nanos, Ordering::Relaxed);
                }
                return;
            }
        }
        let mut clients = self.clients.write().unwrap_or_else(PoisonError::into_inner);
        self.cell_mut(&mut clients, client)
            .newest_token
            .fetch_max(nanos, Ordering::Relaxed);
    }

    fn usage(&self, client: &ClientId) -> UsageFuture<'_> {
        let usage = self.usage_now(client);
        Box::pin(std::future::ready(Ok(usage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn counts_and_keeps_the_latest_time() {
        let store = InMemoryUsageStore::new();
        let c = ClientId::from("a");
        store.record_use(&c, "x", t(10));
        store.record_use(&c, "x", t(5));
        store.record_use(&c, "y", t(1));
        let u = store.usage_now(&c);
        assert_eq!(
            u.used["x"],
            ScopeStat {
                count: 2,
                last: t(10)
            }
        );
        assert_eq!(u.used["y"], ScopeStat { count: 1, last: t(1) });
        assert!(u.denied.is_empty());
        assert!(store.usage_now(&ClientId::from("b")).is_empty());
    }

    #[test]
    fn bounded_in_clients_and_scopes() {
        let store = InMemoryUsageStore::with_limits(UsageLimits {
            max_clients: 2,
            max_scopes_per_client: 2,
            max_denied_per_client: 1,
        });
        let (a, b, c) = (ClientId::from("a"), ClientId::from("b"), ClientId::from("c"));
        store.record_use(&a, "s1", t(1));
        store.record_use(&b, "s1", t(2));
        store.record_use(&a, "s1", t(3));
        // b is now the least recently seen: c replaces it.
        store.record_use(&c, "s1", t(4));
        assert_eq!(store.len(), 2);
        assert!(store.usage_now(&b).is_empty());
        assert!(!store.usage_now(&a).is_empty());

        store.record_use(&a, "s2", t(5));
        store.record_use(&a, "s3", t(5));
        store.record_denied(&a, "d1", t(5));
        store.record_denied(&a, "d2", t(5));
        let u = store.usage_now(&a);
        assert_eq!(u.used.keys().collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(u.denied.keys().collect::<Vec<_>>(), ["d1"]);
        assert!(u.truncated);
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_latest() {
        let (s1, s2) = (InMemoryUsageStore::new(), InMemoryUsageStore::new());
        let c = ClientId::from("a");
        s1.record_use(&c, "x", t(10));
        s2.record_use(&c, "x", t(20));
        s2.record_denied(&c, "z", t(3));
        let mut u = s1.usage_now(&c);
        u.merge(&s2.usage_now(&c));
        assert_eq!(
            u.used["x"],
            ScopeStat {
                count: 2,
                last: t(20)
            }
        );
        assert_eq!(u.denied["z"].count, 1);
        let json = serde_json::to_value(&u).expect("valid");
        assert_eq!(json["used"]["x"]["last"], "2027-01-15T08:00:20Z");
        assert_eq!(json["newest_token"], serde_json::Value::Null);
    }

    #[test]
    fn keeps_the_newest_token_per_client_and_merges_the_newest() {
        let (s1, s2) = (InMemoryUsageStore::new(), InMemoryUsageStore::new());
        let c = ClientId::from("a");
        // A client first seen through its token alone.
        s1.record_token(&c, t(100));
        s1.record_token(&c, t(50));
        assert_eq!(s1.usage_now(&c).newest_token, Some(t(100)));
        assert!(!s1.usage_now(&c).is_empty());
        s1.record_use(&c, "x", t(120));
        assert_eq!(s1.usage_now(&c).newest_token, Some(t(100)));
        s2.record_token(&c, t(200));
        let mut u = s1.usage_now(&c);
        u.merge(&s2.usage_now(&c));
        assert_eq!(u.newest_token, Some(t(200)));
        let json = serde_json::to_value(&u).expect("valid");
        assert_eq!(json["newest_token"], "2027-01-15T08:03:20Z");
        assert_eq!(s1.usage_now(&ClientId::from("b")).newest_token, None);
    }
}
