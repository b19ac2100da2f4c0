//! The nhi-guard edge proxy: `cargo run --example edge_proxy`.
//!
//! The gateway's whole security stack (identity, scope, rate limits, risk, audit) in
//! front of any HTTP upstream, so services not written in Rust get the same
//! protection. Allowed requests are forwarded; denied ones are answered here and
//! never reach the upstream.
//!
//! # Environment
//!
//! - `NHI_GUARD_UPSTREAM`: where allowed requests go, `http://host:port` with an
//!   optional path prefix (default `http://127.0.0.1:9000`);
//! - every variable of the `gateway` example: `NHI_GUARD_LISTEN` (default
//!   `127.0.0.1:8080`), `NHI_GUARD_CLIENTS` (re-read on SIGHUP), `NHI_GUARD_ISSUER`,
//!   `NHI_GUARD_JWKS_URL`, `NHI_GUARD_AUDIENCE`, `NHI_GUARD_REDIS_URL`,
//!   `NHI_GUARD_AUDIT_LOG`, `NHI_GUARD_RISK_MODE`, `NHI_GUARD_TRUSTED_PROXIES`.
//!
//! An invalid value stops start-up with a message naming the variable. The routes
//! are protected by the gateway's scope policy (`GET /orders` needs `orders:read`,
//! and so on; paths the policy does not name are refused). Without an external
//! issuer, the demo issuer's JWKS is served here at `/.well-known/jwks.json`, and
//! `GET /metrics` (scope `admin`) serves the guard's metrics in Prometheus text
//! format from the proxy itself, never forwarded. Prints `listening on http://ADDR` once it accepts connections.
//!
//! # What the upstream receives
//!
//! The request as the client sent it, body streamed through as it arrives (never
//! collected), with these header changes:
//!
//! | header | value |
//! |---|---|
//! | `x-nhi-client-id` | the verified client's id in the inventory |
//! | `x-nhi-owner` | the owner the inventory names for it |
//! | `x-nhi-scopes` | the scopes it holds for this request, space-delimited |
//! | `x-nhi-tier` | its rate-limit tier |
//! | `x-nhi-credential-kind` | `service_account`, `api_key` or `workload_certificate` |
//! | `x-nhi-request-id` | the guard's request id, the same as in the audit record |
//! | `x-forwarded-for` | the client address the guard resolved (trusted proxies honoured) |
//!
//! The identity headers are absent on public routes called without a credential.
//! Values are visible ASCII; any other byte, and `%`, is percent-encoded.
//!
//! Removed before forwarding: every `x-nhi-*` header the client sent (so an upstream
//! can trust them), the credential (`Authorization`, `X-API-Key`: secrets stay at
//! the edge), `Host` (set to the upstream's), `Forwarded`, the client's
//! `X-Forwarded-For`, and the hop-by-hop fields of RFC 9110 §7.6.1 (`Connection` and
//! the fields it names, `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`,
//! `Upgrade`) plus `Proxy-Authorization` / `Proxy-Authenticate`. Hop-by-hop fields
//! are removed from the response as well; its body is streamed back as it arrives.
//!
//! When the upstream cannot be reached the client gets `502 Bad Gateway` as
//! `application/problem+json`.

#![allow(clippy::print_stdout)]

#[path = "../gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;
mod proxy;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nhi_guard::core::clock::SystemClock;

#[tokio::main]
async fn main() -> ExitCode {
    guard::init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("edge_proxy: {msg}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let get = |k: &str| std::env::var(k).ok();
    let config = config::from_lookup(get)?;
    let upstream = proxy::Upstream::from_lookup(get)?;
    let registry = guard::load_registry(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("NHI_GUARD_LISTEN={}: cannot listen: {e}", config.listen))?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let base = format!("http://{addr}");

    // Before the stack is built: each layer resolves its counters on its first request.
    let metrics = guard::install_metrics()?;
    let guard = guard::build(&config, registry.clone(), &base, Arc::new(SystemClock)).await?;
    let jwks = guard.demo.as_ref().map(|d| Arc::from(d.jwks_json()));
    let router =
        proxy::routes(proxy::Proxy::new(upstream.clone()), jwks, Some(metrics)).layer(guard.layer.clone());
    guard::reload_on_sighup(registry.clone(), config.clients.clone());

    println!("listening on {base}");
    println!("forwarding allowed requests to {upstream}");
    if !config.trusted_proxies.is_empty() {
        let nets: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
        println!("believing Forwarded / X-Forwarded-For from {}", nets.join(", "));
    }
    if let Some(demo) = &guard.demo {
        print_demo(&base, demo);
    }

    guard::serve(listener, router, &guard, "edge_proxy").await
}

fn print_demo(base: &str, demo: &nhi_guard::identity::DemoIssuer) {
    let sync = demo.mint(
        "inventory-sync",
        "orders:read orders:write inventory:read inventory:write",
        Duration::from_secs(3600),
    );
    let bot = demo.mint("reporting-bot", "orders:read", Duration::from_secs(3600));
    println!();
    println!("Demo clients (tokens valid for one hour; API keys are demo secrets):");
    for (id, key) in app::DEMO_API_KEYS {
        println!("  {id}: X-API-Key: {key}");
    }
    println!();
    println!("Try (the upstream sees x-nhi-client-id, x-nhi-scopes, ... instead of the credential):");
    println!("  # allowed: forwarded with the verified identity");
    println!("  curl -i {base}/orders -H 'Authorization: Bearer {sync}'");
    println!(
        "  curl -i {base}/inventory/sku-123 -H 'X-API-Key: {}'",
        app::DEMO_API_KEYS[2].1
    );
    println!("  # 403 insufficient_scope, answered here: the upstream is never contacted");
    println!("  curl -i -X POST {base}/orders -H 'Authorization: Bearer {bot}'");
    println!("  # 401: no credential");
    println!("  curl -i {base}/orders");
    println!("  # a large body streams through both ways");
    println!(
        "  head -c 50000000 /dev/zero | curl -i -X POST {base}/orders -H 'X-API-Key: {}' --data-binary @-",
        app::DEMO_API_KEYS[0].1
    );
    println!("  # the guard's Prometheus metrics, served by the proxy itself (scope admin)");
    println!(
        "  curl -s {base}/metrics -H 'X-API-Key: {}'",
        app::DEMO_API_KEYS[3].1
    );
}
