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

use crate::hash::KeyHasher;
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
    hasher: KeyHasher,
}

impl Table {
    pub(crate) fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1)).map(|_| RwLock::new(None)).collect(),
            hasher: KeyHasher::new(),
        }
    }

    pub(crate) fn sha256(&self, credential: &[u8]) -> [u8; 32] {
        if credential.len() > MAX_REMEMBERED {
            return Sha256::digest(credential).into();
        }
        let index = (self.hasher.hash_bytes(credential) % self.slots.len() as u64) as usize;
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

/// SHA-256 of `data`: the one implementation the controls use (RustCrypto's
/// `sha2`, with the CPU's SHA extensions when present).
#[inline]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
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
        let index = (table.hasher.hash_bytes(token) % 8) as usize;
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
}
