//! The verified-token cache: a token already verified is recognised by the
//! SHA-256 of its bytes, so a machine client reusing its token costs a hash and a
//! look-up instead of a signature verification.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::Expiry;
use moka::sync::Cache;

use crate::jwt::VerifiedToken;

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) token: Arc<VerifiedToken>,
    ttl: Duration,
}

struct UntilExp;

impl Expiry<[u8; 32], Entry> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Entry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Hashes a key that is already a SHA-256 digest by taking 8 of its bytes: the
/// digest is uniformly distributed, so hashing it again (SipHash) is wasted work
/// on the hot path.
#[derive(Clone, Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(first) = bytes.first_chunk::<8>() {
            self.0 ^= u64::from_le_bytes(*first);
        } else {
            for &b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(b);
            }
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // The length prefix of the fixed-size key carries no information.
    }
}

#[derive(Clone, Default)]
struct DigestState;

impl std::hash::BuildHasher for DigestState {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher::default()
    }
}

/// A bounded cache of verified tokens. Entries never outlive the token's `exp`
/// (checked against the layer's clock on every hit), and an entry whose key has
/// left the issuer's key set is dropped on its next hit.
#[derive(Clone)]
pub(crate) struct TokenCache {
    inner: Cache<[u8; 32], Entry, DigestState>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.entry_count())
            .finish()
    }
}

impl TokenCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            inner: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExp)
                .build_with_hasher(DigestState),
        }
    }

    /// The verified token for this digest, if cached and unexpired at `now`.
    pub(crate) fn get(&self, digest: &[u8; 32], now: SystemTime) -> Option<Arc<VerifiedToken>> {
        let entry = self.inner.get(digest)?;
        if now >= entry.token.exp {
            self.inner.invalidate(digest);
            return None;
        }
        Some(entry.token)
    }

    pub(crate) fn insert(&self, digest: [u8; 32], token: Arc<VerifiedToken>, now: SystemTime) {
        let Ok(ttl) = token.exp.duration_since(now) else {
            return;
        };
        if ttl.is_zero() {
            return;
        }
        self.inner.insert(digest, Entry { token, ttl });
    }

    pub(crate) fn invalidate(&self, digest: &[u8; 32]) {
        self.inner.invalidate(digest);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nhi_guard_core::ScopeSet;

    fn token(exp: SystemTime) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            issuer: 0,
            client_id: Arc::from("svc"),
            subject: Arc::from("svc"),
            scopes: ScopeSet::empty(),
            exp,
            iat: None,
            kid: None,
            alg: Arc::from("ES256"),
            jti: None,
            key_fingerprint: [0; 32],
            cnf_x5t: None,
            admitted: arc_swap::ArcSwapOption::empty(),
        })
    }

    #[test]
    fn hit_until_exp_then_gone() {
        let cache = TokenCache::new(100);
        let now = SystemTime::now();
        cache.insert([1; 32], token(now + Duration::from_secs(10)), now);
        assert!(cache.get(&[1; 32], now).is_some());
        assert!(cache.get(&[1; 32], now + Duration::from_secs(9)).is_some());
        assert!(cache.get(&[1; 32], now + Duration::from_secs(10)).is_none());
        assert!(cache.get(&[1; 32], now).is_none(), "removed on the expired hit");
    }

    #[test]
    fn expired_tokens_are_not_inserted_and_size_is_bounded() {
        let cache = TokenCache::new(16);
        let now = SystemTime::now();
        cache.insert([2; 32], token(now), now);
        assert!(cache.get(&[2; 32], now - Duration::from_secs(1)).is_none());
        for i in 0..200u8 {
            cache.insert([i; 32], token(now + Duration::from_secs(60)), now);
        }
        assert!(cache.len() <= 16, "{}", cache.len());
    }
}
