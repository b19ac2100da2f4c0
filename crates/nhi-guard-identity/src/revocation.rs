//! Revocations: kill a leaked credential now, without editing the inventory. A
//! revoked client is refused whatever credential it presents (`client_revoked`),
//! a revoked API key (by its `sha256:` hash) is refused (`api_key_revoked`), and a
//! revoked token (by its `jti`) is refused until the revocation lapses
//! (`token_revoked`); a token without a `jti` can be revoked only through its
//! client. The checks run on every admitted request, after the
//! verified-token cache, so no cached verification lets a revoked credential
//! through.
//!
//! The set lives in the process ([`Revocations`]): every layer given the same
//! handle sees a change at once. Without a shared store, another replica does not
//! see it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use nhi_guard_core::ClientId;
use nhi_guard_core::registry::ApiKeyHash;

/// What a revocation refuses.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revoked {
    /// Every credential of a client: suspended without editing the inventory.
    Client(ClientId),
    /// One API key, by its hash (as in the inventory).
    ApiKey(ApiKeyHash),
    /// One access token, by its `jti`, until `until` (the token's expiry).
    Token {
        /// The token's `jti` claim.
        jti: Arc<str>,
        /// When the revocation lapses: the token is expired by then.
        until: SystemTime,
    },
}

impl fmt::Debug for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(id) => write!(f, "Client({id})"),
            Self::ApiKey(h) => write!(f, "ApiKey({h})"),
            Self::Token { jti, .. } => write!(f, "Token({jti})"),
        }
    }
}

impl Revoked {
    /// `client_id`, `api_key` or `jti`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Client(_) => "client_id",
            Self::ApiKey(_) => "api_key",
            Self::Token { .. } => "jti",
        }
    }

    /// The revoked client id, key hash (`sha256:…`) or `jti`.
    pub fn value(&self) -> String {
        match self {
            Self::Client(id) => id.to_string(),
            Self::ApiKey(h) => h.to_string(),
            Self::Token { jti, .. } => jti.to_string(),
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Revocation {
    /// Its id, to lift it.
    pub id: String,
    /// What it refuses.
    pub target: Revoked,
    /// When it was made.
    pub created_at: SystemTime,
    /// Who made it (the operator's client id), when known.
    pub created_by: Option<String>,
}

impl Revocation {
    /// A revocation made elsewhere (another replica, a shared store), with its id.
    pub fn new(id: String, target: Revoked, created_at: SystemTime, created_by: Option<String>) -> Self {
        Self {
            id,
            target,
            created_at,
            created_by,
        }
    }

    /// One line for a shared store: `v1`, id, kind, value, created (ms), creator,
    /// expiry (ms), separated by tabs. Values never hold control characters (the
    /// admin API refuses them), so the line parses back with
    /// [`Revocation::from_line`].
    pub fn to_line(&self) -> String {
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis()
        };
        format!(
            "v1\t{}\t{}\t{}\t{}\t{}\t{}",
            self.id,
            self.target.kind(),
            self.target.value(),
            ms(self.created_at),
            self.created_by.as_deref().unwrap_or(""),
            self.expires_at().map(|t| ms(t).to_string()).unwrap_or_default()
        )
    }

    /// Parses [`Revocation::to_line`]'s form.
    ///
    /// # Errors
    /// A line of another form.
    pub fn from_line(line: &str) -> Result<Self, String> {
        let f: Vec<&str> = line.split('\t').collect();
        let [v, id, kind, value, created, by, expires] = f[..] else {
            return Err("not a revocation line".into());
        };
        if v != "v1" || id.is_empty() || value.is_empty() {
            return Err("not a revocation line".into());
        }
        let at = |ms: &str| -> Result<SystemTime, String> {
            let ms: u64 = ms.parse().map_err(|_| format!("bad time {ms:?}"))?;
            Ok(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        };
        let target = match kind {
            "client_id" => Revoked::Client(ClientId::from(value)),
            "api_key" => Revoked::ApiKey(ApiKeyHash::parse(value)?),
            "jti" => Revoked::Token {
                jti: Arc::from(value),
                until: at(expires)?,
            },
            other => return Err(format!("unknown kind {other:?}")),
        };
        Ok(Self::new(
            id.to_owned(),
            target,
            at(created)?,
            (!by.is_empty()).then(|| by.to_owned()),
        ))
    }

    /// When it lapses on its own (a token's expiry), if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match &self.target {
            Revoked::Token { until, .. } => Some(*until),
            _ => None,
        }
    }
}

