//! The set-up both bench targets share: one client in the inventory, a valid RS256
//! access token for it, and the full stack of every control, so `stack` (criterion,
//! in-process) and `throughput` (wrk over loopback) measure exactly the same thing.

#[allow(dead_code, reason = "the criterion benches' table, not used by throughput")]
pub(crate) mod report;
#[allow(dead_code, reason = "the benches that serve over loopback, not stack")]
pub(crate) mod server;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use http::HeaderValue;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nhi_guard::NhiGuardLayer;
use nhi_guard::audit::{AuditHandle, AuditLayer, AuditWriter, FsyncPolicy, JsonLinesFile};
use nhi_guard::identity::{IdentityLayer, IdentityLayerBuilder, Issuer, KeySet};
use nhi_guard::prelude::*;
use nhi_guard::ratelimit::AuthFailureLimitLayer;
use nhi_guard::ratelimit::store::Quota;
use nhi_guard::risk::Route;

pub(crate) const ISS: &str = "https://issuer.test";
pub(crate) const AUD: &str = "orders-api";
const PEM: &[u8] = include_bytes!("../../crates/nhi-guard-identity/testdata/rsa2048.pem");

/// One client, `inventory-sync`, on a tier the benchmarks never exhaust: we measure
/// the allow path.
pub(crate) fn registry() -> Arc<InMemoryRegistry> {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
    let client = ClientRecord::builder("inventory-sync", "team@example.com", "bench", expires)
        .scopes(ScopeSet::parse("orders:read orders:write").unwrap())
        .tier("bench")
        .build()
        .unwrap();
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

/// The bearer header, our key set, and the same public key as JWKS text (for peers).
pub(crate) fn token_and_keys() -> (HeaderValue, KeySet, String) {
    let key = EncodingKey::from_rsa_pem(PEM).unwrap();
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = "bench".into();
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    let (keys, _) = KeySet::from_jwks(jwks.as_bytes()).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("bench".into());
    let claims = serde_json::json!({
        "iss": ISS, "aud": AUD, "sub": "inventory-sync", "client_id": "inventory-sync",
        "scope": "orders:read", "iat": now, "exp": now + 3600, "jti": "bench-1",
    });
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    (
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        keys,
        jwks,
    )
}

/// The bare handler every entry wraps.
#[allow(dead_code, reason = "the forward_auth bench has a gRPC baseline instead")]
pub(crate) fn app() -> Router {
    Router::new().route("/orders", get(|| async { "[]" }))
}

pub(crate) fn identity(registry: &Arc<InMemoryRegistry>, keys: &KeySet) -> IdentityLayerBuilder {
    IdentityLayer::builder(registry.clone()).issuer(Issuer::new(ISS).audience(AUD).static_keys(keys.clone()))
}

/// The one route table: `GET /orders` needs `orders:read` and is a risk route.
pub(crate) fn routes() -> Routes {
    Routes::builder()
        .route(
            nhi_guard::core::route::Route::get("/orders")
                .with(Require::all_of("orders:read"))
                .with(RouteRisk::new()),
        )
        .build()
        .unwrap()
}

/// The scope policy of a table of its own (the `stack` bench's rows built up one
/// control at a time).
#[allow(dead_code, reason = "used by the stack bench, not by throughput")]
pub(crate) fn policy() -> Policy {
    Policy::from_routes(&routes()).unwrap()
}

/// The risk layer with a route table of its own (the `stack` bench's "risk alone").
#[allow(dead_code, reason = "used by the stack bench, not by throughput")]
pub(crate) fn risk() -> RiskLayer {
    RiskLayer::new()
        .route(Route::new("GET", "/orders").unwrap())
        .unwrap()
}

/// A quota the benchmarks never exhaust, even with every request from one address.
pub(crate) fn quota() -> Quota {
    Quota::per_second(1_000_000_000)
        .unwrap()
        .with_burst(1_000_000_000)
        .unwrap()
}

/// An audit layer writing JSON Lines (with the hash chain) to `dir/name`.
pub(crate) fn audit(dir: &Path, name: &str) -> (AuditLayer, AuditHandle) {
    audit_with(dir, name, FsyncPolicy::default())
}

/// [`audit`] with another fsync policy than the default (one per batch).
pub(crate) fn audit_with(dir: &Path, name: &str, fsync: FsyncPolicy) -> (AuditLayer, AuditHandle) {
    let file = JsonLinesFile::open(dir.join(name)).unwrap().fsync(fsync);
    let (writer, handle) = AuditWriter::builder().spawn(file).unwrap();
    (AuditLayer::new(writer), handle)
}

/// Every control: audit (when given) → rate limit by address → failure-only limit →
/// risk edge → identity (RS256, verified-token cache) → risk → rate limit by client
/// (inventory tier) → scope, with one route table matched once per request.
pub(crate) fn full_stack(
    registry: &Arc<InMemoryRegistry>,
    keys: &KeySet,
    audit: Option<AuditLayer>,
) -> NhiGuardLayer {
    let mut b = NhiGuard::builder(registry.clone())
        .address_rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_address("per-address", quota()).exempt_verified())
                .unwrap(),
        )
        .auth_failure_limit(AuthFailureLimitLayer::new(quota()))
        .identity(identity(registry, keys))
        .risk(RiskLayer::new())
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client"))
                .unwrap(),
        )
        .routes(routes());
    if let Some(a) = audit {
        b = b.audit(a);
    }
    b.build().unwrap()
}
