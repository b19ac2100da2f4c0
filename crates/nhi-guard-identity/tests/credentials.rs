//! API keys, mTLS client certificates (SPIFFE X.509-SVIDs generated with rcgen),
//! RFC 8705 certificate-bound tokens, and the credential order.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use http::{HeaderMap, Request, StatusCode};
use nhi_guard_core::clock::SystemClock;
use nhi_guard_core::context::ContextState;
use nhi_guard_core::{CredentialFingerprint, CredentialInfo, IdentityKind, SecurityContext};
use nhi_guard_identity::mtls::thumbprint;
use nhi_guard_identity::{
    Algorithm, Credential, IdentityLayer, IdentityLayerBuilder, Issuer, KeySet, PeerCertificates,
};
use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer as CaIssuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;
use tower::{Layer, ServiceExt, service_fn};

const KEY: &str = "nhik_test_5e3b1f0a9c";
const SPIFFE: &str = "spiffe://example.org/ns/prod/sa/worker";

struct Ca {
    issuer: CaIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        Self {
            issuer: CaIssuer::new(params, key),
        }
    }

    /// A leaf with these URI SANs; `ca` makes it (wrongly) a CA certificate.
    fn leaf(&self, uris: &[&str], ca: bool) -> Vec<u8> {
        self.leaf_named(uris, ca, None)
    }

    fn leaf_named(&self, uris: &[&str], ca: bool, cn: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(cn) = cn {
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &self.issuer).unwrap().der().to_vec()
    }
}

struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
    state: ContextState,
}

async fn send(layer: &IdentityLayer, mut req: Request<String>) -> Outcome {
    let ctx = SecurityContext::new(None, &SystemClock);
    req.extensions_mut().insert(ctx.clone());
    let res = layer.layer(service_fn(echo)).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    Outcome {
        status,
        headers,
        body: body_string(res.into_body()).await,
        state: ctx.snapshot(),
    }
}

fn base() -> IdentityLayerBuilder {
    IdentityLayer::builder(registry())
}

fn with_cert(mut req: Request<String>, der: Vec<u8>) -> Request<String> {
    req.extensions_mut().insert(PeerCertificates::new([der]).unwrap());
    req
}

fn get() -> Request<String> {
    Request::get("/").body(String::new()).unwrap()
}

