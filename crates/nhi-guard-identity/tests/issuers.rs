//! Several issuers without cross-issuer impersonation: a token is accepted for a
//! client only from an issuer the client lists (`issuers` in the inventory); with
//! several issuers every client must list its own, at build time and on every
//! inventory swap; with one issuer, inventories without `issuers` work unchanged.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::routing::get;
use common::*;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use nhi_guard_core::clock::SystemClock;
use nhi_guard_core::context::ContextState;
use nhi_guard_core::registry::{
    ApiKeyHash, ClientRecord, ClientRegistry, InMemoryRegistry, Inventory, InventoryRequirement, Tier,
};
use nhi_guard_core::{Principal, ScopeSet, SecurityContext};
use nhi_guard_identity::{IdentityLayer, Issuer, JwksConfig, KeySet, RemoteKeys};
use nhi_guard_testkit::temp::TempDir;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};

const ISS_A: &str = ISS; // "https://issuer.test"
const ISS_B: &str = "https://other-issuer.test";

struct Keys {
    a: TestKey,
    b: TestKey,
}

fn keys() -> Keys {
    Keys {
        a: TestKey::es256("a-1"),
        b: TestKey::es256("b-1"),
    }
}

fn key_set(key: &TestKey) -> KeySet {
    KeySet::from_jwks(jwks(&[key]).to_string().as_bytes()).unwrap().0
}

fn issuer(iss: &str, key: &TestKey) -> Issuer {
    Issuer::new(iss)
        .audience(AUD)
        .algorithms([Algorithm::ES256])
        .static_keys(key_set(key))
}

fn record(id: &str, issuers: &[&str]) -> ClientRecord {
    let b = ClientRecord::builder(id, "team@example.com", "tests", SystemTime::now() + days(90))
        .scopes(ScopeSet::parse("orders:read").unwrap());
    issuers.iter().fold(b, |b, iss| b.issuer(*iss)).build().unwrap()
}

/// `svc-a` lists issuer A, `svc-b` issuer B, `svc-ab` both; `svc-key` lists A
/// and has the API key `nhik_issuers_test`.
fn inventory() -> Inventory {
    Inventory::builder()
        .client(record("svc-a", &[ISS_A]))
        .client(record("svc-b", &[ISS_B]))
        .client(record("svc-ab", &[ISS_B, ISS_A]))
        .client(
            ClientRecord::builder(
                "svc-key",
                "team@example.com",
                "tests",
                SystemTime::now() + days(90),
            )
            .issuer(ISS_A)
            .api_key("nhik_issuers_test")
            .build()
            .unwrap(),
        )
        .build()
        .unwrap()
}

fn two_issuers(registry: impl ClientRegistry, k: &Keys) -> IdentityLayer {
    IdentityLayer::builder(registry)
        .issuer(issuer(ISS_A, &k.a))
        .issuer(issuer(ISS_B, &k.b))
        .realm("orders")
        .build()
        .unwrap()
}

fn token(key: &TestKey, iss: &str, client: &str) -> String {
    let mut c = claims(client, "orders:read");
    c["iss"] = json!(iss);
    key.sign(&c)
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
    let body = body_string(res.into_body()).await;
    Outcome {
        status,
        headers,
        body,
        state: ctx.snapshot(),
    }
}

#[track_caller]
fn assert_accepted(out: &Outcome, client: &str, iss: &str) {
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(out.body, format!("{client} orders:read"));
    let p = out.state.principal.as_ref().unwrap();
    assert_eq!(p.client_id().as_str(), client);
    // The issuer the token came from is on the principal.
    assert_eq!(p.issuer_name(), Some(iss));
}

/// 401 `invalid_token` with `client_issuer_mismatch`, recorded in the context,
/// and nothing in the answer says which issuers the client lists.
#[track_caller]
fn assert_issuer_mismatch(out: &Outcome) {
    assert_eq!(out.status, StatusCode::UNAUTHORIZED, "{}", out.body);
    let challenge = out.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(r#"Bearer realm="orders", error="invalid_token""#),
        "{challenge}"
    );
    let problem: Value = serde_json::from_str(&out.body).unwrap();
    assert_eq!(problem["reason"], "client_issuer_mismatch", "{problem}");
    assert_eq!(
        problem["detail"],
        "The access token's issuer may not issue tokens for this client"
    );
    for iss in [ISS_A, ISS_B, "issuer.test"] {
        assert!(!out.body.contains(iss), "{iss} in {}", out.body);
        assert!(!challenge.contains(iss), "{challenge}");
    }
    assert_eq!(out.state.identity_failure, Some("client_issuer_mismatch"));
    assert!(out.state.principal.is_none());
}

