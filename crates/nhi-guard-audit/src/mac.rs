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
    format!("{MAC_PREFIX}{}", hex(&key.hmac(claims_text(c).as_bytes())))
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

/// How the writer authenticates checkpoints: an HMAC key, an Ed25519 signer
/// (feature `ed25519`), both, or neither.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckpointAuth {
    pub(crate) key: Option<CheckpointKey>,
    #[cfg(feature = "ed25519")]
    pub(crate) signer: Option<std::sync::Arc<CheckpointSigner>>,
}

impl CheckpointAuth {
    /// The checkpoint's `mac`, with a key.
    pub(crate) fn mac(&self, c: &Claims<'_>) -> Option<String> {
        self.key.as_ref().map(|key| checkpoint_mac(key, c))
    }

    /// The checkpoint's `sig`, with a signer.
    #[allow(
        clippy::unused_self,
        reason = "without the ed25519 feature there is never a signature"
    )]
    pub(crate) fn sig(&self, c: &Claims<'_>) -> Option<String> {
        #[cfg(feature = "ed25519")]
        {
            self.signer.as_ref().map(|s| s.sign(c))
        }
        #[cfg(not(feature = "ed25519"))]
        {
            let _ = c;
            None
        }
    }
}

/// The text a checkpoint's MAC or signature covers (see the module docs).
pub(crate) fn claims_text(c: &Claims<'_>) -> String {
    format!(
        "nhi-guard-checkpoint-v1\n{}\n{}\n{}\n{}\n{}\n{}",
        c.prev_sha256, c.seq, c.requests, c.dropped_total, c.sampled_out_total, c.is_final
    )
}

/// Ed25519 checkpoint signatures (feature `ed25519`): the writer signs with the
/// private key, verifiers need only the public key.
#[cfg(feature = "ed25519")]
mod ed25519 {
    use std::fmt;
    use std::path::Path;

    use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
    use base64::Engine as _;

    use super::{Claims, claims_text};
    use crate::chain::hex;
    use crate::error::ConfigError;

    /// The prefix of a checkpoint's `sig`.
    pub(crate) const SIG_PREFIX: &str = "ed25519:";
    /// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the
    /// 32 key bytes.
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];

    fn error(message: impl Into<String>) -> ConfigError {
        ConfigError::new("audit", "checkpoint_signer", message)
    }

    /// The DER inside a PEM block labelled `label`.
    fn pem(text: &str, label: &str) -> Option<Vec<u8>> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let body = text.split_once(&begin)?.1.split_once(&end)?.0;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        base64::engine::general_purpose::STANDARD.decode(b64).ok()
    }

    /// The private key that signs checkpoints. Its `Debug` shows only the public key.
    pub struct CheckpointSigner(Ed25519KeyPair);

    impl fmt::Debug for CheckpointSigner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "CheckpointSigner(public {})", self.public_key().hex())
        }
    }

    impl CheckpointSigner {
        /// A new random key pair (store [`CheckpointSigner::to_pkcs8_pem`] to keep it).
        ///
        /// # Errors
        /// The platform's random source failed.
        pub fn generate() -> Result<Self, ConfigError> {
            Ed25519KeyPair::generate()
                .map(Self)
                .map_err(|e| error(e.to_string()))
        }

        /// The key in a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`, as
        /// `openssl genpkey -algorithm ed25519` writes it).
        ///
        /// # Errors
        /// [`ConfigError`] when the file cannot be read or holds no Ed25519 key.
        pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
            let path = path.as_ref();
            let text =
                std::fs::read_to_string(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
            let der = pem(&text, "PRIVATE KEY")
                .ok_or_else(|| error(format!("{}: no PRIVATE KEY PEM block", path.display())))?;
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map(Self)
                .map_err(|e| error(format!("{}: not an Ed25519 key: {e}", path.display())))
        }

        /// The key as PKCS#8 PEM.
        ///
        /// # Errors
        /// The key cannot be serialised.
        pub fn to_pkcs8_pem(&self) -> Result<String, ConfigError> {
            let der = self.0.to_pkcs8().map_err(|e| error(e.to_string()))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            Ok(format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                lines.join("\n")
            ))
        }

        /// The public key, for verifiers.
        pub fn public_key(&self) -> CheckpointPublicKey {
            let mut key = [0u8; 32];
            key.copy_from_slice(self.0.public_key().as_ref());
            CheckpointPublicKey(key)
        }

        pub(crate) fn sign(&self, c: &Claims<'_>) -> String {
            format!(
                "{SIG_PREFIX}{}",
                hex(self.0.sign(claims_text(c).as_bytes()).as_ref())
            )
        }
    }

    /// The public key that verifies checkpoint signatures.
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub struct CheckpointPublicKey([u8; 32]);

    impl fmt::Debug for CheckpointPublicKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "CheckpointPublicKey({})", self.hex())
        }
    }

    impl CheckpointPublicKey {
        /// The key from a file: an SPKI PEM block (`-----BEGIN PUBLIC KEY-----`, as
        /// `openssl pkey -pubout` writes it) or the 64 hex digits of its 32 bytes.
        ///
        /// # Errors
        /// [`ConfigError`] when the file cannot be read or holds no Ed25519 key.
        pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
            let path = path.as_ref();
            let text =
                std::fs::read_to_string(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
            Self::parse(&text).ok_or_else(|| error(format!("{}: not an Ed25519 public key", path.display())))
        }

        /// The key from PEM or hex text.
        pub fn parse(text: &str) -> Option<Self> {
            let bytes = match pem(text, "PUBLIC KEY") {
                Some(der) => der.strip_prefix(SPKI_PREFIX.as_slice())?.to_vec(),
                None => {
                    let t = text.trim();
                    (t.len() == 64)
                        .then(|| {
                            (0..32)
                                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
                                .collect::<Option<Vec<u8>>>()
                        })
                        .flatten()?
                }
            };
            Some(Self(bytes.try_into().ok()?))
        }

        /// The key as 64 lower-case hex digits.
        pub fn hex(&self) -> String {
            hex(&self.0)
        }

        /// The key as an SPKI PEM block.
        pub fn to_pem(&self) -> String {
            let der: Vec<u8> = SPKI_PREFIX.iter().chain(self.0.iter()).copied().collect();
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            )
        }

        pub(crate) fn verifies(&self, c: &Claims<'_>, sig: &str) -> bool {
            let Some(hexsig) = sig.strip_prefix(SIG_PREFIX) else {
                return false;
            };
            if hexsig.len() != 128 {
                return false;
            }
            let Some(bytes) = (0..64)
                .map(|i| u8::from_str_radix(hexsig.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
            else {
                return false;
            };
            UnparsedPublicKey::new(&ED25519, &self.0)
                .verify(claims_text(c).as_bytes(), &bytes)
                .is_ok()
        }
    }
}

#[cfg(feature = "ed25519")]
pub use ed25519::{CheckpointPublicKey, CheckpointSigner};
