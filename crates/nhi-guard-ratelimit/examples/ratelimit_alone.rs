//! The rate-limit layer on its own in front of an axum app: a per-address limit,
//! a per-tenant limit keyed by a header, and the failure-only limit.
//!
//! `cargo run -p nhi-guard-ratelimit --example ratelimit_alone` sends a few
//! requests through the app in-process and prints what a client sees;
//! `cargo run -p nhi-guard-ratelimit --example ratelimit_alone -- serve` serves on
//! 127.0.0.1:3000 instead (`curl -i -H 'x-tenant: acme' localhost:3000/orders`).
#![allow(clippy::print_stdout)] // an example talks to its user

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::Request;
use nhi_guard_ratelimit::store::Quota;
use nhi_guard_ratelimit::{AuthFailureLimitLayer, Limit, RateLimitLayer};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limits = RateLimitLayer::new()
        // 5 requests per second per address, bursts of 10.
        .limit(Limit::per_address(
            "per-ip",
            Quota::per_second(5)?.with_burst(10)?,
        ))?
        // 2 requests per second per tenant, bursts of 3.
        .limit(Limit::custom(
            "per-tenant",
            Quota::per_second(2)?.with_burst(3)?,
            |parts, _ctx| parts.headers.get("x-tenant")?.to_str().ok().map(str::to_owned),
        ))?;
    // Ten failed authentications per address or credential, then one per minute.
    let failures = AuthFailureLimitLayer::new(Quota::per_minute(1)?.with_burst(10)?);

    let app = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .layer(limits)
        .layer(failures);

    if std::env::args().nth(1).as_deref() == Some("serve") {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
        println!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
        return Ok(());
    }

    let peer: SocketAddr = "203.0.113.7:50000".parse()?;
    for i in 1..=5 {
        let mut req = Request::get("/orders")
            .header("x-tenant", "acme")
            .body(Body::empty())?;
        req.extensions_mut().insert(ConnectInfo(peer));
        let res = app.clone().oneshot(req).await?;
        let h = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        println!(
            "request {i}: {} | RateLimit: {} | RateLimit-Policy: {} | Retry-After: {}",
            res.status(),
            h("ratelimit"),
            h("ratelimit-policy"),
            h("retry-after")
        );
    }
    Ok(())
}
