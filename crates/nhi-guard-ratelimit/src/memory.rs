//! The in-process GCRA store: sharded, bounded, exact.

use std::collections::HashMap;
use std::fmt;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::store::{
    CheckMode, Quota, RateLimitCheck, RateLimitDecision, RateLimitStore, StoreError, StoreFuture,
};
use nhi_guard_core::clock::{SharedClock, SystemClock};

/// The most limits one request may be checked against at once.
pub const MAX_LIMITS: usize = 8;

/// The default bound on live keys: one million.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// One limit of one request, borrowed: the allocation-free form of
/// [`RateLimitCheck`].
#[derive(Debug, Clone, Copy)]
pub struct LocalCheck<'a> {
    /// The policy name.
    pub policy: &'a str,
    /// The subject (client id, address bytes, fingerprint, ...).
    pub key: &'a [u8],
    /// A qualifier (route group), empty when none.
    pub qualifier: &'a [u8],
    /// The quota.
    pub quota: Quota,
    /// The cost (at least 1; 0 is treated as 1).
    pub cost: u32,
}

type Map = HashMap<u64, u64, nhi_guard_core::hash::PreHashedBuildHasher>;

/// A shard on its own cache line, so that two cores working on two shards do not
/// fight over one line.
#[repr(align(128))]
struct Shard {
    map: Mutex<Map>,
}

/// The in-process rate-limit store.
///
/// Each key is a 64-bit keyed hash (folded multiply with random per-store seeds) of the
/// policy, subject and qualifier, mapped to its TAT in nanoseconds: 16 bytes of
/// payload per key in a `HashMap` shard, about 20 to 40 bytes per live key with the
/// table's load factor (see [`InMemoryRateLimitStore::memory_bytes`]). Two different keys
/// share a cell only on a 64-bit hash collision, which an attacker cannot aim for
/// without the random key.
///
/// Keys are spread over shards, each behind its own mutex held for a few dozen
/// nanoseconds; a request with several limits locks the shards it needs in
/// ascending order, checks every limit, and commits only if all pass. So `N`
/// concurrent requests against a burst `B` admit exactly `B`, and a request refused
/// by one limit spends nothing on the others.
///
/// Memory is bounded by `max_keys`: a new key that finds the store full first
/// makes its shard forget its idle keys (whose TAT is past, which changes no
/// decision); if every key there is still active it forgets the eighth closest to
/// idle, which forgives those keys part of their debt
/// (counted in [`InMemoryRateLimitStore::evicted_active`]).
///
/// ```
/// use nhi_guard_ratelimit::store::{CheckMode, Quota};
/// use nhi_guard_ratelimit::{InMemoryRateLimitStore, LocalCheck};
///
/// let store = InMemoryRateLimitStore::new();
/// let quota = Quota::per_second(1).and_then(|q| q.with_burst(2)).unwrap();
/// let check = [LocalCheck { policy: "per-client", key: b"billing-export", qualifier: b"", quota, cost: 1 }];
/// let mut out = [Default::default(); 1];
/// let now = 1_700_000_000_000_000_000;
/// assert!(store.check_at(now, &check, CheckMode::Consume, &mut out));
/// assert!(store.check_at(now, &check, CheckMode::Consume, &mut out));
/// assert!(!store.check_at(now, &check, CheckMode::Consume, &mut out));
/// assert_eq!(out[0].retry_after.as_secs(), 1);
/// ```
pub struct InMemoryRateLimitStore {
    shards: Box<[Shard]>,
    shard_bits: u32,
    len: AtomicUsize,
    max_keys: usize,
    hasher: nhi_guard_core::hash::KeyHasher,
    clock: SharedClock,
    evicted_idle: AtomicU64,
    evicted_active: AtomicU64,
}

