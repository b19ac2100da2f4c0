//! The hashers of the controls' in-memory tables: one keyed hasher
//! ([`KeyHasher`]) for keys an attacker may choose (addresses, credentials, client
//! and route keys), and fast unkeyed ones ([`FxHasher`], [`PreHashed`]) only where
//! the keys are not chosen by an attacker (inventory client ids, the policy's own
//! path segments) or already are the output of the keyed hash.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

/// Keyed 64-bit hashing of tracked keys: a folded-multiply hash (the construction
/// of `foldhash` and `ahash`'s fallback) with two 64-bit seeds drawn per process from
/// the standard library's random source. A few nanoseconds per key; an attacker who
/// does not know the seeds cannot aim collisions at one entry, and every table is
/// bounded anyway.
#[derive(Clone)]
pub struct KeyHasher {
    seed: u64,
    mul: u64,
    /// Two more seeds for [`KeyHasher::hash_bytes`]'s second lane.
    lane: [u64; 2],
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seeds are what keeps collisions out of an attacker's reach.
        f.write_str("KeyHasher { .. }")
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

const PI: [u64; 2] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl KeyHasher {
    /// A hasher with fresh random seeds.
    pub fn new() -> Self {
        let r = RandomState::new();
        Self {
            seed: r.hash_one(PI[0]),
            mul: r.hash_one(PI[1]) | 1,
            lane: [r.hash_one(PI[0] ^ PI[1]), r.hash_one(PI[0].rotate_left(32))],
        }
    }

    /// A hasher with fixed seeds: reproducible hashes (tests, simulations). Do not
    /// use it where attackers choose keys.
    pub fn with_seeds(seed: u64, mul: u64) -> Self {
        Self {
            seed,
            mul: mul | 1,
            lane: [seed ^ PI[1], mul.rotate_left(32) ^ PI[0]],
        }
    }

    /// The 64-bit hash of `key`.
    #[inline]
    pub fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hash_tagged(0, key)
    }

    /// The hash of `key` in the namespace `tag` (so one map can hold several kinds
    /// of key without them meeting).
    #[inline]
    pub fn hash_tagged<K: Hash + ?Sized>(&self, tag: u8, key: &K) -> u64 {
        let mut h = Fold {
            acc: self.seed ^ u64::from(tag),
            mul: self.mul,
        };
        key.hash(&mut h);
        fold(h.acc ^ self.mul.rotate_left(29), self.seed ^ PI[1])
    }

    /// The hash of a byte string, for long ones (a bearer token): two independent
    /// lanes of 32 bytes per round, where [`KeyHasher::hash`] folds 8 bytes at a
    /// time. Not equal to `hash(bytes)`.
    pub fn hash_bytes(&self, bytes: &[u8]) -> u64 {
        let word = |b: &[u8], at: usize| {
            let mut w = [0u8; 8];
            if let Some(src) = b.get(at..at + 8) {
                w.copy_from_slice(src);
            }
            u64::from_le_bytes(w)
        };
        let (s0, s1, [s2, s3]) = (self.seed, self.mul, self.lane);
        let (mut a, mut b) = (s0 ^ bytes.len() as u64, s1);
        let mut blocks = bytes.chunks_exact(32);
        for block in &mut blocks {
            a = fold(a ^ word(block, 0), s2 ^ word(block, 8));
            b = fold(b ^ word(block, 16), s3 ^ word(block, 24));
        }
        let mut tail = [0u8; 32];
        let rest = blocks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        a = fold(a ^ word(&tail, 0), s2 ^ word(&tail, 8));
        b = fold(b ^ word(&tail, 16), s3 ^ word(&tail, 24));
        fold(a ^ s3, b ^ s2)
    }
}

struct Fold {
    acc: u64,
    mul: u64,
}

impl Hasher for Fold {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.acc = fold(self.acc ^ u64::from_le_bytes(w), self.mul);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.acc = fold(
                self.acc ^ u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59),
                self.mul,
            );
        }
    }
    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n) | 0x100);
    }
    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n) | 0x1_0000);
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n) | 0x1_0000_0000);
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.acc = fold(self.acc ^ n, self.mul);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.acc
    }
}

#[doc(hidden)]
/// The FxHash function, a word at a time: several times faster than SipHash on
/// short keys such as client ids and path segments.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

#[doc(hidden)]
/// `BuildHasher` of [`FxHasher`].
pub type FxBuildHasher = BuildHasherDefault<FxHasher>;

#[doc(hidden)]
/// A pass-through hasher for keys that already are (keyed) 64-bit hashes: `write_u64`
/// keeps the value as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[doc(hidden)]
/// `BuildHasher` of [`PreHashed`].
pub type PreHashedBuildHasher = BuildHasherDefault<PreHashed>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    #[test]
    fn fx_spreads_short_keys_and_prehashed_keeps_u64() {
        let fx = FxBuildHasher::default();
        let a = fx.hash_one("orders");
        assert_ne!(a, fx.hash_one("orderz"));
        assert_eq!(a, fx.hash_one("orders"));
        let mut h = PreHashed::default();
        0xdead_beef_u64.hash(&mut h);
        assert_eq!(h.finish(), 0xdead_beef);
    }

    #[test]
    fn the_keyed_byte_hash_depends_on_every_byte_the_length_and_the_seeds() {
        let hasher = KeyHasher::with_seeds(1, 2);
        let base = vec![7u8; 100];
        let h = hasher.hash_bytes(&base);
        for i in 0..base.len() {
            let mut b = base.clone();
            b[i] ^= 0x40;
            assert_ne!(hasher.hash_bytes(&b), h, "byte {i}");
        }
        assert_ne!(hasher.hash_bytes(&base[..99]), h);
        let mut zero_padded = base[..99].to_vec();
        zero_padded.push(0);
        assert_ne!(hasher.hash_bytes(&zero_padded), hasher.hash_bytes(&base[..99]));
        assert_ne!(KeyHasher::with_seeds(1, 3).hash_bytes(&base), h);
        assert_ne!(
            KeyHasher::new().hash_bytes(&base),
            KeyHasher::new().hash_bytes(&base)
        );
        // Structured keys: tags are namespaces, field boundaries count.
        assert_ne!(hasher.hash_tagged(1, "a"), hasher.hash_tagged(2, "a"));
        assert_ne!(hasher.hash(&("ab", "c")), hasher.hash(&("a", "bc")));
        assert_eq!(format!("{hasher:?}"), "KeyHasher { .. }");
    }
}
