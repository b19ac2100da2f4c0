//! Shared test support: signing keys of each type, token minting with arbitrary
//! headers, an inventory, and a service that reports the principal it sees.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use nhi_guard_core::registry::{ClientRecord, ClientStatus, InMemoryRegistry, Inventory};
use nhi_guard_core::{Principal, ScopeSet, SecurityContext};
use serde_json::{Value, json};

pub const ISS: &str = "https://issuer.test";
pub const AUD: &str = "orders-api";

pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    fn from_encoding(alg: Algorithm, kid: &str, encoding: EncodingKey) -> Self {
        let jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        let mut jwk = serde_json::to_value(jwk).unwrap();
        jwk["kid"] = json!(kid);
        Self {
            alg,
            kid: kid.into(),
            encoding,
            jwk,
        }
    }

    pub fn rs256(kid: &str) -> Self {
        Self::rsa(
            kid,
            Algorithm::RS256,
            include_bytes!("../../testdata/rsa2048.pem"),
        )
    }

    pub fn rsa(kid: &str, alg: Algorithm, pem: &[u8]) -> Self {
        Self::from_encoding(alg, kid, EncodingKey::from_rsa_pem(pem).unwrap())
    }

    pub fn es256(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        Self::from_encoding(Algorithm::ES256, kid, EncodingKey::from_ec_der(der.as_ref()))
    }

    pub fn ed25519(kid: &str) -> Self {
        use aws_lc_rs::signature::KeyPair as _;
        let pair = Ed25519KeyPair::generate().unwrap();
        let der = pair.to_pkcs8().unwrap();
        let x = b64(pair.public_key().as_ref());
        Self {
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            encoding: EncodingKey::from_ed_der(der.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": x}),
        }
    }

    /// Signs `claims` under a header built from `alg`, this `kid`, `typ: at+jwt`,
    /// with `extra` members merged in (a `null` removes a member).
    pub fn sign_with(&self, extra: Value, claims: &Value) -> String {
        let mut header = json!({"alg": alg_name(self.alg), "typ": "at+jwt", "kid": self.kid});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                if v.is_null() {
                    header.as_object_mut().unwrap().remove(&k);
                } else {
                    header[k] = v;
                }
            }
        }
        sign_raw(&header, claims, &self.encoding, self.alg)
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(json!({}), claims)
    }
}

pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::PS256 => "PS256",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        _ => "RS512",
    }
}

pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims of a valid RFC 9068 token for `client` with `scope`, issued now,
/// expiring in 5 minutes.
pub fn claims(client: &str, scope: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": ISS, "aud": AUD, "sub": client, "client_id": client,
        "scope": scope, "iat": now, "exp": now + 300, "jti": "t-1"
    })
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(86_400 * n)
}

/// `svc-a` (active, ceiling orders:read orders:write), `svc-suspended`,
/// `svc-expired`, `svc-net` (only 10.0.0.0/8), `svc-key` (API key
/// `nhik_test_5e3b1f0a9c`), `svc-spiffe` (spiffe://example.org/ns/prod/sa/worker).
pub fn registry() -> InMemoryRegistry {
    registry_listing(&[])
}

/// The clients of [`registry`], each listing `issuers` (required when a layer
/// trusts several issuers).
pub fn registry_listing(issuers: &[&str]) -> InMemoryRegistry {
    let future = SystemTime::now() + days(90);
    let past = SystemTime::now() - days(1);
    let scopes = ScopeSet::parse("orders:read orders:write").unwrap();
    let rec = |id: &str, exp| {
        issuers.iter().fold(
            ClientRecord::builder(id, "team@example.com", "tests", exp).scopes(scopes.clone()),
            |b, iss| b.issuer(*iss),
        )
    };
    let inventory = Inventory::builder()
        .client(rec("svc-a", future).build().unwrap())
        .client(
            rec("svc-suspended", future)
                .status(ClientStatus::Suspended)
                .build()
                .unwrap(),
        )
        .client(rec("svc-expired", past).build().unwrap())
        .client(
            rec("svc-net", future)
                .network("10.0.0.0/8".parse().unwrap())
                .build()
                .unwrap(),
        )
        .client(
            rec("svc-key", future)
                .api_key("nhik_test_5e3b1f0a9c")
                .build()
                .unwrap(),
        )
        .client(
            rec("svc-spiffe", future)
                .spiffe_id("spiffe://example.org/ns/prod/sa/worker")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    InMemoryRegistry::new(inventory)
}

/// A handler answering `client_id scopes` of the principal it finds (both in the
/// extensions and in the context), or `anonymous`.
pub async fn echo(req: Request<String>) -> Result<Response<String>, Infallible> {
    let ext = req.extensions().get::<Principal>().cloned();
    let ctx = req
        .extensions()
        .get::<SecurityContext>()
        .and_then(SecurityContext::principal);
    let body = match (ext, ctx) {
        (Some(p), Some(c)) => {
            assert_eq!(p.client_id(), c.client_id());
            format!("{} {}", p.client_id(), p.scopes())
        }
        (None, None) => "anonymous".to_owned(),
        _ => "mismatch".to_owned(),
    };
    Ok(Response::new(body))
}

pub async fn body_string<B>(body: B) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub fn bearer(token: &str) -> Request<String> {
    Request::get("/orders")
        .header("authorization", format!("Bearer {token}"))
        .body(String::new())
        .unwrap()
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}
