//! JWT bearer tokens through the layer: the happy path, governance, and one test
//! per attack of the issue list.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{HeaderMap, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey};
use nhi_guard_core::address::ClientAddr;
use nhi_guard_core::clock::{ManualClock, SystemClock};
use nhi_guard_core::context::{ContextState, Decision};
use nhi_guard_core::{CredentialFingerprint, IdentityKind, SecurityContext};
use nhi_guard_identity::{IdentityLayer, Issuer, KeySet};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};

struct Keys {
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
    other_issuer: TestKey,
}

fn keys() -> Keys {
    Keys {
        rsa: TestKey::rs256("rsa-1"),
        ec: TestKey::es256("ec-1"),
        ed: TestKey::ed25519("ed-1"),
        other_issuer: TestKey::es256("b-1"),
    }
}

fn key_set(keys: &[&TestKey]) -> KeySet {
    let (set, skipped) = KeySet::from_jwks(jwks(keys).to_string().as_bytes()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    set
}

fn layer(k: &Keys) -> IdentityLayer {
    layer_with(k, |b| b)
}

fn layer_with(
    k: &Keys,
    f: impl FnOnce(nhi_guard_identity::IdentityLayerBuilder) -> nhi_guard_identity::IdentityLayerBuilder,
) -> IdentityLayer {
    let a = Issuer::new(ISS)
        .audience(AUD)
        .algorithms([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA])
        .static_keys(key_set(&[&k.rsa, &k.ec, &k.ed]));
    let b = Issuer::new("https://other-issuer.test")
        .audience(AUD)
        .algorithms([Algorithm::ES256])
        .static_keys(key_set(&[&k.other_issuer]));
    // Two issuers: every client lists the issuers whose tokens may name it.
    f(
        IdentityLayer::builder(registry_listing(&[ISS, "https://other-issuer.test"]))
            .issuer(a)
            .issuer(b)
            .realm("orders"),
    )
    .build()
    .unwrap()
}

struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    state: ContextState,
}

async fn send_from(layer: &IdentityLayer, mut req: Request<String>, addr: Option<SocketAddr>) -> Outcome {
    let ctx = SecurityContext::new(addr.map(ClientAddr::direct), &SystemClock);
    req.extensions_mut().insert(ctx.clone());
    let res = layer.layer(service_fn(echo)).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = body_string(res.into_body()).await;
    Outcome {
        status,
        headers,
        body,
        state: ctx.snapshot(),
    }
}

async fn send(layer: &IdentityLayer, req: Request<String>) -> Outcome {
    send_from(layer, req, None).await
}

/// Asserts a 401 invalid_token with `reason`, recorded in the context with the
/// token's fingerprint, and that the token is echoed nowhere.
async fn assert_rejected(layer: &IdentityLayer, token: &str, reason: &str) {
    assert_rejected_any(layer, token, &[reason]).await;
}