impl fmt::Debug for InMemoryRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryRateLimitStore")
            .field("shards", &self.shards.len())
            .field("max_keys", &self.max_keys)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryRateLimitStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryRateLimitStore {
    /// A store bounded to [`DEFAULT_MAX_KEYS`] live keys, on the system clock.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A store bounded to `max_keys` live keys (at least 1).
    pub fn with_max_keys(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        // Enough shards that two cores rarely meet, few enough that each shard
        // holds many keys (eviction works per shard).
        let want = (max_keys / 64).clamp(1, 256);
        let shard_bits = usize::BITS - (want.next_power_of_two() - 1).leading_zeros();
        let shards = 1usize << shard_bits;
        Self {
            shards: (0..shards)
                .map(|_| Shard {
                    map: Mutex::new(Map::default()),
                })
                .collect(),
            shard_bits,
            len: AtomicUsize::new(0),
            max_keys,
            hasher: nhi_guard_core::hash::KeyHasher::new(),
            clock: Arc::new(SystemClock),
            evicted_idle: AtomicU64::new(0),
            evicted_active: AtomicU64::new(0),
        }
    }

    /// Uses `clock` for [`RateLimitStore::check`] (the layer passes its own time to
    /// [`InMemoryRateLimitStore::check_at`]).
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The bound on live keys. A new key that finds the store full makes room in
    /// its own shard; if that shard is empty the store may exceed the bound by at
    /// most one key per shard.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the key tables occupy: for each shard, its buckets (16 bytes of key and
    /// TAT, plus one control byte) and the shard itself.
    pub fn memory_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<(u64, u64)>() + 1;
        self.shards
            .iter()
            .map(|s| {
                let cap = lock(&s.map).capacity();
                // hashbrown keeps buckets at 8/7 of the capacity, rounded to a power of two.
                let buckets = if cap == 0 {
                    0
                } else {
                    (cap * 8 / 7).next_power_of_two()
                };
                buckets * per_bucket + std::mem::size_of::<Shard>()
            })
            .sum()
    }

    /// Idle keys forgotten to stay within the bound (harmless).
    pub fn evicted_idle(&self) -> u64 {
        self.evicted_idle.load(Ordering::Relaxed)
    }

    /// Active keys forgotten because a shard was full of active keys: each got part
    /// of its quota back early.
    pub fn evicted_active(&self) -> u64 {
        self.evicted_active.load(Ordering::Relaxed)
    }

    /// The keyed hash (random seeds per store, so collisions cannot be aimed at)
    /// of the policy, key and qualifier; their lengths count, so field boundaries
    /// do.
    #[inline]
    fn hash(&self, c: &LocalCheck<'_>) -> u64 {
        self.hasher.hash(&(c.policy, c.key, c.qualifier))
    }

    /// The shard: bits 32 and up of the hash. Not the top bits, which the table
    /// uses as its control tags (all keys of a shard would share a tag and every
    /// probe would compare every key), and not the low bits, which index buckets.
    fn shard_of(&self, hash: u64) -> usize {
        ((hash >> 32) as usize) & ((1usize << self.shard_bits) - 1)
    }

    /// Checks `checks` at `now_nanos` (Unix nanoseconds), writing one decision per
    /// check into `out`, and returns whether the request passes every limit.
    ///
    /// With [`CheckMode::Consume`] the costs are spent only when all pass. At most
    /// [`MAX_LIMITS`] checks are considered; `out` must be at least as long as
    /// `checks` (extra checks are ignored).
    pub fn check_at(
        &self,
        now_nanos: u64,
        checks: &[LocalCheck<'_>],
        mode: CheckMode,
        out: &mut [RateLimitDecision],
    ) -> bool {
        let n = checks.len().min(MAX_LIMITS).min(out.len());
        if n == 1 {
            return self.check_one(now_nanos, &checks[0], mode, &mut out[0]);
        }
        let mut hashes = [0u64; MAX_LIMITS];
        let mut shard_ids = [usize::MAX; MAX_LIMITS];
        for i in 0..n {
            hashes[i] = self.hash(&checks[i]);
            shard_ids[i] = self.shard_of(hashes[i]);
        }
        // Lock the distinct shards in ascending order (no deadlock between requests).
        let mut order = shard_ids;
        order[..n].sort_unstable();
        let mut guards: [Option<MutexGuard<'_, Map>>; MAX_LIMITS] = std::array::from_fn(|_| None);
        let mut locked = [usize::MAX; MAX_LIMITS];
        let mut nl = 0;
        for &s in &order[..n] {
            if nl == 0 || locked[nl - 1] != s {
                locked[nl] = s;
                guards[nl] = Some(lock(&self.shards[s].map));
                nl += 1;
            }
        }
        let slot = |s: usize| locked[..nl].iter().position(|&l| l == s).unwrap_or(0);

        // Check all, remembering the would-be TATs (a key repeated in one request
        // sees its earlier spending).
        let mut diffs = [0u64; MAX_LIMITS];
        let mut all = true;
        for i in 0..n {
            let c = &checks[i];
            let earlier = (0..i).rev().find(|&j| hashes[j] == hashes[i]);
            let diff = match earlier {
                Some(j) => diffs[j],
                None => guards[slot(shard_ids[i])]
                    .as_ref()
                    .and_then(|m| m.get(&hashes[i]))
                    .map_or(0, |&tat| tat.saturating_sub(now_nanos)),
            };
            let step = c.quota.step(diff, c.cost.max(1));
            out[i] = step.decision;
            diffs[i] = step.diff_after;
            all &= step.allowed;
        }
        if !all || mode == CheckMode::Peek {
            if !all && mode == CheckMode::Consume {
                // Nothing was spent: report the allowed limits as they stand.
                for i in 0..n {
                    if out[i].allowed {
                        let before = guards[slot(shard_ids[i])]
                            .as_ref()
                            .and_then(|m| m.get(&hashes[i]))
                            .map_or(0, |&tat| tat.saturating_sub(now_nanos));
                        out[i] = checks[i].quota.state(before);
                    }
                }
            }
            return all;
        }
        for i in 0..n {
            let s = slot(shard_ids[i]);
            if let Some(map) = guards[s].as_mut() {
                self.insert(map, now_nanos, hashes[i], now_nanos + diffs[i]);
            }
        }
        true
    }

    fn check_one(&self, now: u64, c: &LocalCheck<'_>, mode: CheckMode, out: &mut RateLimitDecision) -> bool {
        let hash = self.hash(c);
        let mut map = lock(&self.shards[self.shard_of(hash)].map);
        // One look-up for a known key.
        if let Some(tat) = map.get_mut(&hash) {
            let step = c.quota.step(tat.saturating_sub(now), c.cost.max(1));
            *out = step.decision;
            if step.allowed && mode == CheckMode::Consume {
                *tat = now + step.diff_after;
            }
            return step.allowed;
        }
        let step = c.quota.step(0, c.cost.max(1));
        *out = step.decision;
        if step.allowed && mode == CheckMode::Consume {
            self.insert(&mut map, now, hash, now + step.diff_after);
        }
        step.allowed
    }

    fn insert(&self, map: &mut Map, now: u64, hash: u64, tat: u64) {
        if let Some(v) = map.get_mut(&hash) {
            *v = tat;
            return;
        }
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            self.make_room(map, now);
        }
        map.insert(hash, tat);
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// The store is full: forget this shard's idle keys; if it has none, those of
    /// the other shards that are not busy; if none anywhere, the eighth of this
    /// shard's keys closest to idle.
    #[cold]
    fn make_room(&self, map: &mut Map, now: u64) {
        if self.remove_idle(map, now) > 0 {
            return;
        }
        let mut removed = 0;
        for s in self.shards.iter() {
            // try_lock: this thread holds its own shard(s); never wait for another.
            if let Ok(mut other) = s.map.try_lock() {
                removed += self.remove_idle(&mut other, now);
            }
        }
        if removed > 0 || map.is_empty() {
            return;
        }
        let mut tats: Vec<u64> = map.values().copied().collect();
        let k = (tats.len() / 8).max(1) - 1;
        let (_, &mut threshold, _) = tats.select_nth_unstable(k);
        let before = map.len();
        map.retain(|_, tat| *tat > threshold);
        let removed = before - map.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        self.evicted_active.fetch_add(removed as u64, Ordering::Relaxed);
    }

    fn remove_idle(&self, map: &mut Map, now: u64) -> usize {
        let before = map.len();
        map.retain(|_, tat| *tat > now);
        let removed = before - map.len();
        self.len.fetch_sub(removed, Ordering::Relaxed);
        self.evicted_idle.fetch_add(removed as u64, Ordering::Relaxed);
        // Give back a table that churn left mostly empty.
        if map.capacity() > 64 && map.len() < map.capacity() / 4 {
            map.shrink_to(map.len() * 2);
        }
        removed
    }

    /// Forgets every key whose TAT is past (changes no decision). The store also
    /// does this by itself, per shard, when a shard fills up.
    pub fn sweep(&self) {
        let now = self.clock.unix_nanos();
        for s in self.shards.iter() {
            self.remove_idle(&mut lock(&s.map), now);
        }
    }
}

fn lock(m: &Mutex<Map>) -> MutexGuard<'_, Map> {
    // The critical sections cannot panic half-way through an update; a poisoned
    // shard holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RateLimitStore for InMemoryRateLimitStore {
    fn check(&self, checks: Arc<[RateLimitCheck]>, mode: CheckMode) -> StoreFuture {
        let result = self.check_owned(&checks, mode);
        Box::pin(std::future::ready(result))
    }
}

