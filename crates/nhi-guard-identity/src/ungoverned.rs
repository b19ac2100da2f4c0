//! Ungoverned clients: callers whose credential proves something but names no
//! client of the inventory. A token that verifies against a trusted issuer for a
//! client nobody registered is an integration someone set up outside the
//! inventory; an API key that matches no client is a stale, leaked or guessed key.
//! Both are refused as before, and recorded here so that the owners of the
//! inventory see who is calling.
//!
//! Memory is bounded: each table keeps at most `capacity` entries and evicts the
//! least recently seen one (the count of evictions is reported). API keys are
//! recorded by the first 8 hex digits of their SHA-256 only, never whole.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use nhi_guard_core::ScopeSet;
use nhi_guard_core::registry::ApiKeyHash;

/// Distinct addresses counted per entry (a count of 64 means "64 or more").
const MAX_ADDRESSES: usize = 64;
/// Distinct scopes kept per entry.
const MAX_SCOPES: usize = 32;

/// The recorder of ungoverned callers, shared by the identity layer (give it with
/// [`crate::IdentityLayerBuilder::ungoverned`]) and whoever reports on it. Cheap to
/// clone.
#[derive(Clone)]
pub struct UngovernedClients {
    tables: Arc<Mutex<Tables>>,
}

impl std::fmt::Debug for UngovernedClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.lock();
        f.debug_struct("UngovernedClients")
            .field("capacity", &t.capacity)
            .field("clients", &t.clients.len())
            .field("api_keys", &t.api_keys.len())
            .field("evicted", &t.evicted)
            .finish()
    }
}

#[derive(Debug)]
struct Tables {
    capacity: usize,
    clients: HashMap<(Arc<str>, Arc<str>), Seen>,
    api_keys: HashMap<[u8; 4], Seen>,
    evicted: u64,
}

#[derive(Debug, Clone)]
struct Seen {
    first_seen: SystemTime,
    last_seen: SystemTime,
    requests: u64,
    addresses: Vec<IpAddr>,
    scopes: Vec<String>,
}

impl Seen {
    fn new(now: SystemTime) -> Self {
        Self {
            first_seen: now,
            last_seen: now,
            requests: 0,
            addresses: Vec::new(),
            scopes: Vec::new(),
        }
    }

    fn saw(&mut self, now: SystemTime, addr: Option<IpAddr>) {
        self.last_seen = self.last_seen.max(now);
        self.requests += 1;
        if let Some(ip) = addr
            && self.addresses.len() < MAX_ADDRESSES
            && !self.addresses.contains(&ip)
        {
            self.addresses.push(ip);
        }
    }
}

/// Inserts or updates `key`, evicting the least recently seen entry when full.
fn record<'a, K: std::hash::Hash + Eq + Clone>(
    table: &'a mut HashMap<K, Seen>,
    capacity: usize,
    evicted: &mut u64,
    key: &K,
    now: SystemTime,
) -> Option<&'a mut Seen> {
    if capacity == 0 {
        return None;
    }
    if !table.contains_key(key) && table.len() >= capacity {
        let oldest = table
            .iter()
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            table.remove(&k);
            *evicted += 1;
        }
    }
    Some(table.entry(key.clone()).or_insert_with(|| Seen::new(now)))
}

/// A client id that a trusted issuer's token named, with no client of that id in
/// the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UngovernedClient {
    /// The token's client id (`client_id`, else `azp` or `sub`).
    pub client_id: String,
    /// The issuer that signed its tokens.
    pub issuer: String,
    /// First and last time a token of it was refused.
    pub first_seen: SystemTime,
    /// Last time.
    pub last_seen: SystemTime,
    /// Requests refused.
    pub requests: u64,
    /// Distinct client addresses (counted up to 64).
    pub addresses: u32,
    /// The scopes its tokens asked for (up to 32, sorted).
    pub scopes: Vec<String>,
}

/// An API key that matched no client, known by the first 8 hex digits of its
/// SHA-256 only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnknownApiKey {
    /// `sha256:` and the first 8 hex digits of the key's SHA-256: enough to match
    /// an inventory line or a leaked key's hash, not to use the key.
    pub fingerprint_prefix: String,
    /// First time it was refused.
    pub first_seen: SystemTime,
    /// Last time.
    pub last_seen: SystemTime,
    /// Requests refused.
    pub requests: u64,
    /// Distinct client addresses (counted up to 64).
    pub addresses: u32,
}

/// What [`UngovernedClients::snapshot`] returns, most recently seen first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UngovernedSnapshot {
    /// Client ids named by trusted tokens but absent from the inventory.
    pub clients: Vec<UngovernedClient>,
    /// API keys that matched no client.
    pub api_keys: Vec<UnknownApiKey>,
    /// Entries evicted (least recently seen first) to stay within the capacity.
    pub evicted: u64,
    /// The most entries each table keeps.
    pub capacity: usize,
}

