//! Several issuers through the whole stack (`NhiGuard::builder`) in front of an
//! axum app on 127.0.0.1:0, called over HTTP: a token of issuer B naming issuer
//! A's client is refused (401 `invalid_token`, `client_issuer_mismatch`) and
//! audited as such; the stack refuses to build over an inventory with a client
//! that lists no issuer, and the registry refuses such an inventory later.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nhi_guard::audit::{AuditEntry, AuditLayer, AuditWriter, ChannelSink, RecordKind};
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory};
use nhi_guard::identity::{DemoIssuer, IdentityLayer};
use nhi_guard::scope::{Policy, Require, ScopeLayer};
use nhi_guard::{NhiGuard, ScopeSet};
use serde_json::Value;
use tokio::sync::mpsc;

const AUDIENCE: &str = "orders-api";
const ISS_A: &str = "https://a.issuer.test";
const ISS_B: &str = "https://b.issuer.test/";

fn client(id: &str, issuers: &[&str]) -> ClientRecord {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
    issuers
        .iter()
        .fold(
            ClientRecord::builder(id, "team@example.com", "issuer tests", expires)
                .scopes(ScopeSet::parse("orders:read").expect("scopes")),
            |b, iss| b.issuer(*iss),
        )
        .build()
        .expect("client")
}

fn inventory(clients: Vec<ClientRecord>) -> Inventory {
    clients
        .into_iter()
        .fold(Inventory::builder(), |b, c| b.client(c))
        .build()
        .expect("inventory")
}

fn guard(
    registry: &Arc<InMemoryRegistry>,
    a: &DemoIssuer,
    b: &DemoIssuer,
    audit: Option<AuditLayer>,
) -> Result<nhi_guard::NhiGuardLayer, nhi_guard::BuildError> {
    let policy = Policy::builder()
        .get("/orders", Require::all_of("orders:read"))
        .build()
        .expect("policy");
    let mut builder = NhiGuard::builder(registry.clone())
        .realm("orders")
        .identity(
            IdentityLayer::builder(registry.clone())
                .issuer(a.issuer())
                .issuer(b.issuer()),
        )
        .scope(ScopeLayer::new(policy));
    if let Some(audit) = audit {
        builder = builder.audit(audit);
    }
    builder.build()
}

/// The next request record, skipping the chain's own records.
async fn record(records: &mut mpsc::Receiver<AuditEntry>) -> Value {
    loop {
        let entry = records.recv().await.expect("audit record");
        if entry.kind == RecordKind::Request {
            return serde_json::from_str(&entry.json).expect("json record");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_issuer_is_refused_and_audited() {
    let a = DemoIssuer::new(ISS_A, AUDIENCE).expect("issuer A");
    let b = DemoIssuer::new(ISS_B, AUDIENCE).expect("issuer B");
    let registry = Arc::new(InMemoryRegistry::new(inventory(vec![
        client("svc-a", &[ISS_A]),
        client("svc-b", &[ISS_B]),
    ])));
    let (sink, mut records) = ChannelSink::new(64).expect("sink");
    let (writer, audit) = AuditWriter::builder().spawn(sink).expect("audit writer");
    let guard = guard(&registry, &a, &b, Some(AuditLayer::new(writer))).expect("the stack builds");
    let app = axum::Router::new()
        .route("/orders", axum::routing::get(|| async { "[]" }))
        .layer(guard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let call = |token: String| {
        let req = Request::get(format!("{base}/orders"))
            .header("authorization", format!("Bearer {token}"))
            .body(Empty::new())
            .expect("request");
        let fut = http.request(req);
        async move {
            let res = fut.await.expect("response");
            let status = res.status();
            let challenge = res
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let body = res.into_body().collect().await.expect("body").to_bytes();
            (
                status,
                challenge,
                String::from_utf8(body.to_vec()).expect("utf-8"),
            )
        }
    };
    let ttl = Duration::from_secs(300);

    let (status, _, body) = call(a.mint("svc-a", "orders:read", ttl)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    let rec = record(&mut records).await;
    assert_eq!(rec["unmapped"]["nhi_guard"]["decision"], "allowed", "{rec}");
    let (status, _, _) = call(b.mint("svc-b", "orders:read", ttl)).await;
    assert_eq!(status, StatusCode::OK);
    record(&mut records).await;

    // Issuer B names issuer A's client.
    let (status, challenge, body) = call(b.mint("svc-a", "orders:read", ttl)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let challenge = challenge.expect("WWW-Authenticate");
    assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    let problem: Value = serde_json::from_str(&body).expect("problem+json");
    assert_eq!(problem["reason"], "client_issuer_mismatch", "{problem}");
    assert!(!body.contains("issuer.test"), "{body}");
    let rec = record(&mut records).await;
    let g = &rec["unmapped"]["nhi_guard"];
    assert_eq!(
        (&g["decision"], &g["control"], &g["reason"]),
        (
            &"denied".into(),
            &"identity".into(),
            &"client_issuer_mismatch".into()
        ),
        "{rec}"
    );

    // A reload with a client that lists no issuer is refused; the stack keeps
    // serving the current inventory.
    let err = registry
        .replace(inventory(vec![client("svc-a", &[ISS_A]), client("svc-new", &[])]))
        .expect_err("svc-new lists no issuer");
    assert_eq!(err.client_id(), Some("svc-new"));
    let (status, _, _) = call(a.mint("svc-a", "orders:read", ttl)).await;
    assert_eq!(status, StatusCode::OK);
    audit.shutdown().await.expect("audit flushed");
}

#[test]
fn the_stack_does_not_build_over_a_client_without_issuers() {
    let a = DemoIssuer::new(ISS_A, AUDIENCE).expect("issuer A");
    let b = DemoIssuer::new(ISS_B, AUDIENCE).expect("issuer B");
    let registry = Arc::new(InMemoryRegistry::new(inventory(vec![
        client("svc-a", &[ISS_A]),
        client("legacy", &[]),
    ])));
    let err = guard(&registry, &a, &b, None).expect_err("legacy lists no issuer");
    assert_eq!((err.control(), err.field()), ("identity", "registry"));
    assert!(
        err.to_string()
            .contains("client `legacy` ([[client]] entry 2), field `issuers`"),
        "{err}"
    );
}