#[tokio::test]
async fn a_token_is_accepted_only_from_an_issuer_its_client_lists() {
    let k = keys();
    let l = two_issuers(InMemoryRegistry::new(inventory()), &k);

    assert_accepted(
        &send(&l, bearer(&token(&k.a, ISS_A, "svc-a"))).await,
        "svc-a",
        ISS_A,
    );
    assert_accepted(
        &send(&l, bearer(&token(&k.b, ISS_B, "svc-b"))).await,
        "svc-b",
        ISS_B,
    );
    assert_accepted(
        &send(&l, bearer(&token(&k.a, ISS_A, "svc-ab"))).await,
        "svc-ab",
        ISS_A,
    );
    assert_accepted(
        &send(&l, bearer(&token(&k.b, ISS_B, "svc-ab"))).await,
        "svc-ab",
        ISS_B,
    );

    // Issuer B mints a valid token (its own key, its own `iss`) naming A's client.
    let forged = token(&k.b, ISS_B, "svc-a");
    assert_issuer_mismatch(&send(&l, bearer(&forged)).await);
    // Also the second time, when the verified token comes from the cache.
    assert_issuer_mismatch(&send(&l, bearer(&forged)).await);
    assert_issuer_mismatch(&send(&l, bearer(&token(&k.a, ISS_A, "svc-b"))).await);

    // gRPC callers get UNAUTHENTICATED.
    let mut req = bearer(&forged);
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let out = send(&l, req).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_eq!(out.headers["grpc-status"], "16");
    assert_eq!(out.state.identity_failure, Some("client_issuer_mismatch"));
}

#[tokio::test]
async fn api_keys_do_not_involve_an_issuer() {
    let k = keys();
    let l = two_issuers(InMemoryRegistry::new(inventory()), &k);
    let req = Request::get("/orders")
        .header("x-api-key", "nhik_issuers_test")
        .body(String::new())
        .unwrap();
    let out = send(&l, req).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(out.body, "svc-key ");
    assert_eq!(out.state.principal.unwrap().issuer_name(), None);
}

#[test]
fn a_client_without_issuers_under_two_issuers_fails_the_build_naming_it() {
    let k = keys();
    let inventory = Inventory::builder()
        .client(record("svc-a", &[ISS_A]))
        .client(record("legacy-batch", &[]))
        .build()
        .unwrap();
    let err = IdentityLayer::builder(InMemoryRegistry::new(inventory))
        .issuer(issuer(ISS_A, &k.a))
        .issuer(issuer(ISS_B, &k.b))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "registry");
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "identity: `registry`: client `legacy-batch` ([[client]] entry 2), field `issuers`: missing"
        ),
        "{msg}"
    );
    assert!(msg.contains(ISS_A) && msg.contains(ISS_B), "{msg}");

    // Without bearer tokens the issuers are never consulted: no requirement.
    let inventory = Inventory::builder()
        .client(record("legacy-batch", &[]))
        .build()
        .unwrap();
    let registry = Arc::new(InMemoryRegistry::new(inventory));
    IdentityLayer::builder(registry.clone())
        .issuer(issuer(ISS_A, &k.a))
        .issuer(issuer(ISS_B, &k.b))
        .order([nhi_guard_identity::Credential::ApiKey])
        .build()
        .unwrap();
    assert!(registry.requirements().is_empty());
}

fn client_toml(id: &str, issuers: Option<&str>) -> String {
    let mut s = format!(
        "[[client]]\nid = \"{id}\"\nowner = \"team@example.com\"\npurpose = \"tests\"\n\
         expires = \"2099-01-01T00:00:00Z\"\nscopes = [\"orders:read\"]\n"
    );
    if let Some(iss) = issuers {
        s.push_str(&format!("issuers = [\"{iss}\"]\n"));
    }
    s
}