async fn assert_rejected_any(layer: &IdentityLayer, token: &str, reasons: &[&str]) {
    let out = send(layer, bearer(token)).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED, "{reasons:?}: {}", out.body);
    let challenge = out.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(r#"Bearer realm="orders", error="invalid_token""#),
        "{challenge}"
    );
    let problem: Value = serde_json::from_str(&out.body).unwrap();
    let got = problem["reason"].as_str().unwrap();
    assert!(reasons.contains(&got), "expected {reasons:?}: {problem}");
    assert_eq!(out.state.identity_failure, Some(got));
    assert_eq!(
        out.state.credential_fingerprint,
        Some(CredentialFingerprint::of(token.as_bytes()))
    );
    assert_eq!(out.state.credential_kind, Some(IdentityKind::ServiceAccount));
    assert!(out.state.principal.is_none());
    assert!(matches!(out.state.decision, Decision::Denied(_)));
    let sig = token.rsplit('.').next().unwrap();
    if sig.len() > 8 {
        assert!(!out.body.contains(sig), "the token leaked into the body");
    }
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_set_the_principal() {
    let k = keys();
    let l = layer(&k);
    for key in [&k.rsa, &k.ec, &k.ed] {
        let token = key.sign(&claims("svc-a", "orders:read"));
        let out = send(&l, bearer(&token)).await;
        assert_eq!(out.status, StatusCode::OK, "{:?}: {}", key.alg, out.body);
        assert_eq!(out.body, "svc-a orders:read");
        let p = out.state.principal.unwrap();
        assert_eq!(p.issuer_name(), Some(ISS));
        assert_eq!(p.kind(), IdentityKind::ServiceAccount);
        assert_eq!(out.state.decision, Decision::Allowed);
        assert_eq!(
            out.state.credential_fingerprint,
            Some(CredentialFingerprint::of(token.as_bytes()))
        );
        match p.credential() {
            nhi_guard_core::CredentialInfo::Jwt { kid, jti, .. } => {
                assert_eq!(kid.as_deref(), Some(key.kid.as_str()));
                assert_eq!(jti.as_deref(), Some("t-1"));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_token_issue_time_is_recorded_for_step_up() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    let iat = now_secs() - 30;
    c["iat"] = json!(iat);
    let l = layer(&k);
    let token = k.ec.sign(&c);
    let out = send(&l, bearer(&token)).await;
    assert_eq!(out.status, StatusCode::OK);
    let expected = std::time::UNIX_EPOCH + Duration::from_secs(iat);
    assert_eq!(out.state.credential_issued_at, Some(expected));
    assert_eq!(out.state.principal.unwrap().credential_issued(), Some(expected));
    // Served from the verified-token cache on the second use, and still recorded.
    let out = send(&l, bearer(&token)).await;
    assert_eq!(out.state.credential_issued_at, Some(expected));
}

#[tokio::test]
async fn effective_scopes_are_token_scopes_within_the_ceiling() {
    let k = keys();
    let token = k.ec.sign(&claims("svc-a", "orders:read admin:all"));
    let out = send(&layer(&k), bearer(&token)).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.body, "svc-a orders:read");
}

#[tokio::test]
async fn scheme_is_case_insensitive_and_client_id_falls_back_to_azp_then_sub() {
    let k = keys();
    let l = layer(&k);
    let mut c = claims("ignored", "orders:read");
    c.as_object_mut().unwrap().remove("client_id");
    c["azp"] = json!("svc-a");
    let token = k.ec.sign(&c);
    let req = Request::get("/")
        .header("authorization", format!("bEaReR {token}"))
        .body(String::new())
        .unwrap();
    let out = send(&l, req).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(out.body, "svc-a orders:read");

    let mut c = claims("svc-a", "orders:read");
    c.as_object_mut().unwrap().remove("client_id");
    let out = send(&l, bearer(&k.ec.sign(&c))).await;
    assert_eq!(out.body, "svc-a orders:read");
}

#[tokio::test]
async fn no_credential_gets_a_bare_challenge() {
    let k = keys();
    let out = send(&layer(&k), Request::get("/").body(String::new()).unwrap()).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.headers["www-authenticate"], r#"Bearer realm="orders""#);
    assert_eq!(out.state.identity_failure, Some("credential_missing"));
    assert_eq!(out.state.credential_fingerprint, None);
}

#[tokio::test]
async fn optional_mode_passes_anonymous_requests_but_not_bad_tokens() {
    let k = keys();
    let l = layer_with(&k, |b| b.optional(true));
    let out = send(&l, Request::get("/").body(String::new()).unwrap()).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.body, "anonymous");
    let mut bad = k.ec.sign(&claims("svc-a", "orders:read"));
    bad.push('A');
    let out = send(&l, bearer(&bad)).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn grpc_requests_get_unauthenticated() {
    let k = keys();
    let req = Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .body(String::new())
        .unwrap();
    let out = send(&layer(&k), req).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.headers["grpc-status"], "16");
}

#[tokio::test]
async fn malformed_and_duplicate_credentials_are_invalid_requests() {
    let k = keys();
    let l = layer(&k);
    let token = k.ec.sign(&claims("svc-a", "orders:read"));
    let two = Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {token}x"))
        .body(String::new())
        .unwrap();
    let out = send(&l, two).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert!(
        out.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_request""#)
    );
    assert_eq!(out.state.identity_failure, Some("multiple_authorization_headers"));

    for value in ["Bearer", "Bearer a b", "Basic dXNlcjpwYXNz", "Bearer ä"] {
        let req = Request::get("/")
            .header("authorization", value)
            .body(String::new())
            .unwrap();
        let out = send(&l, req).await;
        assert_eq!(out.status, StatusCode::BAD_REQUEST, "{value}");
    }
}

#[tokio::test]
async fn attack_alg_none() {
    let k = keys();
    let l = layer(&k);
    let c = claims("svc-a", "orders:read");
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": "rsa-1"});
    let unsigned = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(c.to_string().as_bytes())
    );
    assert_rejected(&l, &unsigned, "token_malformed").await;
    let with_sig = format!("{unsigned}AAAA");
    assert_rejected(&l, &with_sig, "token_algorithm_not_allowed").await;
}

