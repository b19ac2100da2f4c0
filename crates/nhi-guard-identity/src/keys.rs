//! Verification keys: loading a JWK Set strictly, and verifying a compact JWS with
//! a key bound to its algorithm.

use std::collections::HashMap;

use nhi_guard_core::hash::FxBuildHasher;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// The signature algorithms this crate verifies. Symmetric (`HS*`) algorithms are
/// never accepted: an access token must be verifiable by a party that cannot mint
/// one (RFC 9068 §4), and it closes the RSA / HMAC confusion attack for good.
pub const SUPPORTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A, RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// Parses a JOSE algorithm name into one of the [`SUPPORTED_ALGORITHMS`].
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" | "Ed25519" => Algorithm::EdDSA,
        _ => return None,
    };
    Some(alg)
}

/// The JOSE name of an algorithm.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Okp),
        _ => None,
    }
}

/// One public verification key, bound to the algorithm(s) it may verify.
///
/// An EC or OKP key is bound to the single algorithm of its curve; an RSA key is
/// bound to its `alg` when the JWK names one, otherwise to the RSA family (the
/// issuer's allow-list then narrows it).
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Option<Arc<str>>,
    alg: Option<Algorithm>,
    family: Family,
    key: DecodingKey,
    fingerprint: [u8; 32],
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg.map(algorithm_name))
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// The key id.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm the key is bound to, when it is bound to exactly one.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.alg
    }

    /// Whether this key may verify signatures made with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        match self.alg {
            Some(bound) => bound == alg,
            None => family_of(alg) == Some(self.family),
        }
    }

    /// SHA-256 over the key's type and public components: identifies the key
    /// material independently of its `kid`.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// Parses one public JWK, applying every rule of [`KeySet::from_jwks`].
    ///
    /// # Errors
    /// Why the key is refused (never includes key material).
    pub fn from_jwk(jwk: &Value) -> Result<Self, KeyRejection> {
        let obj = jwk
            .as_object()
            .ok_or(KeyRejection::Malformed("a JWK must be a JSON object"))?;
        let str_field = |name: &'static str| -> Result<Option<&str>, KeyRejection> {
            match obj.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(KeyRejection::Malformed(name)),
            }
        };
        let kty = str_field("kty")?.ok_or(KeyRejection::Malformed("kty"))?;
        let kid = str_field("kid")?.map(Arc::from);
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            if obj.contains_key(private) {
                return Err(if kty == "oct" {
                    KeyRejection::Unsupported("symmetric (oct) keys are never accepted".into())
                } else {
                    KeyRejection::PrivateKeyMaterial
                });
            }
        }
        if let Some(usage) = str_field("use")?
            && usage != "sig"
        {
            return Err(KeyRejection::NotForVerification);
        }
        if let Some(ops) = obj.get("key_ops") {
            let ops = ops.as_array().ok_or(KeyRejection::Malformed("key_ops"))?;
            if !ops.iter().any(|o| o.as_str() == Some("verify")) {
                return Err(KeyRejection::NotForVerification);
            }
        }
        let alg = match str_field("alg")? {
            None => None,
            Some(name) => Some(
                parse_algorithm(name)
                    .ok_or_else(|| KeyRejection::Unsupported(format!("algorithm {name:?}")))?,
            ),
        };
        let b64 = |name: &'static str| -> Result<Vec<u8>, KeyRejection> {
            let text = str_field(name)?.ok_or(KeyRejection::Malformed(name))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| KeyRejection::Malformed(name))
        };
        let mut material = Vec::new();
        let (family, key, alg) = match kty {
            "RSA" => {
                if alg.is_some_and(|a| family_of(a) != Some(Family::Rsa)) {
                    return Err(KeyRejection::AlgorithmMismatch);
                }
                let n = strip_leading_zeros(b64("n")?);
                let e = strip_leading_zeros(b64("e")?);
                let bits = bit_length(&n);
                if bits < MIN_RSA_BITS {
                    return Err(KeyRejection::WeakRsaKey(format!(
                        "modulus of {bits} bits (at least {MIN_RSA_BITS} required)"
                    )));
                }
                // e must be odd and at least 3; e = 1 makes every "signature" valid.
                if e.is_empty() || e.len() > 8 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
                    return Err(KeyRejection::WeakRsaKey(
                        "public exponent must be odd and at least 3".into(),
                    ));
                }
                if has_roca_fingerprint(&n) {
                    return Err(KeyRejection::WeakRsaKey(
                        "modulus has the ROCA (CVE-2017-15361) fingerprint".into(),
                    ));
                }
                material.extend_from_slice(b"RSA");
                material.extend_from_slice(&n);
                material.push(0);
                material.extend_from_slice(&e);
                (Family::Rsa, DecodingKey::from_rsa_raw_components(&n, &e), alg)
            }
            "EC" => {
                let crv = str_field("crv")?.ok_or(KeyRejection::Malformed("crv"))?;
                let (curve_alg, size) = match crv {
                    "P-256" => (Algorithm::ES256, 32),
                    "P-384" => (Algorithm::ES384, 48),
                    other => return Err(KeyRejection::Unsupported(format!("curve {other:?}"))),
                };
                if alg.is_some_and(|a| a != curve_alg) {
                    return Err(KeyRejection::AlgorithmMismatch);
                }
                let x = b64("x")?;
                let y = b64("y")?;
                if x.len() != size || y.len() != size {
                    return Err(KeyRejection::Malformed(
                        "EC coordinates do not match the curve size",
                    ));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                check_ec_point(curve_alg, &point)?;
                material.extend_from_slice(b"EC");
                material.extend_from_slice(&point);
                (Family::Ec, DecodingKey::from_ec_der(&point), Some(curve_alg))
            }
            "OKP" => {
                let crv = str_field("crv")?.ok_or(KeyRejection::Malformed("crv"))?;
                if crv != "Ed25519" {
                    return Err(KeyRejection::Unsupported(format!("curve {crv:?}")));
                }
                if alg.is_some_and(|a| a != Algorithm::EdDSA) {
                    return Err(KeyRejection::AlgorithmMismatch);
                }
                let x = b64("x")?;
                if x.len() != 32 {
                    return Err(KeyRejection::Malformed("Ed25519 public key must be 32 bytes"));
                }
                material.extend_from_slice(b"OKP");
                material.extend_from_slice(&x);
                (Family::Okp, DecodingKey::from_ed_der(&x), Some(Algorithm::EdDSA))
            }
            "oct" => {
                return Err(KeyRejection::Unsupported(
                    "symmetric (oct) keys are never accepted".into(),
                ));
            }
            other => return Err(KeyRejection::Unsupported(format!("key type {other:?}"))),
        };
        Ok(Self {
            kid,
            alg,
            family,
            key,
            fingerprint: crate::sha256(&material),
        })
    }

    /// Verifies `signature` over `message` with `alg`, which must be one the key
    /// accepts.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        if !signature_length_ok(alg, signature.len()) {
            return false;
        }
        let Some(provider) = jsonwebtoken::crypto::CryptoProvider::try_get_default() else {
            tracing::error!(target: "nhi_guard::identity", "no jsonwebtoken crypto provider");
            return false;
        };
        match (provider.verifier_factory)(&alg, &self.key) {
            Ok(verifier) => verifier.verify(message, &signature.to_vec()).is_ok(),
            Err(_) => false,
        }
    }
}