impl UngovernedClients {
    /// A recorder keeping at most `capacity` client ids and `capacity` API-key
    /// prefixes (0 records nothing). 1 000 is plenty for an inventory's worth of
    /// strangers; a flood of guessed keys only evicts older guesses.
    pub fn new(capacity: usize) -> Self {
        Self {
            tables: Arc::new(Mutex::new(Tables {
                capacity,
                clients: HashMap::new(),
                api_keys: HashMap::new(),
                evicted: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a verified token of `issuer` naming `client_id`, which the
    /// inventory does not know.
    pub(crate) fn token(
        &self,
        client_id: &Arc<str>,
        issuer: &Arc<str>,
        scopes: &ScopeSet,
        addr: Option<IpAddr>,
        now: SystemTime,
    ) {
        let mut t = self.lock();
        let Tables {
            capacity,
            clients,
            evicted,
            ..
        } = &mut *t;
        let key = (issuer.clone(), client_id.clone());
        if let Some(seen) = record(clients, *capacity, evicted, &key, now) {
            seen.saw(now, addr);
            for scope in scopes.iter() {
                if seen.scopes.len() < MAX_SCOPES && !seen.scopes.iter().any(|s| s == scope) {
                    seen.scopes.push(scope.to_owned());
                }
            }
        }
        nhi_guard_core::metrics::ungoverned("token");
    }

    /// Records an API key that matched no client.
    pub(crate) fn api_key(&self, hash: &ApiKeyHash, addr: Option<IpAddr>, now: SystemTime) {
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&hash.as_bytes()[..4]);
        let mut t = self.lock();
        let Tables {
            capacity,
            api_keys,
            evicted,
            ..
        } = &mut *t;
        if let Some(seen) = record(api_keys, *capacity, evicted, &prefix, now) {
            seen.saw(now, addr);
        }
        nhi_guard_core::metrics::ungoverned("api_key");
    }

    /// What was recorded, most recently seen first.
    pub fn snapshot(&self) -> UngovernedSnapshot {
        let t = self.lock();
        let mut clients: Vec<UngovernedClient> = t
            .clients
            .iter()
            .map(|((iss, id), s)| {
                let mut scopes = s.scopes.clone();
                scopes.sort();
                UngovernedClient {
                    client_id: id.to_string(),
                    issuer: iss.to_string(),
                    first_seen: s.first_seen,
                    last_seen: s.last_seen,
                    requests: s.requests,
                    addresses: s.addresses.len() as u32,
                    scopes,
                }
            })
            .collect();
        clients.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.client_id.cmp(&b.client_id)));
        let mut api_keys: Vec<UnknownApiKey> = t
            .api_keys
            .iter()
            .map(|(p, s)| UnknownApiKey {
                fingerprint_prefix: format!("sha256:{:02x}{:02x}{:02x}{:02x}", p[0], p[1], p[2], p[3]),
                first_seen: s.first_seen,
                last_seen: s.last_seen,
                requests: s.requests,
                addresses: s.addresses.len() as u32,
            })
            .collect();
        api_keys.sort_by(|a, b| {
            b.last_seen
                .cmp(&a.last_seen)
                .then(a.fingerprint_prefix.cmp(&b.fingerprint_prefix))
        });
        UngovernedSnapshot {
            clients,
            api_keys,
            evicted: t.evicted,
            capacity: t.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_900_000_000 + secs)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn tokens_are_counted_per_issuer_and_client_with_addresses_and_scopes() {
        let u = UngovernedClients::new(10);
        let iss: Arc<str> = Arc::from("https://idp.example");
        let other: Arc<str> = Arc::from("https://other.example");
        let id: Arc<str> = Arc::from("shadow-etl");
        let read = ScopeSet::parse("orders:read").expect("scopes");
        let write = ScopeSet::parse("orders:read orders:write").expect("scopes");
        u.token(&id, &iss, &read, ip("127.0.0.1"), at(0));
        u.token(&id, &iss, &write, ip("127.0.0.2"), at(5));
        u.token(&id, &iss, &read, ip("127.0.0.1"), at(9));
        u.token(&id, &other, &read, None, at(3));
        let s = u.snapshot();
        assert_eq!(s.clients.len(), 2);
        let c = &s.clients[0];
        assert_eq!(
            (c.client_id.as_str(), c.issuer.as_str()),
            ("shadow-etl", "https://idp.example")
        );
        assert_eq!(
            (c.first_seen, c.last_seen, c.requests, c.addresses),
            (at(0), at(9), 3, 2)
        );
        assert_eq!(c.scopes, ["orders:read", "orders:write"]);
        assert_eq!(s.clients[1].issuer, "https://other.example");
        assert_eq!(s.evicted, 0);
    }

    #[test]
    fn the_least_recently_seen_is_evicted_and_counted() {
        let u = UngovernedClients::new(3);
        for i in 0..5u64 {
            let h = ApiKeyHash::of_key(format!("nhik_guess_{i}").as_bytes());
            u.api_key(&h, ip("127.0.0.9"), at(i));
        }
        // The first key again: a new entry, evicting the oldest left.
        u.api_key(&ApiKeyHash::of_key(b"nhik_guess_0"), ip("127.0.0.9"), at(10));
        let s = u.snapshot();
        assert_eq!(s.api_keys.len(), 3);
        assert_eq!(s.evicted, 3);
        let expected = ApiKeyHash::of_key(b"nhik_guess_0").to_string();
        let first = &s.api_keys[0];
        assert!(
            expected.starts_with(&first.fingerprint_prefix),
            "{expected} vs {first:?}"
        );
        assert_eq!(first.fingerprint_prefix.len(), "sha256:".len() + 8);
        assert_eq!((first.first_seen, first.requests), (at(10), 1));
        // Nothing is kept with a capacity of 0.
        let none = UngovernedClients::new(0);
        none.api_key(&ApiKeyHash::of_key(b"k"), None, at(0));
        assert_eq!(none.snapshot().api_keys, []);
    }

    #[test]
    fn addresses_are_counted_up_to_64() {
        let u = UngovernedClients::new(1);
        let h = ApiKeyHash::of_key(b"spray");
        for i in 0..200u32 {
            let addr = IpAddr::from([127, 1, (i / 250) as u8, (i % 250) as u8]);
            u.api_key(&h, Some(addr), at(u64::from(i)));
        }
        let k = &u.snapshot().api_keys[0];
        assert_eq!((k.requests, k.addresses), (200, 64));
    }
}
