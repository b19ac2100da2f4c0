//! API keys as the inventory holds them: their SHA-256 and their dates.

use std::fmt;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// The SHA-256 of an issued API key. The inventory holds only these.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// Hashes a raw key.
    pub fn of_key(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Wraps a digest.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// Parses `sha256:<64 hex digits>`.
    ///
    /// # Errors
    /// A message saying what is wrong with the text (which is not a secret).
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{s:?} must start with \"sha256:\""))?;
        if hex.len() != 64 {
            return Err(format!(
                "{s:?} must have 64 hex digits after \"sha256:\", found {}",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(format!("{s:?} has a character that is not a hex digit")),
            }
        }
        Ok(Self(out))
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ApiKeyHash(sha256:{:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// When an API key was issued and when it must be rotated (both optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ApiKeyDates {
    /// When it was issued: with a maximum key age ([`InventoryBuilder::max_key_age`]),
    /// a key older than that is refused.
    ///
    /// [`InventoryBuilder::max_key_age`]: super::InventoryBuilder::max_key_age
    pub created: Option<SystemTime>,
    /// When it must be rotated: past it, requests still pass and are flagged.
    pub rotate_by: Option<SystemTime>,
}

impl ApiKeyDates {
    /// Dates of a key.
    pub fn new(created: Option<SystemTime>, rotate_by: Option<SystemTime>) -> Self {
        Self { created, rotate_by }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of `abc` (FIPS 180-2, appendix B.1).
    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn hashes_display_and_parse_back() {
        let hash = ApiKeyHash::of_key(b"abc");
        assert_eq!(hash.to_string(), ABC);
        assert_eq!(ApiKeyHash::parse(ABC), Ok(hash));
        assert_eq!(
            ApiKeyHash::parse(&ABC.to_uppercase().replace("SHA256:", "sha256:")),
            Ok(hash)
        );
        assert_eq!(ApiKeyHash::from_digest(*hash.as_bytes()), hash);
        assert_eq!(hash.as_bytes()[..4], [0xba, 0x78, 0x16, 0xbf]);
        // Debug shows a prefix only.
        assert_eq!(format!("{hash:?}"), "ApiKeyHash(sha256:ba7816bf…)");
    }

    #[test]
    fn malformed_hashes_say_what_is_wrong() {
        let err = |s: &str| ApiKeyHash::parse(s).expect_err("malformed");
        assert_eq!(err("ba7816bf"), r#""ba7816bf" must start with "sha256:""#);
        assert_eq!(
            err("sha256:abc"),
            r#""sha256:abc" must have 64 hex digits after "sha256:", found 3"#
        );
        let bad = format!("sha256:{}", "g".repeat(64));
        assert_eq!(
            err(&bad),
            format!("{bad:?} has a character that is not a hex digit")
        );
    }
}