#[tokio::test]
async fn attack_hs256_signed_with_the_rsa_public_key() {
    let k = keys();
    let public_pem = {
        // The attacker knows the public key: sign with its bytes as an HMAC secret.
        let n = k.rsa.jwk["n"].as_str().unwrap().to_owned();
        n.into_bytes()
    };
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"});
    let token = sign_raw(
        &header,
        &claims("svc-a", "orders:read"),
        &EncodingKey::from_secret(&public_pem).unwrap(),
        Algorithm::HS256,
    );
    assert_rejected(&layer(&k), &token, "token_algorithm_not_allowed").await;
}

#[tokio::test]
async fn attack_key_of_another_family_under_a_kid() {
    // ES256 header naming the RSA key: the key is bound to RSA.
    let k = keys();
    let token =
        k.ec.sign_with(json!({"kid": "rsa-1"}), &claims("svc-a", "orders:read"));
    assert_rejected(&layer(&k), &token, "token_algorithm_not_allowed").await;
}

#[tokio::test]
async fn attack_jku_x5u_and_embedded_jwk() {
    let k = keys();
    let l = layer(&k);
    let c = claims("svc-a", "orders:read");
    for extra in [
        json!({"jku": "https://attacker.example/jwks.json"}),
        json!({"x5u": "https://attacker.example/cert.pem"}),
        json!({"jwk": k.ec.jwk.clone()}),
        json!({"x5c": ["MIIB"]}),
    ] {
        let token = k.ec.sign_with(extra, &c);
        assert_rejected(&l, &token, "token_untrusted_key_reference").await;
    }
}

#[tokio::test]
async fn attack_unknown_crit() {
    let k = keys();
    let token = k.ec.sign_with(
        json!({"crit": ["urn:x-attack"], "urn:x-attack": true}),
        &claims("svc-a", "orders:read"),
    );
    assert_rejected(&layer(&k), &token, "token_unsupported_critical_header").await;
}

#[tokio::test]
async fn attack_expired() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    c["iat"] = json!(now_secs() - 600);
    c["exp"] = json!(now_secs() - 120);
    assert_rejected(&layer(&k), &k.ec.sign(&c), "token_expired").await;
}

#[tokio::test]
async fn expiry_leeway_is_honoured_and_configurable() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    c["exp"] = json!(now_secs() - 10);
    let token = k.ec.sign(&c);
    let out = send(&layer(&k), bearer(&token)).await;
    assert_eq!(out.status, StatusCode::OK, "within the default 60 s leeway");
}

#[tokio::test]
async fn attack_nbf_in_the_future() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    c["nbf"] = json!(now_secs() + 600);
    assert_rejected(&layer(&k), &k.ec.sign(&c), "token_not_yet_valid").await;
}

#[tokio::test]
async fn iat_in_the_future_and_overlong_lifetime_are_rejected() {
    let k = keys();
    let l = layer(&k);
    let mut c = claims("svc-a", "orders:read");
    c["iat"] = json!(now_secs() + 600);
    c["exp"] = json!(now_secs() + 900);
    assert_rejected(&l, &k.ec.sign(&c), "token_issued_in_future").await;
    let mut c = claims("svc-a", "orders:read");
    c["exp"] = json!(now_secs() + 3 * 86_400);
    assert_rejected(&l, &k.ec.sign(&c), "token_lifetime_too_long").await;
}

