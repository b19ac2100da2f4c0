//! Property tests: whatever bytes arrive in `Authorization` (or `X-API-Key`), the
//! layer never panics, never authenticates, and answers a 4xx.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use http::{HeaderValue, Request, StatusCode};
use nhi_guard_identity::{Algorithm, IdentityLayer, Issuer, KeySet};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};

fn layer() -> (IdentityLayer, TestKey) {
    let key = TestKey::es256("k1");
    let rsa = TestKey::rs256("r1");
    let (set, _) = KeySet::from_jwks(jwks(&[&key, &rsa]).to_string().as_bytes()).unwrap();
    let l = IdentityLayer::builder(registry())
        .issuer(
            Issuer::new(ISS)
                .audience(AUD)
                .algorithms([Algorithm::ES256, Algorithm::RS256])
                .static_keys(set),
        )
        .build()
        .unwrap();
    (l, key)
}

fn run(
    rt: &tokio::runtime::Runtime,
    l: &IdentityLayer,
    header: &str,
    value: HeaderValue,
) -> (StatusCode, String) {
    rt.block_on(async {
        let req = Request::get("/")
            .header(header, value)
            .body(String::new())
            .unwrap();
        let res = l.layer(service_fn(echo)).oneshot(req).await.unwrap();
        let status = res.status();
        (status, body_string(res.into_body()).await)
    })
}

fn assert_refused(status: StatusCode, body: &str) {
    assert!(status.is_client_error(), "{status} {body}");
    assert!(!body.starts_with("svc-"), "authenticated: {body}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_authorization_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (l, _) = layer();
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            let (status, body) = run(&rt, &l, "authorization", v);
            assert_refused(status, &body);
        }
    }

    #[test]
    fn arbitrary_bearer_tokens(
        scheme in "(?i)bearer|apikey",
        parts in proptest::collection::vec("[A-Za-z0-9_=+/-]{0,120}", 0..5),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (l, _) = layer();
        let value = format!("{scheme} {}", parts.join("."));
        let (status, body) = run(&rt, &l, "authorization", HeaderValue::from_str(&value).unwrap());
        assert_refused(status, &body);
    }

    #[test]
    fn mutated_valid_tokens(index in 0usize..2000, byte in any::<u8>()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (l, key) = layer();
        let token = key.sign(&claims("svc-a", "orders:read"));
        let mut bytes = token.clone().into_bytes();
        let i = index % bytes.len();
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        if let Ok(v) = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &bytes].concat()) {
            let (status, body) = run(&rt, &l, "authorization", v);
            // A change in the last character of a base64url part can leave the
            // decoded bytes equal only through non-canonical trailing bits, which
            // the strict decoder refuses: every mutation must be refused.
            assert_refused(status, &body);
        }
    }

    #[test]
    fn arbitrary_api_keys(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (l, _) = layer();
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            let (status, body) = run(&rt, &l, "x-api-key", v);
            assert_refused(status, &body);
        }
    }
}
