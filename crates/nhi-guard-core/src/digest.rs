//! SHA-256 of presented credentials, remembered across requests.
//!
//! A machine client sends the same bearer token (or API key) on every request
//! until it expires: hashing its 800 bytes again each time is most of what a
//! cached verification costs. [`credential_sha256`] keeps the digests of recently
//! seen credentials in a fixed table of slots (1024, direct-mapped by a keyed fast
//! hash). A hit is decided by comparing the credential's bytes with the copy kept
//! in the slot, never by the fast hash alone: two credentials share a digest only
//! when they are equal. A miss hashes with SHA-256 and takes the slot.
//!
//! What this costs: the table holds copies of up to 1024 credentials (of at most
//! [`MAX_REMEMBERED`] bytes each) in process memory, as any verified-token cache
//! keyed by the token does. They are never logged or formatted, and they are
//! compared without an early exit, so the time a lookup takes does not say how
//! many leading bytes a presented credential shares with a remembered one.

use std::hash::{BuildHasher, RandomState};
use std::sync::{OnceLock, RwLock};

use sha2::{Digest, Sha256};

/// Credentials longer than this are hashed every time, not remembered.
pub const MAX_REMEMBERED: usize = 8 * 1024;

const SLOTS: usize = 1024;

/// The SHA-256 of `credential`, from the process-wide table when the same bytes
/// were hashed recently.
pub fn credential_sha256(credential: &[u8]) -> [u8; 32] {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table::new(SLOTS)).sha256(credential)
}

struct Slot {
    credential: Box<[u8]>,
    sha256: [u8; 32],
}

/// Direct-mapped slots behind read-write locks: concurrent requests with the same
/// credential read one slot together.
pub(crate) struct Table {
    slots: Box<[RwLock<Option<Slot>>]>,
    seeds: [u64; 4],
}

impl Table {
    pub(crate) fn new(slots: usize) -> Self {
        let r = RandomState::new();
        Self {
            slots: (0..slots.max(1)).map(|_| RwLock::new(None)).collect(),
            seeds: [
                r.hash_one(1u64),
                r.hash_one(2u64),
                r.hash_one(3u64),
                r.hash_one(4u64),
            ],
        }
    }

    pub(crate) fn sha256(&self, credential: &[u8]) -> [u8; 32] {
        if credential.len() > MAX_REMEMBERED {
            return Sha256::digest(credential).into();
        }
        let index = (fast_hash(&self.seeds, credential) % self.slots.len() as u64) as usize;
        let Some(slot) = self.slots.get(index) else {
            return Sha256::digest(credential).into();
        };
        // A poisoned slot only ever holds a complete entry: the writer below
        // builds it before taking the lock.
        let seen = slot.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = seen.as_ref()
            && same_bytes(&s.credential, credential)
        {
            return s.sha256;
        }
        drop(seen);
        let sha256: [u8; 32] = Sha256::digest(credential).into();
        let entry = Slot {
            credential: credential.into(),
            sha256,
        };
        *slot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(entry);
        sha256
    }
}

/// Equality without an early exit on the first differing byte.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A keyed folded-multiply hash (wyhash's construction) over 32 bytes per round in
/// two independent lanes. Only chooses the slot.
fn fast_hash(seeds: &[u64; 4], bytes: &[u8]) -> u64 {
    let word = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        if let Some(src) = b.get(at..at + 8) {
            w.copy_from_slice(src);
        }
        u64::from_le_bytes(w)
    };
    let [s0, s1, s2, s3] = *seeds;
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

/// SHA-256 of `data`: the one implementation the controls use (RustCrypto's
/// `sha2`, with the CPU's SHA extensions when present).
#[inline]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn every_answer_is_the_sha256_of_those_bytes() {
        // Two slots for 200 credentials: most lookups collide and evict, and none
        // may return another credential's digest.
        let table = Table::new(2);
        let creds: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("token-{i}-{}", "x".repeat(i as usize * 7)).into_bytes())
            .collect();
        for round in 0..3 {
            for c in &creds {
                assert_eq!(table.sha256(c), sha(c), "round {round}");
            }
        }
    }

    #[test]
    fn a_remembered_credential_is_answered_from_its_slot() {
        let table = Table::new(8);
        let token = b"eyJhbGciOiJSUzI1NiJ9.payload.signature";
        assert_eq!(table.sha256(token), sha(token));
        let index = (fast_hash(&table.seeds, token) % 8) as usize;
        let slot = table.slots[index].read().unwrap();
        assert_eq!(slot.as_ref().map(|s| &*s.credential), Some(&token[..]));
        drop(slot);
        assert_eq!(table.sha256(token), sha(token));
        // Same length, one byte different: never the remembered digest.
        let mut other = *token;
        other[10] ^= 1;
        assert_eq!(table.sha256(&other), sha(&other));
    }

    #[test]
    fn long_credentials_are_hashed_but_not_kept() {
        let table = Table::new(1);
        let long = vec![b'a'; MAX_REMEMBERED + 1];
        assert_eq!(table.sha256(&long), sha(&long));
        assert!(table.slots[0].read().unwrap().is_none());
        assert_eq!(credential_sha256(b"k"), sha(b"k"));
        assert_eq!(credential_sha256(b""), sha(b""));
    }

    #[test]
    fn the_fast_hash_depends_on_every_byte_and_the_length() {
        let seeds = [1, 2, 3, 4];
        let base = vec![7u8; 100];
        let h = fast_hash(&seeds, &base);
        for i in 0..base.len() {
            let mut b = base.clone();
            b[i] ^= 0x40;
            assert_ne!(fast_hash(&seeds, &b), h, "byte {i}");
        }
        assert_ne!(fast_hash(&seeds, &base[..99]), h);
        let mut zero_padded = base[..99].to_vec();
        zero_padded.push(0);
        assert_ne!(fast_hash(&seeds, &zero_padded), fast_hash(&seeds, &base[..99]));
    }
}
