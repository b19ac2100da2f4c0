//! A plain axum app protected by the identity layer alone, with the demo issuer.
//!
//! ```text
//! cargo run -p nhi-guard-identity --features demo --example identity_alone
//! ```
//!
//! It prints ready `curl` commands: one with a fresh access token, one with an API
//! key, and one without any credential (refused with 401).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::get;
use nhi_guard_core::registry::{ClientRecord, InMemoryRegistry, Inventory};
use nhi_guard_core::{Principal, ScopeSet};
use nhi_guard_identity::{DemoIssuer, IdentityLayer};

async fn orders(principal: Principal) -> String {
    format!(
        "hello {} (owner {}), scopes: {}\n",
        principal.client_id(),
        principal.owner(),
        principal.scopes()
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("nhi_guard=debug,info")
        .init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let base = format!("http://{}", listener.local_addr()?);

    let demo = DemoIssuer::new(base.clone(), "orders-api")?;
    let expires = SystemTime::now() + Duration::from_secs(90 * 86_400);
    let api_key = "nhik_demo_7d0c55e1b2a94f";
    let inventory = Inventory::builder()
        .client(
            ClientRecord::builder(
                "inventory-sync",
                "fulfilment@example.com",
                "Syncs stock levels",
                expires,
            )
            .scopes(ScopeSet::parse("orders:read inventory:read")?)
            .build()?,
        )
        .client(
            ClientRecord::builder(
                "partner-feed",
                "partners@example.com",
                "Partner order feed",
                expires,
            )
            .scopes(ScopeSet::parse("orders:read")?)
            .api_key(api_key)
            .build()?,
        )
        .build()?;

    let identity = IdentityLayer::builder(InMemoryRegistry::new(inventory))
        .issuer(demo.issuer())
        .realm("orders-api")
        .build()?;

    let jwks = demo.jwks_json();
    let app = Router::new()
        .route("/orders", get(orders))
        .layer(identity)
        .route("/.well-known/jwks.json", get(move || async move { jwks }));

    let token = demo.mint("inventory-sync", "orders:read", Duration::from_secs(3600));
    println!("listening on {base}");
    println!("curl -i -H 'Authorization: Bearer {token}' {base}/orders");
    println!("curl -i -H 'X-API-Key: {api_key}' {base}/orders");
    println!("curl -i {base}/orders");
    axum::serve(listener, app).await?;
    Ok(())
}