fn signature_length_ok(alg: Algorithm, len: usize) -> bool {
    match alg {
        Algorithm::ES256 => len == 64,
        Algorithm::ES384 => len == 96,
        Algorithm::EdDSA => len == 64,
        _ => len >= MIN_RSA_BITS / 8,
    }
}

fn check_ec_point(alg: Algorithm, point: &[u8]) -> Result<(), KeyRejection> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
    let parsed = match alg {
        Algorithm::ES256 => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).parse(),
        _ => UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).parse(),
    };
    parsed
        .map(|_| ())
        .map_err(|_| KeyRejection::Malformed("the EC point is not on the curve"))
}

/// The ROCA fingerprint (CVE-2017-15361, Infineon RSALib): for each small prime
/// `p` below, a vulnerable modulus lies in the subgroup generated by 65537 modulo
/// `p`. A random modulus passes all 38 tests with negligible probability.
fn has_roca_fingerprint(n: &[u8]) -> bool {
    const PRIMES: [u32; 38] = [
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101,
        103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&p| {
        let residue = n.iter().fold(0u32, |acc, &b| (acc * 256 + u32::from(b)) % p);
        let g = 65_537 % p;
        let mut x = 1u32;
        for _ in 0..p {
            if x == residue {
                return true;
            }
            x = x * g % p;
        }
        false
    })
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(first) => (be.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

/// Why a key of a set was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRejection {
    /// A field is missing or malformed.
    #[error("malformed key: {0}")]
    Malformed(&'static str),
    /// A key type, curve or algorithm this crate does not verify.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The key carries private material (a public key set must not).
    #[error("the key carries private key material")]
    PrivateKeyMaterial,
    /// `use` or `key_ops` forbid signature verification.
    #[error("`use` / `key_ops` do not allow signature verification")]
    NotForVerification,
    /// `alg` does not match the key type or curve.
    #[error("`alg` does not match the key type or curve")]
    AlgorithmMismatch,
    /// An RSA key that is too small or has a weak public exponent.
    #[error("weak RSA key: {0}")]
    WeakRsaKey(String),
    /// Several keys share this `kid`: all of them are dropped.
    #[error("duplicate kid")]
    DuplicateKid,
}

/// A key that was left out of a [`KeySet`], and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Its position in the `keys` array.
    pub index: usize,
    /// Its `kid`, if it had one.
    pub kid: Option<String>,
    /// Why it was skipped.
    pub reason: KeyRejection,
}

/// A JWK Set that could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JWK Set: {0}")]
pub struct KeySetError(pub(crate) String);

/// A validated set of verification keys, looked up by `kid`.
///
/// Loading is strict and per key: a key that is malformed, private, meant for
/// encryption, of an unsupported type, weak (RSA under 2048 bits, exponent 1) or
/// shares its `kid` with another key is skipped (and reported), while the rest of
/// the set stays usable.
///
/// ```
/// use nhi_guard_identity::KeySet;
/// let (set, skipped) = KeySet::from_jwks(br#"{"keys":[
///   {"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
///   {"kty":"oct","kid":"k2","k":"c2VjcmV0"}
/// ]}"#).unwrap();
/// assert_eq!(set.len(), 1);
/// assert_eq!(skipped.len(), 1);
/// assert!(set.get("k1").is_some());
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    // Filled from the issuer's JWKS only: the unkeyed hasher is safe for lookups.
    by_kid: HashMap<Arc<str>, usize, FxBuildHasher>,
}

