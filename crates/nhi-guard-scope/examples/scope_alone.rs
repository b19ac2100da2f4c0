//! The scope layer alone in a plain axum app.
//!
//! ```text
//! cargo run -p nhi-guard-scope --features axum --example scope_alone
//! curl -i localhost:3000/health
//! curl -i -H 'x-api-key: demo-sync-key-0001' localhost:3000/orders/42
//! curl -i -H 'x-api-key: demo-sync-key-0001' -X POST localhost:3000/orders     # 403 insufficient_scope
//! curl -i -H 'x-api-key: demo-admin-key-0001' localhost:3000/admin/clients     # the least-privilege report
//! ```
//!
//! A real deployment puts nhi-guard's identity layer in front; here a few lines
//! map an `x-api-key` header to a principal so the example needs nothing else.
//! `PORT` picks the port (default 3000).

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use http::{Method, Request};
use nhi_guard_core::registry::{ApiKeyHash, ClientRecord, ClientRegistry, InMemoryRegistry, Inventory, Tier};
use nhi_guard_core::{CredentialInfo, Principal, ScopeSet};
use nhi_guard_scope::report::ReportService;
use nhi_guard_scope::usage::{InMemoryUsageStore, SharedUsageStore};
use nhi_guard_scope::{Policy, Require, ScopeLayer};
use tower::util::MapRequestLayer;

fn inventory() -> Result<Inventory, Box<dyn Error>> {
    let expires = SystemTime::now() + Duration::from_secs(180 * 86_400);
    Ok(Inventory::builder()
        .client(
            ClientRecord::builder(
                "inventory-sync",
                "fulfilment@example.com",
                "Syncs stock levels",
                expires,
            )
            .scopes(ScopeSet::parse("orders:read orders:export inventory:read")?)
            .api_key("demo-sync-key-0001")
            .build()?,
        )
        .client(
            ClientRecord::builder(
                "ops-console",
                "platform@example.com",
                "Operations dashboard",
                expires,
            )
            .scopes(ScopeSet::parse("admin")?)
            .api_key("demo-admin-key-0001")
            .build()?,
        )
        .build()?)
}

/// Stand-in for the identity layer: `x-api-key` → the registered client.
fn identify(
    registry: Arc<InMemoryRegistry>,
) -> impl Fn(Request<axum::body::Body>) -> Request<axum::body::Body> + Clone {
    move |mut req| {
        let key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(key) = key
            && let Some(record) = registry.client_by_api_key(&ApiKeyHash::of_key(key.as_bytes()))
        {
            let scopes = record.scopes().clone();
            let credential = CredentialInfo::ApiKey {
                prefix: CredentialInfo::api_key_prefix(&key, 8),
            };
            req.extensions_mut()
                .insert(Principal::new(record, credential, scopes, Tier::BUILT_IN_DEFAULT));
        }
        req
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let registry = Arc::new(InMemoryRegistry::new(inventory()?));
    let usage: SharedUsageStore = Arc::new(InMemoryUsageStore::new());

    let policy = Policy::builder()
        .get("/orders/{id}", Require::all_of("orders:read"))
        .post("/orders", Require::all_of("orders:write"))
        .get("/admin/clients", Require::all_of("admin"))
        .public(Method::GET, "/health")
        .build()?;
    let scope = ScopeLayer::new(policy)
        .realm("orders-api")
        .usage_store(usage.clone());
    let reports = ReportService::new(registry.clone(), usage);

    let app = Router::new()
        .route(
            "/orders/{id}",
            get(|Path(id): Path<String>| async move { format!("order {id}\n") }),
        )
        .route("/orders", post(|| async { "created\n" }))
        .route("/admin/clients", reports.get_handler())
        .route("/health", get(|| async { "ok\n" }))
        // Layers added later run first: identity, then scope, then the router.
        .layer(scope)
        .layer(MapRequestLayer::new(identify(registry)));

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