#[tokio::test]
async fn attack_wrong_audience() {
    let k = keys();
    let l = layer(&k);
    let mut c = claims("svc-a", "orders:read");
    c["aud"] = json!("billing-api");
    assert_rejected(&l, &k.ec.sign(&c), "token_audience_invalid").await;
    c["aud"] = json!(["billing-api", "orders-api-v2"]);
    assert_rejected(&l, &k.ec.sign(&c), "token_audience_invalid").await;
    c.as_object_mut().unwrap().remove("aud");
    assert_rejected(&l, &k.ec.sign(&c), "token_audience_invalid").await;
    c["aud"] = json!(["billing-api", AUD]);
    assert_eq!(send(&l, bearer(&k.ec.sign(&c))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn attack_wrong_issuer() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    c["iss"] = json!("https://issuer.test/"); // not exact
    assert_rejected(&layer(&k), &k.ec.sign(&c), "token_issuer_unknown").await;
}

#[tokio::test]
async fn attack_missing_exp() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    c.as_object_mut().unwrap().remove("exp");
    assert_rejected(&layer(&k), &k.ec.sign(&c), "token_exp_missing").await;
}

#[tokio::test]
async fn attack_wrong_typ() {
    let k = keys();
    let l = layer(&k);
    let c = claims("svc-a", "orders:read");
    assert_rejected(
        &l,
        &k.ec.sign_with(json!({"typ": "JWT"}), &c),
        "token_type_invalid",
    )
    .await;
    assert_rejected(
        &l,
        &k.ec.sign_with(json!({"typ": null}), &c),
        "token_type_invalid",
    )
    .await;
    let ok = k.ec.sign_with(json!({"typ": "application/at+jwt"}), &c);
    assert_eq!(send(&l, bearer(&ok)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn attack_ecdsa_signature_r_and_s_zero() {
    let k = keys();
    let token = k.ec.sign(&claims("svc-a", "orders:read"));
    let input = token.rsplit_once('.').unwrap().0;
    let forged = format!("{input}.{}", b64(&[0u8; 64]));
    assert_rejected(&layer(&k), &forged, "token_signature_invalid").await;
}

#[tokio::test]
async fn attack_truncated_and_altered_signatures() {
    let k = keys();
    let l = layer(&k);
    for key in [&k.rsa, &k.ec, &k.ed] {
        let token = key.sign(&claims("svc-a", "orders:read"));
        let truncated = &token[..token.len() - 4];
        assert_rejected_any(&l, truncated, &["token_signature_invalid", "token_malformed"]).await;
        let mut altered = token.clone().into_bytes();
        let i = token.rfind('.').unwrap() + 5;
        altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_rejected(&l, &altered, "token_signature_invalid").await;
        // An altered payload with the original signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut c = claims("svc-a", "orders:read orders:write");
        c["jti"] = json!("t-2");
        let payload = b64(c.to_string().as_bytes());
        parts[1] = &payload;
        assert_rejected(&l, &parts.join("."), "token_signature_invalid").await;
    }
}

#[tokio::test]
async fn attack_oversize_token() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    c["padding"] = json!("x".repeat(10_000));
    assert_rejected(&layer(&k), &k.ec.sign(&c), "token_too_large").await;
}

#[tokio::test]
async fn attack_token_of_issuer_a_signed_with_issuer_b_key() {
    let k = keys();
    let l = layer(&k);
    // iss A, kid of B's key: A does not know that kid.
    let token = k.other_issuer.sign(&claims("svc-a", "orders:read"));
    assert_rejected(&l, &token, "token_key_unknown").await;
    // iss A, kid of A's key, but signed by B's key.
    let token = k
        .other_issuer
        .sign_with(json!({"kid": "ec-1"}), &claims("svc-a", "orders:read"));
    assert_rejected(&l, &token, "token_signature_invalid").await;
    // And B's own token is fine (svc-a lists both issuers; tests/issuers.rs has
    // a client that lists one).
    let mut c = claims("svc-a", "orders:read");
    c["iss"] = json!("https://other-issuer.test");
    assert_eq!(
        send(&l, bearer(&k.other_issuer.sign(&c))).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn attack_bound_token_without_its_certificate() {
    let k = keys();
    let mut c = claims("svc-a", "orders:read");
    c["cnf"] = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"});
    assert_rejected(&layer(&k), &k.ec.sign(&c), "token_certificate_required").await;
    let mut c = claims("svc-a", "orders:read");
    c["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    assert_rejected(&layer(&k), &k.ec.sign(&c), "token_binding_unsupported").await;
}

#[tokio::test]
async fn duplicate_claims_make_a_token_malformed() {
    let k = keys();
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "ec-1"});
    let c = claims("svc-a", "orders:read");
    let json_text = c.to_string();
    let dup = format!(
        "{},\"client_id\":\"svc-other\"}}",
        &json_text[..json_text.len() - 1]
    );
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(dup.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k.ec.encoding, Algorithm::ES256).unwrap();
    assert_rejected(&layer(&k), &format!("{input}.{sig}"), "token_malformed").await;
}

#[tokio::test]
async fn valid_token_for_a_suspended_expired_or_unknown_client() {
    let k = keys();
    let l = layer(&k);
    for (client, reason) in [
        ("svc-suspended", "client_suspended"),
        ("svc-expired", "client_expired"),
        ("svc-nobody", "client_unknown"),
    ] {
        assert_rejected(&l, &k.ec.sign(&claims(client, "orders:read")), reason).await;
    }
}

#[tokio::test]
async fn valid_token_for_an_out_of_network_client() {
    let k = keys();
    let l = layer(&k);
    let token = k.ec.sign(&claims("svc-net", "orders:read"));
    let out = send_from(&l, bearer(&token), Some("192.0.2.7:4000".parse().unwrap())).await;
    assert_eq!(out.status, StatusCode::FORBIDDEN);
    assert_eq!(out.state.identity_failure, Some("network_not_allowed"));
    let out = send_from(&l, bearer(&token), Some("10.1.2.3:4000".parse().unwrap())).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.body, "svc-net orders:read");
}

#[tokio::test]
async fn cached_token_is_never_served_past_exp() {
    let k = keys();
    let clock = Arc::new(ManualClock::now());
    let l = layer_with(&k, |b| b.clock(clock.clone()));
    let mut c = claims("svc-a", "orders:read");
    c["exp"] = json!(now_secs() + 30);
    let token = k.ec.sign(&c);
    assert_eq!(send(&l, bearer(&token)).await.status, StatusCode::OK);
    assert_eq!(send(&l, bearer(&token)).await.status, StatusCode::OK);
    clock.advance(Duration::from_secs(40));
    // Past exp, inside leeway: served by full verification, not the cache...
    assert_eq!(send(&l, bearer(&token)).await.status, StatusCode::OK);
    clock.advance(Duration::from_secs(60));
    // ...and past the leeway: refused.
    assert_rejected(&l, &token, "token_expired").await;
}

#[tokio::test]
async fn cached_token_still_checks_governance_every_request() {
    let k = keys();
    let registry = Arc::new(registry());
    let l = IdentityLayer::builder(registry.clone())
        .issuer(
            Issuer::new(ISS)
                .audience(AUD)
                .algorithms([Algorithm::ES256])
                .static_keys(key_set(&[&k.ec])),
        )
        .build()
        .unwrap();
    let token = k.ec.sign(&claims("svc-a", "orders:read"));
    assert_eq!(send(&l, bearer(&token)).await.status, StatusCode::OK);
    // The client is removed from the inventory: the cached token no longer passes.
    registry
        .replace(nhi_guard_core::Inventory::builder().build().unwrap())
        .unwrap();
    let out = send(&l, bearer(&token)).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.state.identity_failure, Some("client_unknown"));
}

/// The principal a cached token was admitted as is kept until the inventory
/// changes: a narrowed ceiling, a suspension and a restored client each show on the
/// very next request, and what depends on the request (the network) is checked on
/// every one. A registry that cannot tell when it changed derives it every time.
#[tokio::test]
async fn a_cached_tokens_principal_follows_the_inventory() {
    use nhi_guard_core::registry::{ClientRecord, ClientRegistry, ClientStatus, Inventory, SharedRegistry};
    let k = keys();
    let record = |scopes: &str, status: ClientStatus| {
        ClientRecord::builder(
            "svc-a",
            "team@example.com",
            "tests",
            std::time::SystemTime::now() + Duration::from_secs(86_400),
        )
        .scopes(nhi_guard_core::ScopeSet::parse(scopes).unwrap())
        .status(status)
        .network("10.0.0.0/8".parse().unwrap())
        .build()
        .unwrap()
    };
    let inventory = |scopes: &str, status| {
        Inventory::builder()
            .client(record(scopes, status))
            .build()
            .unwrap()
    };
    let registry = Arc::new(nhi_guard_core::InMemoryRegistry::new(inventory(
        "orders:read orders:write",
        ClientStatus::Active,
    )));
    /// The same registry, without a generation.
    #[derive(Debug)]
    struct Opaque(Arc<nhi_guard_core::InMemoryRegistry>);
    impl ClientRegistry for Opaque {
        fn client(&self, id: &str) -> Option<Arc<ClientRecord>> {
            self.0.client(id)
        }
        fn client_by_api_key(&self, h: &nhi_guard_core::registry::ApiKeyHash) -> Option<Arc<ClientRecord>> {
            self.0.client_by_api_key(h)
        }
        fn client_by_spiffe_id(&self, id: &str) -> Option<Arc<ClientRecord>> {
            self.0.client_by_spiffe_id(id)
        }
        fn tier(&self, name: &str) -> Option<nhi_guard_core::Tier> {
            self.0.tier(name)
        }
        fn clients(&self) -> Vec<Arc<ClientRecord>> {
            self.0.clients()
        }
    }
    let build = |r: SharedRegistry| {
        IdentityLayer::builder(r)
            .issuer(
                Issuer::new(ISS)
                    .audience(AUD)
                    .algorithms([Algorithm::ES256])
                    .static_keys(key_set(&[&k.ec])),
            )
            .build()
            .unwrap()
    };
    let inside: Option<SocketAddr> = Some("10.1.2.3:4000".parse().unwrap());
    let outside: Option<SocketAddr> = Some("192.0.2.1:4000".parse().unwrap());
    let token = k.ec.sign(&claims("svc-a", "orders:read orders:write"));
    for (name, layer) in [
        ("with a generation", build(registry.clone())),
        ("without one", build(Arc::new(Opaque(registry.clone())))),
    ] {
        registry
            .replace(inventory("orders:read orders:write", ClientStatus::Active))
            .unwrap();
        for _ in 0..2 {
            let out = send_from(&layer, bearer(&token), inside).await;
            assert_eq!(out.body, "svc-a orders:read orders:write", "{name}");
        }
        // The network is the request's: checked with the kept principal too.
        let out = send_from(&layer, bearer(&token), outside).await;
        assert_eq!(out.status, StatusCode::FORBIDDEN, "{name}");
        // A narrower ceiling shows at once.
        registry
            .replace(inventory("orders:read", ClientStatus::Active))
            .unwrap();
        let out = send_from(&layer, bearer(&token), inside).await;
        assert_eq!(out.body, "svc-a orders:read", "{name}");
        // So do a suspension and its end.
        registry
            .replace(inventory("orders:read", ClientStatus::Suspended))
            .unwrap();
        let out = send_from(&layer, bearer(&token), inside).await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(out.state.identity_failure, Some("client_suspended"), "{name}");
        registry
            .replace(inventory("orders:read orders:write", ClientStatus::Active))
            .unwrap();
        let out = send_from(&layer, bearer(&token), inside).await;
        assert_eq!(out.body, "svc-a orders:read orders:write", "{name}");
    }
}

#[test]
fn invalid_configuration_fails_at_build_naming_the_field() {
    let err = IdentityLayer::builder(registry())
        .issuer(Issuer::new(ISS).static_keys(KeySet::empty()))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "issuer");
    assert!(err.to_string().contains("audience"), "{err}");
    let err = IdentityLayer::builder(registry())
        .issuer(
            Issuer::new(ISS)
                .audience(AUD)
                .algorithms([Algorithm::HS256])
                .static_keys(KeySet::empty()),
        )
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("HS256"), "{err}");
    let err = IdentityLayer::builder(registry())
        .issuer(
            Issuer::new(ISS)
                .audience(AUD)
                .leeway(Duration::from_secs(3600))
                .static_keys(KeySet::empty()),
        )
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("leeway"), "{err}");
    let err = IdentityLayer::builder(registry())
        .api_key_header("bad header")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "api_key_header");
    let err = IdentityLayer::builder(registry()).order([]).build().unwrap_err();
    assert_eq!(err.field(), "order");
}

#[test]
fn debug_output_holds_no_secret() {
    let k = keys();
    let l = layer(&k);
    let text = format!("{l:?}");
    assert!(text.contains("issuer.test"));
    assert!(!text.contains(k.ec.jwk["x"].as_str().unwrap()));
}
