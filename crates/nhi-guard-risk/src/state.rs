//! The bounded building blocks of signal state: a sharded map with a hard capacity
//! and eviction of idle and least recently used keys, sliding-window counters, and
//! small distinct-count sketches (an exact capped set and a HyperLogLog).
//!
//! Signals key their state by a 64-bit keyed hash ([`KeyHasher`]) of whatever they
//! track (an address, a network, a credential fingerprint, a client id): 8 bytes per
//! key whatever the key is, no allocation to look one up, and an attacker who does
//! not know the per-process key cannot aim collisions at one entry.

use std::collections::HashMap;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nhi_guard_core::clock::duration_nanos;

pub use nhi_guard_core::hash::KeyHasher;

// `touched` first, so that the key, the timestamp and the start of the value share
// a cache line: most look-ups touch nothing else.
#[repr(C)]
struct Slot<V> {
    touched: u64,
    value: V,
}

type Shard<V> = HashMap<u64, Slot<V>, nhi_guard_core::hash::PreHashedBuildHasher>;

const SHARDS: usize = 16;

/// A map from 64-bit key hashes to per-key state, with a hard capacity.
///
/// Entries untouched for `idle` are treated as absent and are removed first when a
/// shard is full; if a shard is still full, its least recently touched eighth goes.
/// Eviction is amortised: one pass frees room for many inserts. Each shard has its
/// own lock, held only for the look-up or update closure (never across an await).
pub struct BoundedMap<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    shard_capacity: usize,
    idle_nanos: u64,
    len: AtomicUsize,
}

impl<V> std::fmt::Debug for BoundedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMap")
            .field("len", &self.len())
            .field("capacity", &(self.shard_capacity * SHARDS))
            .finish()
    }
}

