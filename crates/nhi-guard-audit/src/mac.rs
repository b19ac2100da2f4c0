//! Authenticated checkpoints: HMAC-SHA-256 (RFC 2104) under a key the writer
//! holds, so that someone who can write the log file but not read the key cannot
//! cut its end and append a checkpoint of their own that the verifier accepts.
//!
//! A checkpoint's `unmapped.chain.mac` is `hmac-sha256:` and the lower-case hex of
//! the HMAC, under the key, of the text
//! `nhi-guard-checkpoint-v1\n{prev_sha256}\n{seq}\n{requests}\n{dropped_total}\n{sampled_out_total}\n{final}`:
//! `prev_sha256` binds it to every record before it, the rest to what it claims.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::chain::hex;
use crate::error::ConfigError;

const BLOCK: usize = 64;
/// The prefix of a checkpoint's `mac`.
pub(crate) const MAC_PREFIX: &str = "hmac-sha256:";

/// The secret that authenticates checkpoints: at least 32 bytes. Its `Debug` shows
/// only its length.
#[derive(Clone)]
pub struct CheckpointKey(Box<[u8]>);

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointKey({} bytes, redacted)", self.0.len())
    }
}

impl CheckpointKey {
    /// A key of `bytes`.
    ///
    /// # Errors
    /// [`ConfigError`] for `checkpoint_key` when shorter than 32 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        let bytes = bytes.into();
        if bytes.len() < 32 {
            return Err(ConfigError::new(
                "audit",
                "checkpoint_key",
                format!("is {} bytes; an HMAC-SHA-256 key needs at least 32", bytes.len()),
            ));
        }
        Ok(Self(bytes.into_boxed_slice()))
    }

    /// The key in a file (its bytes, without a final newline), such as one made
    /// with `head -c 32 /dev/urandom | base64 > audit.key`.
    ///
    /// # Errors
    /// [`ConfigError`] when the file cannot be read or holds fewer than 32 bytes.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let mut bytes = std::fs::read(path)
            .map_err(|e| ConfigError::new("audit", "checkpoint_key", format!("{}: {e}", path.display())))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Self::new(bytes)
    }

    fn hmac(&self, message: &[u8]) -> [u8; 32] {
        let mut key = [0u8; BLOCK];
        if self.0.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            key[..self.0.len()].copy_from_slice(&self.0);
        }
        let pad = |byte: u8| key.map(|k| k ^ byte);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }
}

/// What a checkpoint claims, in the order the MAC covers it.
pub(crate) struct Claims<'a> {
    pub(crate) prev_sha256: &'a str,
    pub(crate) seq: u64,
    pub(crate) requests: u64,
    pub(crate) dropped_total: u64,
    pub(crate) sampled_out_total: u64,
    pub(crate) is_final: bool,
}

/// The `mac` of a checkpoint (see the module docs).
pub(crate) fn checkpoint_mac(key: &CheckpointKey, c: &Claims<'_>) -> String {
    let text = format!(
        "nhi-guard-checkpoint-v1\n{}\n{}\n{}\n{}\n{}\n{}",
        c.prev_sha256, c.seq, c.requests, c.dropped_total, c.sampled_out_total, c.is_final
    );
    format!("{MAC_PREFIX}{}", hex(&key.hmac(text.as_bytes())))
}

/// Compares two MACs in time that does not depend on where they differ.
pub(crate) fn same_mac(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 4231 test case 6 (a key longer than the block) and 2 (a short key, here
    /// padded through `hmac` directly).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let key = CheckpointKey::new(vec![0xaa; 131]).unwrap();
        assert_eq!(
            hex(&key.hmac(b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let short = CheckpointKey(b"Jefe".to_vec().into_boxed_slice());
        assert_eq!(
            hex(&short.hmac(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn short_keys_are_refused_and_never_shown() {
        assert!(CheckpointKey::new(vec![1; 31]).is_err());
        let key = CheckpointKey::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        assert_eq!(format!("{key:?}"), "CheckpointKey(32 bytes, redacted)");
        assert!(same_mac("hmac-sha256:ab", "hmac-sha256:ab"));
        assert!(!same_mac("hmac-sha256:ab", "hmac-sha256:ac"));
    }
}
