//! The whole stack on `GET /orders` with a valid RS256 access token, against the
//! bare axum handler in the same run, each control alone, and the floor of a
//! `tower-http` bearer check and `tower_governor` on the same request.
//!
//! ```text
//! cargo bench --bench stack -- --warm-up-time 1 --measurement-time 5
//! NHI_GUARD_BENCH_METRICS=1 cargo bench --bench stack   # with a Prometheus recorder
//! ```
//!
//! The full stack is: audit (JSON Lines file with the hash chain) → rate limit by
//! address → failure-only limit → risk edge → identity (RS256, verified-token cache)
//! → risk (all default signals) → rate limit by client (inventory tier) → scope.

// `ValidateRequestHeaderLayer::bearer` is deprecated upstream as too basic; it is here as the floor.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout, deprecated)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, StatusCode};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nhi_guard::audit::{AuditLayer, AuditWriter, JsonLinesFile};
use nhi_guard::core::address::PeerAddr;
use nhi_guard::core::store::Quota;
use nhi_guard::identity::{IdentityLayer, Issuer, KeySet};
use nhi_guard::prelude::*;
use nhi_guard::ratelimit::AuthFailureLimitLayer;
use nhi_guard::risk::Route;
use tower::{Service, ServiceExt};

const ISS: &str = "https://issuer.test";
const AUD: &str = "orders-api";
const PEM: &[u8] = include_bytes!("../crates/nhi-guard-identity/testdata/rsa2048.pem");

fn registry() -> Arc<InMemoryRegistry> {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
    let client = ClientRecord::builder("inventory-sync", "team@example.com", "bench", expires)
        .scopes(ScopeSet::parse("orders:read orders:write").unwrap())
        .tier("bench")
        .build()
        .unwrap();
    // A quota the benchmark never exhausts: we measure the allow path.
    let inv = Inventory::builder()
        .tier(
            "bench",
            Tier {
                per_second: 1_000_000_000,
                burst: 1_000_000_000,
            },
        )
        .client(client)
        .build()
        .unwrap();
    Arc::new(InMemoryRegistry::new(inv))
}