impl KeySet {
    /// An empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds a set from keys already parsed (for example with
    /// [`VerifyingKey::from_jwk`]). Keys sharing a `kid` are dropped.
    pub fn from_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> (Self, Vec<SkippedKey>) {
        let candidates: Vec<(usize, VerifyingKey)> = keys.into_iter().enumerate().collect();
        Self::assemble(candidates, Vec::new())
    }

    /// Parses a JWK Set document (`{"keys": [...]}`).
    ///
    /// # Errors
    /// When the document is not JSON or has no `keys` array. Individual bad keys
    /// are skipped and returned instead (and logged as warnings).
    pub fn from_jwks(json: &[u8]) -> Result<(Self, Vec<SkippedKey>), KeySetError> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| KeySetError(e.to_string()))?;
        Self::from_jwks_value(&doc)
    }

    /// As [`KeySet::from_jwks`], from parsed JSON.
    ///
    /// # Errors
    /// When `doc` has no `keys` array.
    pub fn from_jwks_value(doc: &Value) -> Result<(Self, Vec<SkippedKey>), KeySetError> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeySetError("a JWK Set must be an object with a \"keys\" array".into()))?;
        let mut candidates = Vec::new();
        let mut skipped = Vec::new();
        for (index, jwk) in keys.iter().enumerate() {
            match VerifyingKey::from_jwk(jwk) {
                Ok(k) => candidates.push((index, k)),
                Err(reason) => skipped.push(SkippedKey {
                    index,
                    kid: jwk.get("kid").and_then(Value::as_str).map(str::to_owned),
                    reason,
                }),
            }
        }
        Ok(Self::assemble(candidates, skipped))
    }

    fn assemble(
        candidates: Vec<(usize, VerifyingKey)>,
        mut skipped: Vec<SkippedKey>,
    ) -> (Self, Vec<SkippedKey>) {
        let mut count: HashMap<Arc<str>, usize> = HashMap::new();
        for (_, k) in &candidates {
            if let Some(kid) = &k.kid {
                *count.entry(kid.clone()).or_default() += 1;
            }
        }
        let mut set = Self::default();
        for (index, k) in candidates {
            if let Some(kid) = &k.kid
                && count.get(kid).copied().unwrap_or(0) > 1
            {
                skipped.push(SkippedKey {
                    index,
                    kid: Some(kid.to_string()),
                    reason: KeyRejection::DuplicateKid,
                });
                continue;
            }
            if let Some(kid) = &k.kid {
                set.by_kid.insert(kid.clone(), set.keys.len());
            }
            set.keys.push(Arc::new(k));
        }
        for s in &skipped {
            tracing::warn!(
                target: "nhi_guard::identity::jwks",
                index = s.index,
                kid = s.kid.as_deref().unwrap_or(""),
                reason = %s.reason,
                "key skipped while loading a key set"
            );
        }
        skipped.sort_by_key(|s| s.index);
        (set, skipped)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_kid.get(kid).map(|&i| &self.keys[i])
    }

    /// All keys.
    pub fn keys(&self) -> &[Arc<VerifyingKey>] {
        &self.keys
    }

    /// Whether a key with this `kid` and this material is in the set.
    pub fn contains(&self, kid: Option<&str>, fingerprint: &[u8; 32]) -> bool {
        match kid {
            Some(kid) => self.get(kid).is_some_and(|k| &k.fingerprint == fingerprint),
            None => self.keys.iter().any(|k| &k.fingerprint == fingerprint),
        }
    }

    /// The key that verifies a token with this header: by `kid`, or, when the
    /// token has none, the only key of the set that accepts `alg`.
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        match kid {
            Some(kid) => match self.get(kid) {
                Some(k) if k.accepts(alg) => KeyLookup::Found(k),
                Some(_) => KeyLookup::WrongAlgorithm,
                None => KeyLookup::UnknownKid,
            },
            None => {
                let mut it = self.keys.iter().filter(|k| k.accepts(alg));
                match (it.next(), it.next()) {
                    (Some(k), None) => KeyLookup::Found(k),
                    (None, _) => KeyLookup::UnknownKid,
                    (Some(_), Some(_)) => KeyLookup::KidRequired,
                }
            }
        }
    }

    /// Verifies a compact JWS against this set alone, with `allowed` algorithms,
    /// applying the header rules of [`JwsHeader::check`]. Returns the header and
    /// the decoded payload. Used for raw JWS (the Wycheproof vectors); access
    /// tokens go through [`crate::Issuer`], which adds the JWT claim rules.
    ///
    /// # Errors
    /// The first rule the JWS breaks.
    pub fn verify_compact(&self, jws: &str, allowed: &[Algorithm]) -> Result<(JwsHeader, Vec<u8>), JwsError> {
        let parts = CompactParts::split(jws)?;
        let header = JwsHeader::decode(parts.header)?;
        let alg = header.check(allowed)?;
        let key = match self.select(header.kid.as_deref(), alg) {
            KeyLookup::Found(k) => k,
            KeyLookup::WrongAlgorithm => return Err(JwsError::KeyAlgorithmMismatch),
            KeyLookup::UnknownKid => return Err(JwsError::UnknownKey),
            KeyLookup::KidRequired => return Err(JwsError::KidRequired),
        };
        let sig = parts.signature()?;
        if !key.verify(alg, parts.signing_input.as_bytes(), &sig) {
            return Err(JwsError::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(parts.payload)
            .map_err(|_| JwsError::Malformed("payload is not base64url"))?;
        Ok((header, payload))
    }
}

pub(crate) enum KeyLookup<'a> {
    Found(&'a Arc<VerifyingKey>),
    WrongAlgorithm,
    UnknownKid,
    KidRequired,
}

/// The three parts of a compact JWS, still encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompactParts<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signing_input: &'a str,
    pub(crate) signature: &'a str,
}