#[tokio::test]
async fn a_reload_that_breaks_the_requirement_fails_and_keeps_the_inventory() {
    let k = keys();
    let file = TempDir::unique("nhi-guard-identity-issuers").file("clients.toml");
    std::fs::write(&file, client_toml("svc-a", Some(ISS_A))).unwrap();
    let registry = Arc::new(InMemoryRegistry::from_toml_file(&*file).unwrap());
    // The layer registers the requirement with the registry it is given.
    let l = two_issuers(registry.clone(), &k);
    assert_eq!(
        registry.requirements(),
        vec![InventoryRequirement::trusted_issuers([ISS_A, ISS_B])]
    );
    let token_a = token(&k.a, ISS_A, "svc-a");
    assert_accepted(&send(&l, bearer(&token_a)).await, "svc-a", ISS_A);

    // A new client without `issuers` (what SIGHUP in the gateway reloads).
    std::fs::write(
        &file,
        format!(
            "{}{}",
            client_toml("svc-a", Some(ISS_A)),
            client_toml("svc-new", None)
        ),
    )
    .unwrap();
    let err = registry.reload_from_file(&*file).unwrap_err();
    assert_eq!(err.client_id(), Some("svc-new"));
    assert_eq!(err.field(), Some("issuers"));
    assert!(
        err.to_string()
            .starts_with("client `svc-new` ([[client]] entry 2), field `issuers`: missing"),
        "{err}"
    );
    // The current inventory stays and keeps serving.
    assert!(registry.client("svc-new").is_none());
    assert_accepted(&send(&l, bearer(&token_a)).await, "svc-a", ISS_A);
    let out = send(&l, bearer(&token(&k.b, ISS_B, "svc-new"))).await;
    assert_eq!(out.state.identity_failure, Some("client_unknown"));
    // The same through `replace`.
    let err = registry
        .replace(
            Inventory::builder()
                .client(record("svc-new", &[]))
                .build()
                .unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.client_id(), Some("svc-new"));
    assert!(registry.client("svc-a").is_some());

    // Once the client lists its issuer, the reload goes through.
    std::fs::write(
        &file,
        format!(
            "{}{}",
            client_toml("svc-a", Some(ISS_A)),
            client_toml("svc-new", Some(ISS_B))
        ),
    )
    .unwrap();
    registry.reload_from_file(&*file).unwrap();
    assert_accepted(
        &send(&l, bearer(&token(&k.b, ISS_B, "svc-new"))).await,
        "svc-new",
        ISS_B,
    );
    assert_issuer_mismatch(&send(&l, bearer(&token(&k.a, ISS_A, "svc-new"))).await);
}

#[tokio::test]
async fn one_issuer_serves_inventories_without_issuers_unchanged() {
    let k = keys();
    // The shared test inventory lists no issuers anywhere.
    let l = IdentityLayer::builder(registry())
        .issuer(issuer(ISS_A, &k.a))
        .realm("orders")
        .build()
        .unwrap();
    let out = send(&l, bearer(&token(&k.a, ISS_A, "svc-a"))).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert_eq!(out.state.principal.unwrap().issuer_name(), Some(ISS_A));
}

#[tokio::test]
async fn a_client_that_lists_issuers_refuses_others_also_under_one_issuer() {
    let k = keys();
    let inventory = Inventory::builder()
        .client(record("svc-a", &[ISS_A]))
        .client(record("svc-b", &[ISS_B]))
        .client(record("svc-plain", &[]))
        .build()
        .unwrap();
    let l = IdentityLayer::builder(InMemoryRegistry::new(inventory))
        .issuer(issuer(ISS_A, &k.a))
        .realm("orders")
        .build()
        .unwrap();
    assert_accepted(
        &send(&l, bearer(&token(&k.a, ISS_A, "svc-a"))).await,
        "svc-a",
        ISS_A,
    );
    assert_accepted(
        &send(&l, bearer(&token(&k.a, ISS_A, "svc-plain"))).await,
        "svc-plain",
        ISS_A,
    );
    // svc-b lists only an issuer this layer does not trust: its tokens from the
    // trusted issuer are refused (the build logs a warning, it does not fail).
    assert_issuer_mismatch(&send(&l, bearer(&token(&k.a, ISS_A, "svc-b"))).await);
}