fn token_and_keys() -> (HeaderValue, KeySet) {
    let key = EncodingKey::from_rsa_pem(PEM).unwrap();
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = "bench".into();
    let (keys, _) = KeySet::from_jwks(serde_json::json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("bench".into());
    let claims = serde_json::json!({
        "iss": ISS, "aud": AUD, "sub": "inventory-sync", "client_id": "inventory-sync",
        "scope": "orders:read", "iat": now, "exp": now + 3600, "jti": "bench-1",
    });
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    (HeaderValue::from_str(&format!("Bearer {token}")).unwrap(), keys)
}

fn app() -> Router {
    Router::new().route("/orders", get(|| async { "[]" }))
}

fn request(auth: &HeaderValue) -> Request<Body> {
    let mut req = Request::get("/orders")
        .header("authorization", auth.clone())
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
    req
}

fn identity(registry: &Arc<InMemoryRegistry>, keys: &KeySet) -> nhi_guard::identity::IdentityLayerBuilder {
    IdentityLayer::builder(registry.clone()).issuer(Issuer::new(ISS).audience(AUD).static_keys(keys.clone()))
}

fn policy() -> Policy {
    Policy::builder()
        .get("/orders", Require::all_of("orders:read"))
        .build()
        .unwrap()
}

fn risk() -> RiskLayer {
    RiskLayer::new()
        .route(Route::new("GET", "/orders").unwrap())
        .unwrap()
}

fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, auth: &HeaderValue)
where
    S: Service<Request<Body>, Response = axum::response::Response, Error = Infallible> + Clone,
{
    let res = rt.block_on(svc.clone().oneshot(request(auth))).unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the benchmark must measure the allow path"
    );
    black_box(res);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    // NHI_GUARD_BENCH_METRICS=1: with a Prometheus recorder installed before the
    // stacks are built (the layers' counters and the risk histogram then record
    // for real), its upkeep run every second as a scraping gateway would.
    let _metrics = std::env::var_os("NHI_GUARD_BENCH_METRICS").map(|_| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap();
        let upkeep = handle.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                upkeep.run_upkeep();
            }
        });
        handle
    });
    let registry = registry();
    let (auth, keys) = token_and_keys();
    let dir = std::env::temp_dir().join(format!("nhi-guard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let audit = |name: &str| {
        let file = JsonLinesFile::open(dir.join(name)).unwrap();
        let (writer, handle) = AuditWriter::builder().spawn(file).unwrap();
        (AuditLayer::new(writer), handle)
    };
    let quota = || {
        Quota::per_second(1_000_000_000)
            .unwrap()
            .with_burst(1_000_000_000)
            .unwrap()
    };

    // Every control; the audit layer only when given.
    let stack = |audit: Option<AuditLayer>| {
        let mut b = NhiGuard::builder(registry.clone())
            .address_rate_limit(
                RateLimitLayer::new()
                    .limit(Limit::per_address("per-address", quota()))
                    .unwrap(),
            )
            .auth_failure_limit(AuthFailureLimitLayer::new(quota()))
            .identity(identity(&registry, &keys))
            .risk(risk())
            .rate_limit(
                RateLimitLayer::new()
                    .limit(Limit::per_client("per-client"))
                    .unwrap(),
            )
            .scope(ScopeLayer::new(policy()));
        if let Some(a) = audit {
            b = b.audit(a);
        }
        b.build().unwrap()
    };
    let (full_audit, full_handle) = audit("full.jsonl");
    let full = stack(Some(full_audit));
    let without_audit = stack(None);

    let (alone_audit, alone_handle) = audit("alone.jsonl");
    let services: Vec<(&str, axum::Router)> = vec![
        ("bare handler", app()),
        ("full stack", app().layer(full)),
        ("full stack without audit", app().layer(without_audit)),
        (
            "identity alone (RS256, cached)",
            app().layer(identity(&registry, &keys).build().unwrap()),
        ),
        (
            "rate limit alone (per address)",
            app().layer(
                RateLimitLayer::new()
                    .limit(Limit::per_address("per-address", quota()))
                    .unwrap(),
            ),
        ),
        ("risk alone (anonymous)", app().layer(risk())),
        ("audit alone (file)", app().layer(alone_audit)),
        (
            "identity + scope",
            app()
                .layer(ScopeLayer::new(policy()))
                .layer(identity(&registry, &keys).build().unwrap()),
        ),
        (
            "floor: tower-http bearer check",
            app().layer(tower_http::validate_request::ValidateRequestHeaderLayer::bearer(
                auth.to_str().unwrap().trim_start_matches("Bearer "),
            )),
        ),
        (
            "peer: tower_governor (per IP)",
            app().layer(tower_governor::GovernorLayer::new(
                tower_governor::governor::GovernorConfigBuilder::default()
                    .per_nanosecond(1)
                    .burst_size(1_000_000_000)
                    .key_extractor(PeerAddrKey)
                    .finish()
                    .unwrap(),
            )),
        ),
    ];

    let mut group = c.benchmark_group("stack");
    for (name, svc) in &services {
        run(&rt, svc, &auth);
        group.bench_function(*name, |b| b.iter(|| run(&rt, svc, &auth)));
    }
    group.finish();
    drop(services);
    rt.block_on(async {
        full_handle.shutdown().await.unwrap();
        alone_handle.shutdown().await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// governor keyed by the same `PeerAddr` extension our layers read.
#[derive(Debug, Clone, Copy)]
struct PeerAddrKey;

impl tower_governor::key_extractor::KeyExtractor for PeerAddrKey {
    type Key = std::net::IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, tower_governor::GovernorError> {
        req.extensions()
            .get::<PeerAddr>()
            .map(|p| p.0.ip())
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