impl<'a> CompactParts<'a> {
    pub(crate) fn split(token: &'a str) -> Result<Self, JwsError> {
        let mut it = token.splitn(4, '.');
        let (Some(header), Some(payload), Some(signature), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(JwsError::Malformed(
                "not a compact JWS (three dot-separated parts)",
            ));
        };
        if header.is_empty() || signature.is_empty() {
            return Err(JwsError::Malformed("empty header or signature"));
        }
        let signing_input = &token[..header.len() + 1 + payload.len()];
        Ok(Self {
            header,
            payload,
            signing_input,
            signature,
        })
    }

    pub(crate) fn signature(&self) -> Result<Vec<u8>, JwsError> {
        URL_SAFE_NO_PAD
            .decode(self.signature)
            .map_err(|_| JwsError::Malformed("signature is not base64url"))
    }
}

/// The protected header of a JWS, as far as verification cares.
#[derive(Debug, Clone, Deserialize)]
pub struct JwsHeader {
    /// `alg`.
    pub alg: String,
    /// `kid`: only ever a lookup key into the configured keys.
    #[serde(default)]
    pub kid: Option<String>,
    /// `typ`.
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    jku: Option<Value>,
    #[serde(default)]
    x5u: Option<Value>,
    #[serde(default)]
    jwk: Option<Value>,
    #[serde(default)]
    x5c: Option<Value>,
    #[serde(default)]
    b64: Option<Value>,
    #[serde(default)]
    zip: Option<Value>,
    #[serde(default)]
    enc: Option<Value>,
}