#[tokio::test]
async fn issuers_are_compared_exactly_a_trailing_slash_is_another_issuer() {
    let k = keys();
    let slash = format!("{ISS_A}/");
    let inventory = Inventory::builder()
        .client(record("svc-slash", &[&slash]))
        .build()
        .unwrap();
    let l = IdentityLayer::builder(InMemoryRegistry::new(inventory))
        .issuer(issuer(ISS_A, &k.a))
        .realm("orders")
        .build()
        .unwrap();
    assert_issuer_mismatch(&send(&l, bearer(&token(&k.a, ISS_A, "svc-slash"))).await);
    // A token whose `iss` carries the slash is not from the configured issuer.
    let out = send(&l, bearer(&token(&k.a, &slash, "svc-slash"))).await;
    assert_eq!(out.state.identity_failure, Some("token_issuer_unknown"));
}

/// A registry written by an application, that swaps its clients without checking
/// requirements (it keeps the trait's default `require`).
#[derive(Debug, Default)]
struct AppRegistry(Mutex<Vec<Arc<ClientRecord>>>);

impl ClientRegistry for AppRegistry {
    fn client(&self, id: &str) -> Option<Arc<ClientRecord>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.id().as_str() == id)
            .cloned()
    }
    fn client_by_api_key(&self, _: &ApiKeyHash) -> Option<Arc<ClientRecord>> {
        None
    }
    fn client_by_spiffe_id(&self, _: &str) -> Option<Arc<ClientRecord>> {
        None
    }
    fn tier(&self, _: &str) -> Option<Tier> {
        None
    }
    fn clients(&self) -> Vec<Arc<ClientRecord>> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_custom_registry_is_checked_at_build_and_at_request_time() {
    let k = keys();
    // At build time, through the trait's default `require`.
    let bad = AppRegistry::default();
    bad.0.lock().unwrap().push(Arc::new(record("legacy", &[])));
    let err = IdentityLayer::builder(bad)
        .issuer(issuer(ISS_A, &k.a))
        .issuer(issuer(ISS_B, &k.b))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "registry");
    assert!(err.to_string().contains("client `legacy`"), "{err}");

    // A client without issuers added later is refused at request time, for
    // tokens of either issuer.
    let registry = Arc::new(AppRegistry::default());
    registry
        .0
        .lock()
        .unwrap()
        .push(Arc::new(record("svc-a", &[ISS_A])));
    let l = two_issuers(registry.clone(), &k);
    assert_accepted(
        &send(&l, bearer(&token(&k.a, ISS_A, "svc-a"))).await,
        "svc-a",
        ISS_A,
    );
    registry.0.lock().unwrap().push(Arc::new(record("legacy", &[])));
    assert_issuer_mismatch(&send(&l, bearer(&token(&k.a, ISS_A, "legacy"))).await);
    assert_issuer_mismatch(&send(&l, bearer(&token(&k.b, ISS_B, "legacy"))).await);
}

/// The whole path over real HTTP: two issuers publishing their JWKS on loopback
/// servers, an axum app behind the layer, a hyper client.
#[tokio::test]
async fn over_http_with_two_remote_issuers() {
    let k = keys();
    let mut issuers = Vec::new();
    for (iss, key) in [(ISS_A, &k.a), (ISS_B, &k.b)] {
        let doc = jwks(&[key]).to_string();
        let app = Router::new().route("/jwks.json", get(move || async move { doc }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let remote = RemoteKeys::new(&url, JwksConfig::default()).unwrap();
        remote.refresh().await.unwrap();
        issuers.push(
            Issuer::new(iss)
                .audience(AUD)
                .algorithms([Algorithm::ES256])
                .remote_keys(remote),
        );
    }
    let mut builder = IdentityLayer::builder(InMemoryRegistry::new(inventory()));
    for issuer in issuers {
        builder = builder.issuer(issuer);
    }
    let layer = builder.build().unwrap();
    let app = Router::new()
        .route(
            "/orders",
            get(|axum::Extension(p): axum::Extension<Principal>| async move {
                format!("{} via {}", p.client_id(), p.issuer_name().unwrap_or("-"))
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let call = |token: String| {
        let req = Request::get(format!("{base}/orders"))
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())
            .unwrap();
        let fut = client.request(req);
        async move {
            let res = fut.await.unwrap();
            let status = res.status();
            let challenge = res
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, challenge, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, _, body) = call(token(&k.a, ISS_A, "svc-a")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "svc-a via https://issuer.test")
    );
    let (status, _, body) = call(token(&k.b, ISS_B, "svc-ab")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "svc-ab via https://other-issuer.test")
    );
    let (status, challenge, body) = call(token(&k.b, ISS_B, "svc-a")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.unwrap().contains(r#"error="invalid_token""#), "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["reason"], "client_issuer_mismatch");
}
