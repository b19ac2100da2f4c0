//! A throw-away token issuer for examples and local development (feature `demo`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::jwt::Issuer;
use crate::keys::KeySet;

/// A demo authorization server: an ES256 key generated at start, its JWKS, and
/// RFC 9068 access tokens for any client id and scopes.
///
/// **Not for production**: the key lives in memory, anyone holding the
/// `DemoIssuer` can mint tokens, and nothing authenticates the clients it mints
/// for. It exists so that an example can print a working `curl` command.
///
/// ```
/// use std::time::Duration;
/// use nhi_guard_identity::DemoIssuer;
///
/// let demo = DemoIssuer::new("http://127.0.0.1:8080", "orders-api").unwrap();
/// // Serve this at /.well-known/jwks.json, or configure the issuer directly:
/// let jwks: serde_json::Value = serde_json::from_str(&demo.jwks_json()).unwrap();
/// assert_eq!(jwks["keys"][0]["alg"], "ES256");
/// let issuer = demo.issuer(); // static keys, audience "orders-api", typ at+jwt
/// let token = demo.mint("inventory-sync", "orders:read", Duration::from_secs(300));
/// assert_eq!(token.split('.').count(), 3);
/// # let _ = issuer;
/// ```
pub struct DemoIssuer {
    iss: Arc<str>,
    audience: Arc<str>,
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl fmt::Debug for DemoIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoIssuer")
            .field("iss", &self.iss)
            .field("audience", &self.audience)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The demo issuer could not generate its key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("demo issuer: {0}")]
pub struct DemoError(String);

impl DemoIssuer {
    /// Generates a fresh P-256 key for issuer `iss` minting tokens for `audience`.
    ///
    /// # Errors
    /// When the key cannot be generated.
    pub fn new(iss: impl Into<Arc<str>>, audience: impl Into<Arc<str>>) -> Result<Self, DemoError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| DemoError("key generation failed".into()))?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|_| DemoError("key export failed".into()))?;
        let public = pair.public_key().as_ref();
        if public.len() != 65 {
            return Err(DemoError("unexpected public key encoding".into()));
        }
        let x = URL_SAFE_NO_PAD.encode(&public[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&public[33..65]);
        let kid = URL_SAFE_NO_PAD.encode(&crate::sha256(public)[..12]);
        let jwk =
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid, "x": x, "y": y});
        Ok(Self {
            iss: iss.into(),
            audience: audience.into(),
            kid,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        })
    }

    /// The issuer identifier (`iss`).
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// The JWKS document to serve (`{"keys":[...]}`).
    pub fn jwks_json(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }

    /// The key set, for [`Issuer::static_keys`].
    pub fn key_set(&self) -> KeySet {
        KeySet::from_jwks_value(&json!({ "keys": [self.jwk] }))
            .map(|(set, _)| set)
            .unwrap_or_default()
    }

    /// An [`Issuer`] trusting this demo issuer's key for its audience.
    pub fn issuer(&self) -> Issuer {
        Issuer::new(self.iss.clone())
            .audience(self.audience.clone())
            .algorithms([Algorithm::ES256])
            .static_keys(self.key_set())
    }

    /// Mints an RFC 9068 access token for `client_id` with space-separated
    /// `scopes`, valid for `ttl` from now.
    pub fn mint(&self, client_id: &str, scopes: &str, ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.mint_claims(&json!({
            "iss": &*self.iss,
            "aud": &*self.audience,
            "sub": client_id,
            "client_id": client_id,
            "scope": scopes,
            "iat": now,
            "exp": now + ttl.as_secs(),
            "jti": URL_SAFE_NO_PAD.encode(&crate::sha256(format!("{client_id}{now}{}", nanos()).as_bytes())[..12]),
        }))
    }

    /// Signs arbitrary claims with the demo key (header `typ: at+jwt`, this key's
    /// `kid`). For tests of claim handling.
    pub fn mint_claims(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap_or_default()
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}