impl JwsHeader {
    pub(crate) fn decode(encoded: &str) -> Result<Self, JwsError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| JwsError::Malformed("header is not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| JwsError::Malformed("header is not a JSON object"))
    }

    /// RFC 8725 header rules: `alg` in `allowed` (never `none`, never `HS*`), no
    /// `crit` (no extension is understood), no key references or embedded keys
    /// (`jku`, `x5u`, `jwk`, `x5c`), no unencoded payload (`b64`), no JWE fields.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn check(&self, allowed: &[Algorithm]) -> Result<Algorithm, JwsError> {
        if self.crit.is_some() {
            return Err(JwsError::UnsupportedCritical);
        }
        if self.jku.is_some() || self.x5u.is_some() || self.jwk.is_some() || self.x5c.is_some() {
            return Err(JwsError::UntrustedKeyReference);
        }
        if self.b64.is_some() || self.zip.is_some() || self.enc.is_some() {
            return Err(JwsError::Malformed(
                "unsupported header parameter (b64, zip or enc)",
            ));
        }
        let alg = parse_algorithm(&self.alg).ok_or(JwsError::AlgorithmNotAllowed)?;
        if !allowed.contains(&alg) {
            return Err(JwsError::AlgorithmNotAllowed);
        }
        Ok(alg)
    }
}

/// Why a JWS was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// Structure or encoding is wrong.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is `none`, symmetric, unknown or not allowed for the issuer.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// A `crit` header was present (no extension is understood).
    #[error("unsupported critical header")]
    UnsupportedCritical,
    /// `jku`, `x5u`, `jwk` or `x5c` was present.
    #[error("untrusted key reference in header")]
    UntrustedKeyReference,
    /// No key with this `kid`.
    #[error("unknown key")]
    UnknownKey,
    /// The token has no `kid` and several keys could verify it.
    #[error("kid required")]
    KidRequired,
    /// The key with this `kid` is bound to another algorithm.
    #[error("key bound to another algorithm")]
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}