#[tokio::test]
async fn api_key_in_header_and_in_authorization() {
    let l = base().build().unwrap();
    let req = Request::get("/")
        .header("x-api-key", KEY)
        .body(String::new())
        .unwrap();
    let out = send(&l, req).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.body, "svc-key orders:read orders:write");
    let p = out.state.principal.unwrap();
    assert_eq!(p.kind(), IdentityKind::ApiKey);
    match p.credential() {
        CredentialInfo::ApiKey { prefix } => {
            assert_eq!(&**prefix, "nhik_tes");
            assert!(prefix.len() < KEY.len() / 2 + 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        out.state.credential_fingerprint,
        Some(CredentialFingerprint::of(KEY.as_bytes()))
    );

    let req = Request::get("/")
        .header("authorization", format!("ApiKey {KEY}"))
        .body(String::new())
        .unwrap();
    assert_eq!(send(&l, req).await.body, "svc-key orders:read orders:write");
}

#[tokio::test]
async fn api_key_header_name_is_configurable() {
    let l = base().api_key_header("x-partner-key").build().unwrap();
    let req = Request::get("/")
        .header("x-partner-key", KEY)
        .body(String::new())
        .unwrap();
    assert_eq!(send(&l, req).await.status, StatusCode::OK);
    let req = Request::get("/")
        .header("x-api-key", KEY)
        .body(String::new())
        .unwrap();
    assert_eq!(send(&l, req).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_api_key_is_refused_without_echoing_it() {
    let l = base().build().unwrap();
    let wrong = "nhik_test_0000000000";
    let req = Request::get("/")
        .header("x-api-key", wrong)
        .body(String::new())
        .unwrap();
    let out = send(&l, req).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert!(
        out.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(out.state.identity_failure, Some("api_key_unknown"));
    assert_eq!(out.state.credential_kind, Some(IdentityKind::ApiKey));
    assert_eq!(
        out.state.credential_fingerprint,
        Some(CredentialFingerprint::of(wrong.as_bytes()))
    );
    assert!(!out.body.contains(wrong));
    assert!(!format!("{:?}", out.state).contains(wrong));
}

#[tokio::test]
async fn two_api_keys_are_an_invalid_request() {
    let l = base().build().unwrap();
    let req = Request::get("/")
        .header("x-api-key", KEY)
        .header("authorization", format!("ApiKey {KEY}"))
        .body(String::new())
        .unwrap();
    let out = send(&l, req).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(out.state.identity_failure, Some("multiple_api_keys"));
}

#[tokio::test]
async fn spiffe_workload_certificate_maps_to_its_client() {
    let ca = Ca::new();
    let leaf = ca.leaf(&[SPIFFE], false);
    let l = base().build().unwrap();
    let out = send(&l, with_cert(get(), leaf.clone())).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(out.body, "svc-spiffe orders:read orders:write");
    let p = out.state.principal.unwrap();
    assert_eq!(p.kind(), IdentityKind::WorkloadCertificate);
    assert_eq!(p.subject_name(), SPIFFE);
    match p.credential() {
        CredentialInfo::Certificate {
            thumbprint: t,
            spiffe_id,
        } => {
            assert_eq!(&**t, thumbprint(&leaf));
            assert_eq!(spiffe_id.as_deref(), Some(SPIFFE));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn certificates_breaking_x509_svid_rules_are_refused() {
    let ca = Ca::new();
    let l = base().build().unwrap();
    for (leaf, reason) in [
        (ca.leaf(&[SPIFFE], true), "certificate_is_ca"),
        (
            ca.leaf(&[SPIFFE, "spiffe://example.org/ns/prod/sa/other"], false),
            "certificate_spiffe_id_count",
        ),
        (ca.leaf(&[], false), "certificate_spiffe_id_count"),
        (
            ca.leaf(&["https://example.org/workload"], false),
            "certificate_spiffe_id_invalid",
        ),
        (
            ca.leaf(&["spiffe://example.org/ns/prod/sa/unknown"], false),
            "certificate_unknown",
        ),
        (b"not a certificate".to_vec(), "certificate_malformed"),
    ] {
        let out = send(&l, with_cert(get(), leaf.clone())).await;
        assert_eq!(out.status, StatusCode::UNAUTHORIZED, "{reason}");
        assert_eq!(out.state.identity_failure, Some(reason));
        assert_eq!(out.state.credential_kind, Some(IdentityKind::WorkloadCertificate));
        assert_eq!(
            out.state.credential_fingerprint,
            Some(CredentialFingerprint::of(&leaf))
        );
    }
}

fn with_issuer(key: &TestKey) -> IdentityLayerBuilder {
    let (set, _) = KeySet::from_jwks(jwks(&[key]).to_string().as_bytes()).unwrap();
    base().issuer(
        Issuer::new(ISS)
            .audience(AUD)
            .algorithms([Algorithm::ES256])
            .static_keys(set),
    )
}

#[tokio::test]
async fn certificate_bound_token_needs_its_certificate() {
    let ca = Ca::new();
    let leaf = ca.leaf(&[SPIFFE], false);
    let other = ca.leaf(&["spiffe://example.org/ns/prod/sa/other"], false);
    let key = TestKey::es256("k1");
    let l = with_issuer(&key).build().unwrap();
    let mut c = claims("svc-a", "orders:read");
    c["cnf"] = json!({"x5t#S256": thumbprint(&leaf)});
    let token = key.sign(&c);

    let out = send(&l, with_cert(bearer(&token), leaf)).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(
        out.body, "svc-a orders:read",
        "the token decides, the certificate binds"
    );
    match out.state.principal.unwrap().credential() {
        CredentialInfo::Jwt {
            certificate_bound, ..
        } => assert!(certificate_bound),
        other => panic!("{other:?}"),
    }

    let out = send(&l, bearer(&token)).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.state.identity_failure, Some("token_certificate_required"));

    let out = send(&l, with_cert(bearer(&token), other)).await;
    assert_eq!(out.status, StatusCode::UNAUTHORIZED);
    assert_eq!(out.state.identity_failure, Some("token_certificate_mismatch"));
}

#[tokio::test]
async fn configured_order_decides_between_credentials() {
    let ca = Ca::new();
    let leaf = ca.leaf(&[SPIFFE], false);
    let key = TestKey::es256("k1");
    let token = key.sign(&claims("svc-a", "orders:read"));
    let req = || {
        let r = Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .header("x-api-key", KEY)
            .body(String::new())
            .unwrap();
        with_cert(r, leaf.clone())
    };
    let default_order = with_issuer(&key).build().unwrap();
    assert_eq!(send(&default_order, req()).await.body, "svc-a orders:read");
    let key_first = with_issuer(&key)
        .order([
            Credential::ApiKey,
            Credential::Bearer,
            Credential::ClientCertificate,
        ])
        .build()
        .unwrap();
    assert_eq!(
        send(&key_first, req()).await.body,
        "svc-key orders:read orders:write"
    );
    let cert_first = with_issuer(&key)
        .order([Credential::ClientCertificate, Credential::Bearer])
        .build()
        .unwrap();
    assert_eq!(
        send(&cert_first, req()).await.body,
        "svc-spiffe orders:read orders:write"
    );

    // A credential kind left out of the order is not accepted.
    let certs_only = with_issuer(&key)
        .order([Credential::ClientCertificate])
        .build()
        .unwrap();
    let r = Request::get("/")
        .header("x-api-key", KEY)
        .body(String::new())
        .unwrap();
    let out = send(&certs_only, r).await;
    assert_eq!(out.status, StatusCode::BAD_REQUEST);
    assert_eq!(out.state.identity_failure, Some("credential_not_accepted"));
}

#[tokio::test]
async fn certificate_without_spiffe_id_maps_through_the_configured_mapper() {
    let ca = Ca::new();
    let l = base()
        .certificate_mapper(|cert| cert.common_name.clone())
        .build()
        .unwrap();
    let leaf = ca.leaf_named(&[], false, Some("svc-a"));
    let out = send(&l, with_cert(get(), leaf.clone())).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(out.body, "svc-a orders:read orders:write");
    let p = out.state.principal.unwrap();
    assert_eq!(p.subject_name(), "CN=svc-a");
    match p.credential() {
        CredentialInfo::Certificate {
            thumbprint: t,
            spiffe_id,
        } => {
            assert_eq!(&**t, thumbprint(&leaf));
            assert_eq!(spiffe_id, &None);
        }
        other => panic!("{other:?}"),
    }

    let stranger = ca.leaf_named(&[], false, Some("svc-nobody"));
    let out = send(&l, with_cert(get(), stranger)).await;
    assert_eq!(out.state.identity_failure, Some("certificate_unknown"));

    // SPIFFE certificates keep following the X.509-SVID rules.
    let out = send(&l, with_cert(get(), ca.leaf(&[SPIFFE], false))).await;
    assert_eq!(out.body, "svc-spiffe orders:read orders:write");
    let out = send(&l, with_cert(get(), ca.leaf_named(&[], true, Some("svc-a")))).await;
    assert_eq!(out.state.identity_failure, Some("certificate_is_ca"));
}