impl<V> BoundedMap<V> {
    /// A map holding at most about `capacity` keys (rounded up to a multiple of the
    /// shard count), forgetting keys idle for `idle`.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        let shard_capacity = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity,
            idle_nanos: duration_nanos(idle).max(1),
            len: AtomicUsize::new(0),
        }
    }

    #[inline]
    fn shard(&self, key: u64) -> MutexGuard<'_, Shard<V>> {
        // Bits 32.. choose the shard; the map itself hashes with the low bits and
        // the top seven, which stay independent of the shard.
        let i = ((key >> 32) as usize) & (SHARDS - 1);
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of keys held (including idle ones not yet evicted).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no key is held: lets signals skip a look-up on the common path.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hard capacity.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }

    /// Reads the live state of `key` at `now` (nanoseconds).
    #[inline]
    pub fn read<R>(&self, key: u64, now: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        if self.is_empty() {
            return None;
        }
        let shard = self.shard(key);
        let slot = shard.get(&key)?;
        if now.saturating_sub(slot.touched) >= self.idle_nanos {
            return None;
        }
        Some(f(&slot.value))
    }

    /// Updates the state of `key` at `now`, creating it with `init` when absent or
    /// idle, and marks it touched.
    #[inline]
    pub fn update<R>(&self, key: u64, now: u64, init: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key);
        if let Some(slot) = shard.get_mut(&key) {
            if now.saturating_sub(slot.touched) >= self.idle_nanos {
                slot.value = init();
            }
            slot.touched = now.max(slot.touched);
            return f(&mut slot.value);
        }
        if shard.len() >= self.shard_capacity {
            let before = shard.len();
            self.evict(&mut shard, now);
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        let slot = shard.entry(key).or_insert(Slot {
            value: init(),
            touched: now,
        });
        f(&mut slot.value)
    }

    /// Removes `key`.
    pub fn remove(&self, key: u64) -> bool {
        let removed = self.shard(key).remove(&key).is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    fn evict(&self, shard: &mut Shard<V>, now: u64) {
        let idle = self.idle_nanos;
        shard.retain(|_, s| now.saturating_sub(s.touched) < idle);
        let target = self.shard_capacity - self.shard_capacity / 8 - 1;
        if shard.len() > target {
            let mut touched: Vec<u64> = shard.values().map(|s| s.touched).collect();
            let drop = shard.len() - target;
            let (_, cutoff, _) = touched.select_nth_unstable(drop - 1);
            let cutoff = *cutoff;
            let mut left = drop;
            shard.retain(|_, s| {
                if left > 0 && s.touched <= cutoff {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Calls `f` on every live entry at `now`.
    pub fn for_each(&self, now: u64, mut f: impl FnMut(u64, &V)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for (k, slot) in shard.iter() {
                if now.saturating_sub(slot.touched) < self.idle_nanos {
                    f(*k, &slot.value);
                }
            }
        }
    }

    /// Bytes held by the map's tables (keys, slots and control bytes) plus the heap
    /// memory of the values as told by `heap`.
    pub fn memory_bytes(&self, heap: impl Fn(&V) -> usize) -> usize {
        let slot = std::mem::size_of::<(u64, Slot<V>)>() + 1;
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.capacity() * slot + s.values().map(|v| heap(&v.value)).sum::<usize>()
            })
            .sum()
    }
}

/// Which window an instant falls in, and how far into it.
#[inline]
fn window_of(now: u64, window: u64) -> (u64, u64) {
    (now / window, now % window)
}

/// A sliding-window event counter in 12 bytes: the counts of the current and the
/// previous fixed window, the previous weighted by how much of it still overlaps the
/// sliding window (the approximation used by many rate limiters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounter {
    index: u32,
    prev: u32,
    curr: u32,
}

impl WindowCounter {
    #[inline]
    fn roll(&mut self, index: u64) {
        let index = index as u32;
        if index == self.index {
            return;
        }
        self.prev = if index == self.index.wrapping_add(1) {
            self.curr
        } else {
            0
        };
        self.curr = 0;
        self.index = index;
    }

    /// Counts `n` events at `now` (nanoseconds) in windows of `window` nanoseconds.
    #[inline]
    pub fn add(&mut self, now: u64, window: u64, n: u32) {
        let (index, _) = window_of(now, window);
        self.roll(index);
        self.curr = self.curr.saturating_add(n);
    }

    /// The estimated number of events in the `window` nanoseconds before `now`.
    #[inline]
    pub fn count(&self, now: u64, window: u64) -> u32 {
        let (index, offset) = window_of(now, window);
        let index = index as u32;
        let (prev, curr) = if index == self.index {
            (self.prev, self.curr)
        } else if index == self.index.wrapping_add(1) {
            (self.curr, 0)
        } else {
            (0, 0)
        };
        let weight = (window - offset) as f64 / window as f64;
        curr.saturating_add((f64::from(prev) * weight) as u32)
    }
}

/// A distinct-count sketch: insert 64-bit hashes, count distinct ones.
pub trait Sketch: Default {
    /// Inserts a hash; whether the sketch changed.
    fn insert(&mut self, hash: u64) -> bool;
    /// The number of distinct hashes in the union of `self` and `other`.
    fn union_count(&self, other: &Self) -> u32;
    /// Heap memory held, in bytes.
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// An exact set of up to `N` distinct 32-bit hash prefixes; counts saturate at `N`.
/// For thresholds that are small (distinct credentials per address, networks per
/// credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CappedSet<const N: usize> {
    items: [u32; N],
    len: u8,
}

impl<const N: usize> Default for CappedSet<N> {
    fn default() -> Self {
        Self {
            items: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> CappedSet<N> {
    /// Whether `hash` is in the set.
    #[inline]
    pub fn contains(&self, hash: u64) -> bool {
        let h = (hash >> 32) as u32;
        self.items[..usize::from(self.len)].contains(&h)
    }

    /// Number of members (at most `N`).
    #[inline]
    pub fn len(&self) -> u32 {
        u32::from(self.len)
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Sketch for CappedSet<N> {
    #[inline]
    fn insert(&mut self, hash: u64) -> bool {
        let h = (hash >> 32) as u32;
        let len = usize::from(self.len);
        if len < N && !self.items[..len].contains(&h) {
            self.items[len] = h;
            self.len += 1;
            return true;
        }
        false
    }

    fn union_count(&self, other: &Self) -> u32 {
        let extra = other.items[..usize::from(other.len)]
            .iter()
            .filter(|h| !self.items[..usize::from(self.len)].contains(h))
            .count();
        (usize::from(self.len) + extra).min(N) as u32
    }
}

/// A HyperLogLog with 64 one-byte registers (64 bytes, about 13% standard error;
/// linear counting keeps small counts nearly exact). For distinct resource
/// identifiers and items held, where thresholds are in the tens to hundreds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hll64 {
    registers: [u8; 64],
}

impl Default for Hll64 {
    fn default() -> Self {
        Self { registers: [0; 64] }
    }
}

impl Hll64 {
    fn estimate(registers: &[u8; 64]) -> u32 {
        const M: f64 = 64.0;
        let mut sum = 0.0;
        let mut zeros = 0u32;
        for &r in registers {
            sum += f64::from_bits((1023u64.saturating_sub(u64::from(r.min(63)))) << 52);
            zeros += u32::from(r == 0);
        }
        let raw = 0.709 * M * M / sum;
        let e = if raw <= 2.5 * M && zeros > 0 {
            M * (M / f64::from(zeros)).ln()
        } else {
            raw
        };
        e.round() as u32
    }

    /// The estimated number of distinct hashes inserted.
    pub fn count(&self) -> u32 {
        Self::estimate(&self.registers)
    }
}

impl Sketch for Hll64 {
    #[inline]
    fn insert(&mut self, hash: u64) -> bool {
        let idx = (hash & 63) as usize;
        let rank = ((hash >> 6) | (1 << 58)).trailing_zeros() as u8 + 1;
        if rank > self.registers[idx] {
            self.registers[idx] = rank;
            return true;
        }
        false
    }

    fn union_count(&self, other: &Self) -> u32 {
        let mut merged = self.registers;
        for (m, o) in merged.iter_mut().zip(other.registers.iter()) {
            *m = (*m).max(*o);
        }
        Self::estimate(&merged)
    }
}

/// A distinct count over a sliding window: sketches of the current and previous
/// fixed window, counted as their union (so the count covers between one and two
/// windows, and a member seen in both counts once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct WindowedDistinct<S> {
    index: u32,
    /// The union count as of the last change (0 = not computed).
    cached: u32,
    curr: S,
    prev: S,
}

impl<S: Sketch + Copy> WindowedDistinct<S> {
    #[inline]
    fn roll(&mut self, now: u64, window: u64) {
        let index = (now / window) as u32;
        if index == self.index {
            return;
        }
        self.prev = if index == self.index.wrapping_add(1) {
            self.curr
        } else {
            S::default()
        };
        self.curr = S::default();
        self.index = index;
        self.cached = 0;
    }

    /// Inserts `hash` at `now` and returns the distinct count.
    #[inline]
    pub fn insert(&mut self, hash: u64, now: u64, window: u64) -> u32 {
        self.roll(now, window);
        if self.curr.insert(hash) || self.cached == 0 {
            self.cached = self.curr.union_count(&self.prev);
        }
        self.cached
    }

    /// The distinct count at `now`.
    pub fn count(&self, now: u64, window: u64) -> u32 {
        let index = (now / window) as u32;
        if index == self.index {
            if self.cached > 0 {
                self.cached
            } else {
                self.curr.union_count(&self.prev)
            }
        } else if index == self.index.wrapping_add(1) {
            self.curr.union_count(&S::default())
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn map_stays_within_capacity_and_evicts_idle_then_oldest() {
        let m: BoundedMap<u32> = BoundedMap::new(160, Duration::from_secs(60));
        let h = KeyHasher::new();
        for i in 0..10_000u32 {
            m.update(h.hash(&i), u64::from(i) * 1000, || 0, |v| *v += 1);
            assert!(m.len() <= m.capacity(), "len {} cap {}", m.len(), m.capacity());
        }
        // The most recent key is still there, the very first is gone.
        assert_eq!(m.read(h.hash(&9_999u32), 10_000_000, |v| *v), Some(1));
        assert_eq!(m.read(h.hash(&0u32), 10_000_000, |v| *v), None);
        // Idle entries read as absent and are reset on update.
        let k = h.hash(&"idle");
        m.update(k, 0, || 0, |v| *v = 7);
        assert_eq!(m.read(k, 59 * SEC, |v| *v), Some(7));
        assert_eq!(m.read(k, 60 * SEC, |v| *v), None);
        assert_eq!(m.update(k, 61 * SEC, || 0, |v| *v), 0);
        assert!(m.remove(k));
        assert!(m.memory_bytes(|_| 0) > 0);
    }

    #[test]
    fn window_counter_slides() {
        let w = 60 * SEC;
        let mut c = WindowCounter::default();
        for i in 0..30 {
            c.add(i * SEC, w, 1);
        }
        assert_eq!(c.count(30 * SEC, w), 30);
        // Half-way through the next window, half of the previous one still counts.
        assert_eq!(c.count(90 * SEC, w), 15);
        assert_eq!(c.count(180 * SEC, w), 0);
        c.add(200 * SEC, w, 2);
        assert_eq!(c.count(200 * SEC, w), 2);
    }

    #[test]
    fn capped_set_is_exact_until_its_cap() {
        let h = KeyHasher::new();
        let mut s = CappedSet::<4>::default();
        for i in 0..3u32 {
            s.insert(h.hash(&i));
            s.insert(h.hash(&i));
        }
        assert_eq!(s.len(), 3);
        assert!(s.contains(h.hash(&1u32)));
        for i in 0..10u32 {
            s.insert(h.hash(&i));
        }
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn hll_estimates_within_tolerance() {
        // Fixed seeds: an HLL of 64 registers errs by 13% (one standard deviation),
        // so a random seed would fail a 40% bound about once in a few hundred runs.
        let h = KeyHasher::with_seeds(0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f);
        for n in [1u32, 5, 20, 100, 300, 1000, 5000] {
            let mut s = Hll64::default();
            for i in 0..n {
                s.insert(h.hash(&i));
                s.insert(h.hash(&i));
            }
            let e = f64::from(s.count());
            let err = (e - f64::from(n)).abs() / f64::from(n);
            assert!(err < 0.4, "n={n} estimate={e}");
        }
    }

    #[test]
    fn windowed_distinct_forgets_after_two_windows() {
        let h = KeyHasher::new();
        let w = 10 * SEC;
        let mut d = WindowedDistinct::<CappedSet<8>>::default();
        assert_eq!(d.insert(h.hash(&1), 0, w), 1);
        assert_eq!(d.insert(h.hash(&2), SEC, w), 2);
        assert_eq!(d.insert(h.hash(&1), 11 * SEC, w), 2);
        assert_eq!(d.count(25 * SEC, w), 1);
        assert_eq!(d.count(35 * SEC, w), 0);
    }
}
