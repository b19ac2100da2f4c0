//! The nhi-guard demo gateway: `cargo run --example gateway`.
//!
//! Every control in front of a small orders / inventory API. Environment (all
//! optional; an invalid value stops start-up with a message naming the variable):
//! - `NHI_GUARD_LISTEN` (default `127.0.0.1:8080`);
//! - `NHI_GUARD_CLIENTS`: a TOML client inventory (default: a built-in demo inventory);
//! - `NHI_GUARD_ISSUER`, `NHI_GUARD_JWKS_URL`, `NHI_GUARD_AUDIENCE`: an external token
//!   issuer (default: an in-process demo issuer whose JWKS is served at
//!   `/.well-known/jwks.json`);
//! - `NHI_GUARD_REDIS_URL`: share rate limits and risk state through Redis;
//! - `NHI_GUARD_AUDIT_LOG`: append the audit log (JSON Lines, hash-chained) to a file;
//! - `NHI_GUARD_RISK_MODE`: `enforce` (default), `shadow` or `off`;
//! - `NHI_GUARD_TRUSTED_PROXIES`: comma-separated CIDRs of proxies whose
//!   `Forwarded` / `X-Forwarded-For` headers are believed.
//!
//! Prints `listening on http://ADDR` once it accepts connections, then commands to try.
//! `GET /metrics` (scope `admin`) serves the guard's metrics in Prometheus text format.

#![allow(clippy::print_stdout)]

mod app;
mod config;
mod guard;

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
            eprintln!("gateway: {msg}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let config = config::from_lookup(|k| std::env::var(k).ok())?;
    let registry = guard::load_registry(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("NHI_GUARD_LISTEN={}: cannot listen: {e}", config.listen))?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let base = format!("http://{addr}");

    // Before the stack is built: every layer resolves its counters on first use.
    let metrics = guard::install_metrics()?;
    let guard = guard::build(&config, registry.clone(), &base, Arc::new(SystemClock)).await?;
    let state = app::AppState {
        reports: guard.reports.clone(),
        jwks: guard.demo.as_ref().map(|d| Arc::from(d.jwks_json())),
        metrics: Some(metrics),
    };
    let router = app::routes(state).layer(guard.layer.clone());
    guard::reload_on_sighup(registry.clone(), config.clients.clone());

    println!("listening on {base}");
    if !config.trusted_proxies.is_empty() {
        let nets: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
        println!("believing Forwarded / X-Forwarded-For from {}", nets.join(", "));
    }
    if let Some(demo) = &guard.demo {
        print_demo(&base, demo);
    }

    let served = guard::serve(listener, router, &guard, "gateway").await;
    if let Some(op) = guard.risk {
        let active = op.active();
        if !active.is_empty() {
            println!("{} risk decisions were active at shutdown", active.len());
        }
    }
    served
}

fn print_demo(base: &str, demo: &nhi_guard::identity::DemoIssuer) {
    let token = |id: &str, scopes: &str| demo.mint(id, scopes, Duration::from_secs(3600));
    println!();
    println!("Demo clients (tokens valid for one hour; API keys are demo secrets):");
    for (id, key) in app::DEMO_API_KEYS {
        println!("  {id}: X-API-Key: {key}");
    }
    let sync = token(
        "inventory-sync",
        "orders:read orders:write inventory:read inventory:write",
    );
    let bot = token("reporting-bot", "orders:read");
    let ops = token("ops-console", "admin");
    println!();
    println!("Try:");
    println!("  # allowed: a service account with a bearer token");
    println!("  curl -i {base}/orders -H 'Authorization: Bearer {sync}'");
    println!("  # allowed: an API key");
    println!(
        "  curl -i {base}/inventory/sku-123 -H 'X-API-Key: {}'",
        app::DEMO_API_KEYS[2].1
    );
    println!("  # 403 insufficient_scope: reporting-bot may only read orders");
    println!("  curl -i -X POST {base}/orders -H 'Authorization: Bearer {bot}'");
    println!("  # 401: no credential, then a bad one");
    println!("  curl -i {base}/orders");
    println!("  curl -i {base}/orders -H 'X-API-Key: nhik_wrong'");
    println!("  # 429: partner-feed's tier allows 5/s with bursts of 10");
    println!(
        "  for i in $(seq 20); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/inventory/sku-1 -H 'X-API-Key: {}'; done; echo",
        app::DEMO_API_KEYS[2].1
    );
    println!("  # risk: walking 150 SKUs one by one (enumeration) is throttled (429), then blocked (403)");
    println!(
        "  for i in $(seq 150); do curl -s -o /dev/null -w '%{{http_code}} ' {base}/inventory/sku-$i -H 'X-API-Key: {}'; done; echo",
        app::DEMO_API_KEYS[0].1
    );
    println!("  # the least-privilege report (scope admin)");
    println!("  curl -s {base}/admin/clients -H 'Authorization: Bearer {ops}'");
    println!(
        "  # Prometheus metrics (scope admin): requests by control and decision, denials by reason, ..."
    );
    println!("  curl -s {base}/metrics -H 'Authorization: Bearer {ops}'");
}
