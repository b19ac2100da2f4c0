//! The gateway's routes and demo inventory, shared by `main.rs` and the tests in
//! `tests/gateway.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use nhi_guard::core::ScopeSet;
use nhi_guard::core::registry::{ClientRecord, Inventory, Tier};
use nhi_guard::scope::report::ReportService;
use serde_json::{Value, json};

/// The demo's secrets are printed at start-up so the demo can be tried; real
/// deployments register only hashes.
pub(crate) const DEMO_API_KEYS: &[(&str, &str)] = &[
    ("inventory-sync", "nhik_demo_inventory_sync_7d1f3a9c2b"),
    ("reporting-bot", "nhik_demo_reporting_bot_51e0c6a4f8"),
    ("partner-feed", "nhik_demo_partner_feed_c93b07d2e1"),
    ("ops-console", "nhik_demo_ops_console_4a8e2f6b90"),
];

fn scopes(s: &str) -> ScopeSet {
    ScopeSet::parse(s).expect("demo scopes are valid")
}

fn key_of(id: &str) -> &'static str {
    DEMO_API_KEYS
        .iter()
        .find(|(c, _)| *c == id)
        .map(|(_, k)| *k)
        .expect("every demo client has a key")
}

/// Three integrations with distinct scopes and tiers, plus an operator console
/// that may read the inventory report.
pub(crate) fn demo_inventory(now: SystemTime) -> Inventory {
    let in_days = |d: u64| now + Duration::from_secs(d * 86_400);
    let client = |id: &str, owner: &str, purpose: &str, expires, s: &str, tier: &str| {
        ClientRecord::builder(id, owner, purpose, expires)
            .scopes(scopes(s))
            .tier(tier)
            .api_key(key_of(id))
            .label("source", "demo")
    };
    Inventory::builder()
        .tier(
            "standard",
            Tier {
                per_second: 50,
                burst: 100,
            },
        )
        .tier(
            "bulk",
            Tier {
                per_second: 200,
                burst: 400,
            },
        )
        .tier(
            "partner",
            Tier {
                per_second: 5,
                burst: 10,
            },
        )
        .client(
            client(
                "inventory-sync",
                "fulfilment-team@example.com",
                "Syncs stock levels from the warehouse system",
                in_days(180),
                "orders:read orders:write inventory:read inventory:write",
                "standard",
            )
            .spiffe_id("spiffe://example.test/ns/prod/sa/inventory-sync")
            .build()
            .expect("demo client"),
        )
        .client(
            client(
                "reporting-bot",
                "analytics@example.com",
                "Builds the nightly sales report",
                in_days(10),
                "orders:read",
                "bulk",
            )
            .build()
            .expect("demo client"),
        )
        .client(
            client(
                "partner-feed",
                "partnerships@example.com",
                "Publishes stock availability to a reseller",
                in_days(365),
                "inventory:read",
                "partner",
            )
            .network("127.0.0.0/8".parse().expect("net"))
            .network("::1/128".parse().expect("net"))
            .build()
            .expect("demo client"),
        )
        .client(
            client(
                "ops-console",
                "platform-team@example.com",
                "Operators' view of the client inventory",
                in_days(90),
                "admin",
                "default",
            )
            .build()
            .expect("demo client"),
        )
        .build()
        .expect("demo inventory is valid")
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The least-privilege report behind `GET /admin/clients`.
    pub(crate) reports: ReportService,
    /// The demo issuer's JWKS, served at `/.well-known/jwks.json`.
    pub(crate) jwks: Option<Arc<str>>,
    /// The Prometheus rendering of the guard's metrics, served at `GET /metrics`
    /// (scope `admin`).
    pub(crate) metrics: Option<PrometheusHandle>,
}

/// `GET /metrics`: the guard's metrics in Prometheus text format, rendered from the
/// recorder installed at start-up (the policy requires scope `admin`).
pub(crate) fn metrics_route<S: Clone + Send + Sync + 'static>(handle: PrometheusHandle) -> MethodRouter<S> {
    get(move || {
        let text = handle.render();
        async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
    })
}

/// The demo routes.
pub(crate) fn routes(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/orders", get(list_orders).post(create_order))
        .route("/inventory/{sku}", get(get_inventory))
        .route("/inventory/{sku}/reserve", post(reserve))
        .route("/admin/clients", state.reports.get_handler());
    if let Some(handle) = state.metrics {
        router = router.route("/metrics", metrics_route(handle));
    }
    if let Some(jwks) = state.jwks {
        router = router.route(
            "/.well-known/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/jwk-set+json")],
                        jwks.to_string(),
                    )
                }
            }),
        );
    }
    router
}

async fn list_orders() -> Json<Value> {
    Json(
        json!({ "orders": [ { "id": "ord-1001", "status": "shipped" }, { "id": "ord-1002", "status": "open" } ] }),
    )
}

async fn create_order() -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({ "id": "ord-1003", "status": "open" })),
    )
}

async fn get_inventory(Path(sku): Path<String>) -> Json<Value> {
    Json(json!({ "sku": sku, "available": 42 }))
}

async fn reserve(Path(sku): Path<String>) -> Json<Value> {
    Json(json!({ "sku": sku, "reserved": 1 }))
}