/// The revocations every identity layer given this handle checks
/// ([`crate::IdentityLayerBuilder::revocations`]). Cheap to clone; changes are
/// seen by every clone at once.
#[derive(Clone, Default)]
pub struct Revocations {
    inner: Arc<Inner>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("count", &self.read().by_id.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    /// Whether any revocation exists: the check is one load when none does.
    any: AtomicBool,
    next: AtomicU64,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    by_id: BTreeMap<String, Revocation>,
    clients: HashSet<ClientId>,
    keys: HashSet<ApiKeyHash>,
    jtis: HashMap<Arc<str>, SystemTime>,
}

impl State {
    fn rebuild(&mut self) {
        self.clients.clear();
        self.keys.clear();
        self.jtis.clear();
        for r in self.by_id.values() {
            match &r.target {
                Revoked::Client(id) => {
                    self.clients.insert(id.clone());
                }
                Revoked::ApiKey(h) => {
                    self.keys.insert(*h);
                }
                Revoked::Token { jti, until } => {
                    let t = self.jtis.entry(jti.clone()).or_insert(*until);
                    *t = (*t).max(*until);
                }
            }
        }
    }
}

impl Revocations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Revokes `target` now; returns the revocation (with its id).
    pub fn revoke(&self, target: Revoked, created_by: Option<&str>, now: SystemTime) -> Revocation {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let stamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        let revocation = Revocation {
            id: format!("rev_{stamp:x}_{n}"),
            target,
            created_at: now,
            created_by: created_by.map(str::to_owned),
        };
        self.insert(revocation.clone(), now);
        revocation
    }

    /// Adds a revocation made elsewhere (another replica), keeping its id.
    pub fn insert(&self, revocation: Revocation, now: SystemTime) {
        let mut state = self.write();
        state.by_id.retain(|_, r| r.expires_at().is_none_or(|t| t > now));
        state.by_id.insert(revocation.id.clone(), revocation);
        state.rebuild();
        self.inner.any.store(!state.by_id.is_empty(), Ordering::Release);
    }

    /// Replaces the whole set with `all` (a shared store's, after a reconnect or a
    /// periodic reload), dropping those that lapsed.
    pub fn replace_all(&self, all: Vec<Revocation>, now: SystemTime) {
        let mut state = self.write();
        state.by_id = all
            .into_iter()
            .filter(|r| r.expires_at().is_none_or(|t| t > now))
            .map(|r| (r.id.clone(), r))
            .collect();
        state.rebuild();
        self.inner.any.store(!state.by_id.is_empty(), Ordering::Release);
    }

    /// Lifts the revocation `id`; the one lifted, if it existed.
    pub fn lift(&self, id: &str) -> Option<Revocation> {
        let mut state = self.write();
        let lifted = state.by_id.remove(id);
        state.rebuild();
        self.inner.any.store(!state.by_id.is_empty(), Ordering::Release);
        lifted
    }

    /// The revocations in force at `now`, oldest first.
    pub fn list(&self, now: SystemTime) -> Vec<Revocation> {
        let mut out: Vec<Revocation> = self
            .read()
            .by_id
            .values()
            .filter(|r| r.expires_at().is_none_or(|t| t > now))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    #[inline]
    fn any(&self) -> bool {
        self.inner.any.load(Ordering::Acquire)
    }

    /// Whether `client` is revoked.
    pub fn client_revoked(&self, client: &str) -> bool {
        self.any() && self.read().clients.contains(client)
    }

    /// Whether the API key with `hash` is revoked.
    pub fn api_key_revoked(&self, hash: &ApiKeyHash) -> bool {
        self.any() && self.read().keys.contains(hash)
    }

    /// Whether the token with `jti` is revoked at `now`.
    pub fn token_revoked(&self, jti: &str, now: SystemTime) -> bool {
        self.any() && self.read().jtis.get(jti).is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_900_000_000 + secs)
    }