impl InMemoryRateLimitStore {
    /// [`RateLimitStore::check`] without the future, at the store's clock.
    ///
    /// # Errors
    /// More than [`MAX_LIMITS`] checks.
    pub fn check_owned(
        &self,
        checks: &[RateLimitCheck],
        mode: CheckMode,
    ) -> Result<Vec<RateLimitDecision>, StoreError> {
        if checks.len() > MAX_LIMITS {
            return Err(StoreError::new(
                crate::store::StoreErrorKind::Protocol,
                format!("at most {MAX_LIMITS} limits per request"),
            ));
        }
        let mut local = [LocalCheck {
            policy: "",
            key: b"",
            qualifier: b"",
            quota: checks.first().map_or_else(
                || Quota::from_tier(nhi_guard_core::Tier::BUILT_IN_DEFAULT),
                |c| c.quota,
            ),
            cost: 1,
        }; MAX_LIMITS];
        for (slot, c) in local.iter_mut().zip(checks) {
            *slot = LocalCheck {
                policy: &c.policy,
                key: &c.key,
                qualifier: &c.qualifier,
                quota: c.quota,
                cost: c.cost,
            };
        }
        let mut out = vec![RateLimitDecision::default(); checks.len()];
        self.check_at(self.clock.unix_nanos(), &local[..checks.len()], mode, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000_000_000_000;

    fn quota(per_second: u32, burst: u32) -> Quota {
        Quota::per_second(per_second)
            .and_then(|q| q.with_burst(burst))
            .expect("quota")
    }

    fn check<'a>(policy: &'a str, key: &'a [u8], q: Quota, cost: u32) -> LocalCheck<'a> {
        LocalCheck {
            policy,
            key,
            qualifier: b"",
            quota: q,
            cost,
        }
    }

    #[test]
    fn steady_rate_after_burst() {
        let s = InMemoryRateLimitStore::new();
        let c = [check("p", b"k", quota(10, 3), 1)];
        let mut out = [RateLimitDecision::default(); 1];
        for _ in 0..3 {
            assert!(s.check_at(NOW, &c, CheckMode::Consume, &mut out));
        }
        assert!(!s.check_at(NOW, &c, CheckMode::Consume, &mut out));
        assert_eq!(out[0].retry_after, Duration::from_millis(100));
        // One interval later exactly one more passes.
        let t = NOW + 100_000_000;
        assert!(s.check_at(t, &c, CheckMode::Consume, &mut out));
        assert!(!s.check_at(t, &c, CheckMode::Consume, &mut out));
        // One nanosecond early is too early.
        assert!(!s.check_at(t + 99_999_999, &c, CheckMode::Consume, &mut out));
        assert!(s.check_at(t + 100_000_000, &c, CheckMode::Consume, &mut out));
        // Over 10 s at the steady rate: exactly 10 per second.
        let mut passed = 0;
        let start = t + 100_000_000;
        for ms in 1..=10_000u64 {
            if s.check_at(start + ms * 1_000_000, &c, CheckMode::Consume, &mut out) {
                passed += 1;
            }
        }
        assert_eq!(passed, 100);
    }

    #[test]
    fn cost_spends_several_units() {
        let s = InMemoryRateLimitStore::new();
        let mut out = [RateLimitDecision::default(); 1];
        let q = quota(10, 10);
        assert!(s.check_at(NOW, &[check("p", b"k", q, 7)], CheckMode::Consume, &mut out));
        assert_eq!(out[0].remaining, 3);
        assert!(!s.check_at(NOW, &[check("p", b"k", q, 4)], CheckMode::Consume, &mut out));
        assert_eq!(out[0].retry_after, Duration::from_millis(100));
        assert!(s.check_at(NOW, &[check("p", b"k", q, 3)], CheckMode::Consume, &mut out));
        // A cost above the burst is charged the whole burst: it passes once the key
        // is idle, and then nothing else passes until the burst is earned back.
        let later = NOW + 10_000_000_000;
        assert!(s.check_at(later, &[check("p", b"k", q, 11)], CheckMode::Consume, &mut out));
        assert_eq!(out[0].remaining, 0);
        assert!(!s.check_at(later, &[check("p", b"k", q, 1)], CheckMode::Consume, &mut out));
        assert!(!s.check_at(later, &[check("p", b"k", q, 11)], CheckMode::Consume, &mut out));
        assert_eq!(out[0].retry_after, Duration::from_secs(1));
        assert!(s.check_at(
            later + 1_000_000_000,
            &[check("p", b"k", q, 11)],
            CheckMode::Consume,
            &mut out
        ));
    }

    #[test]
    fn refused_request_spends_nothing_on_other_limits() {
        let s = InMemoryRateLimitStore::new();
        let mut out = [RateLimitDecision::default(); 2];
        let wide = quota(100, 100);
        let narrow = quota(1, 1);
        let both = [check("wide", b"k", wide, 1), check("narrow", b"k", narrow, 1)];
        assert!(s.check_at(NOW, &both, CheckMode::Consume, &mut out));
        assert_eq!(out[0].remaining, 99);
        for _ in 0..50 {
            assert!(!s.check_at(NOW, &both, CheckMode::Consume, &mut out));
            assert!(out[0].allowed && !out[1].allowed);
        }
        // The wide limit still has 99 left.
        assert!(s.check_at(NOW, &[both[0]], CheckMode::Peek, &mut out));
        assert_eq!(
            out[0].remaining, 98,
            "peek reports what would remain after this request"
        );
        let mut one = [RateLimitDecision::default(); 1];
        for _ in 0..99 {
            assert!(s.check_at(NOW, &[both[0]], CheckMode::Consume, &mut one));
        }
        assert!(!s.check_at(NOW, &[both[0]], CheckMode::Consume, &mut one));
    }

    #[test]
    fn peek_spends_nothing() {
        let s = InMemoryRateLimitStore::new();
        let mut out = [RateLimitDecision::default(); 1];
        let c = [check("p", b"k", quota(1, 1), 1)];
        for _ in 0..5 {
            assert!(s.check_at(NOW, &c, CheckMode::Peek, &mut out));
        }
        assert!(s.is_empty());
        assert!(s.check_at(NOW, &c, CheckMode::Consume, &mut out));
        assert!(!s.check_at(NOW, &c, CheckMode::Peek, &mut out));
    }

    #[test]
    fn concurrent_requests_admit_exactly_the_burst() {
        let s = Arc::new(InMemoryRateLimitStore::with_max_keys(1000));
        let q = quota(1, 500);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut ok = 0;
                    let mut out = [RateLimitDecision::default(); 2];
                    let c = [
                        check("a", b"shared", q, 1),
                        check("b", b"shared", quota(1, 1000), 1),
                    ];
                    for _ in 0..1000 {
                        if s.check_at(NOW, &c, CheckMode::Consume, &mut out) {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(total, 500);
        // The second limit spent exactly as much as the first admitted.
        let mut out = [RateLimitDecision::default(); 1];
        s.check_at(
            NOW,
            &[check("b", b"shared", quota(1, 1000), 1)],
            CheckMode::Peek,
            &mut out,
        );
        assert_eq!(out[0].remaining, 499);
    }

    #[test]
    fn memory_stays_bounded_and_idle_keys_go_first() {
        let s = InMemoryRateLimitStore::with_max_keys(1024);
        let q = quota(1, 5);
        let mut out = [RateLimitDecision::default(); 1];
        // A busy key, spent at NOW.
        for _ in 0..5 {
            assert!(s.check_at(NOW, &[check("p", b"busy", q, 1)], CheckMode::Consume, &mut out));
        }
        // A flood of one-off keys, each idle again 1 s after its request.
        for i in 0..100_000u64 {
            let key = i.to_be_bytes();
            let t = NOW + 2_000_000_000 + i * 10_000_000;
            s.check_at(t, &[check("p", &key, q, 1)], CheckMode::Consume, &mut out);
            assert!(s.len() <= 1024 + s.shards.len(), "len {}", s.len());
        }
        assert!(s.evicted_idle() > 90_000);
        assert_eq!(s.evicted_active(), 0);
        assert!(s.memory_bytes() < 1024 * 128, "{} bytes", s.memory_bytes());
    }

    #[test]
    fn full_of_active_keys_still_bounded() {
        let s = InMemoryRateLimitStore::with_max_keys(256);
        let q = quota(1, 5);
        let mut out = [RateLimitDecision::default(); 1];
        for i in 0..10_000u64 {
            s.check_at(
                NOW,
                &[check("p", &i.to_be_bytes(), q, 1)],
                CheckMode::Consume,
                &mut out,
            );
        }
        assert!(s.len() <= 256 + s.shards.len());
        assert!(s.evicted_active() > 0);
    }
}