    #[test]
    fn revoke_check_list_and_lift() {
        let r = Revocations::new();
        assert!(!r.client_revoked("etl"));
        let c = r.revoke(Revoked::Client(ClientId::from("etl")), Some("ops"), at(0));
        let key = ApiKeyHash::of_key(b"nhik_leaked");
        let k = r.revoke(Revoked::ApiKey(key), None, at(1));
        let t = r.revoke(
            Revoked::Token {
                jti: Arc::from("jti-1"),
                until: at(600),
            },
            Some("ops"),
            at(2),
        );
        assert!(r.client_revoked("etl") && !r.client_revoked("other"));
        assert!(r.api_key_revoked(&key) && !r.api_key_revoked(&ApiKeyHash::of_key(b"nhik_fine")));
        assert!(r.token_revoked("jti-1", at(599)) && !r.token_revoked("jti-1", at(600)));
        assert!(!r.token_revoked("jti-2", at(3)));
        let ids: Vec<&str> = vec![c.id.as_str(), k.id.as_str(), t.id.as_str()];
        let listed = r.list(at(3));
        assert_eq!(listed.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), ids);
        assert_eq!(listed[0].created_by.as_deref(), Some("ops"));
        assert_eq!(listed[1].target.value(), key.to_string());
        assert_eq!(
            (listed[2].target.kind(), listed[2].expires_at()),
            ("jti", Some(at(600)))
        );
        // A token revocation lapses with the token.
        assert_eq!(r.list(at(601)).len(), 2);
        // Lifting: the client works again; an unknown id lifts nothing.
        assert_eq!(r.lift(&c.id).map(|x| x.id), Some(c.id.clone()));
        assert!(!r.client_revoked("etl"));
        assert_eq!(r.lift("rev_unknown"), None);
        assert!(r.api_key_revoked(&key));
        // A clone sees every change.
        let clone = r.clone();
        r.lift(&k.id);
        assert!(!clone.api_key_revoked(&key));
        assert_ne!(c.id, k.id);
        // No secret in Debug: a key is shown by its hash only.
        assert!(!format!("{:?}", k.target).contains("leaked"));
    }

    #[test]
    fn lines_round_trip_and_replace_all_drops_what_lapsed() {
        let r = Revocations::new();
        let a = r.revoke(Revoked::Client(ClientId::from("etl")), Some("ops"), at(0));
        let b = r.revoke(Revoked::ApiKey(ApiKeyHash::of_key(b"k")), None, at(1));
        let c = r.revoke(
            Revoked::Token {
                jti: Arc::from("j-1"),
                until: at(100),
            },
            None,
            at(2),
        );
        for x in [&a, &b, &c] {
            let line = x.to_line();
            let back = Revocation::from_line(&line).expect("parses");
            assert_eq!(back.id, x.id);
            assert_eq!(back.target, x.target);
            assert_eq!(back.created_by, x.created_by);
        }
        assert!(Revocation::from_line("v2\tx").is_err());
        assert!(Revocation::from_line("v1\tid\tnope\tv\t0\t\t").is_err());
        let other = Revocations::new();
        other.revoke(Revoked::Client(ClientId::from("stale")), None, at(0));
        other.replace_all(vec![a.clone(), c.clone()], at(200));
        assert!(other.client_revoked("etl") && !other.client_revoked("stale"));
        assert!(!other.token_revoked("j-1", at(50)), "lapsed before the reload");
        assert_eq!(other.list(at(200)).len(), 1);
    }
}
