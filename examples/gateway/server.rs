//! The gateway's program: configuration, the stack, the routes, the demo commands,
//! and serving until a stop signal. Shared by `main.rs` and the process tests in
//! `tests/gateway_process.rs`, which run it in a child process and signal it.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use nhi_guard::core::clock::SystemClock;

use crate::{app, config, guard};

/// Runs the gateway configured by `get` (the process environment in `main`): prints
/// `listening on http://ADDR` once it accepts connections, serves until SIGTERM or
/// SIGINT, and returns once requests in flight finished and the audit log is
/// sealed.
///
/// # Errors
/// A message naming the variable at fault, or the server's error.
pub(crate) async fn run(get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let config = config::from_lookup(get)?;
    let registry = guard::load_registry(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("NHI_GUARD_LISTEN={}: cannot listen: {e}", config.listen))?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let base = format!("http://{addr}");

    // Before the stack is built: every layer resolves its counters on first use.
    let metrics = guard::install_metrics()?;
    let guard = guard::build(&config, registry.clone(), &base, Arc::new(SystemClock)).await?;
    let state = guard.app_state(Some(metrics));
    let router = app::routes(state).layer(guard.layer.clone());
    guard::reload_on_sighup(registry.clone(), &config);

    println!("listening on {base}");
    if let Some(line) = config.trusted_proxies_line() {
        println!("{line}");
    }
    // The demo's keys and tokens name the demo inventory's clients.
    if let (Some(demo), None) = (&guard.demo, &config.clients) {
        print_demo(&base, demo);
    }

    let served = guard::serve(listener, router, &guard, "gateway", config.shutdown_grace).await;
    if let Some(op) = guard.risk {
        let active = op.active();
        if !active.is_empty() {
            println!("{} risk decisions were active at shutdown", active.len());
        }
    }
    served
}

pub(crate) fn print_demo(base: &str, demo: &nhi_guard::identity::DemoIssuer) {
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
    println!("  # why risk refused inventory-sync: each decision with its signals and points (scope admin)");
    println!(
        "  curl -s '{base}/admin/risk/decisions?client=inventory-sync' -H 'Authorization: Bearer {ops}'"
    );
    println!(
        "  # callers nobody registered: a trusted token for an unknown client, a stray API key (scope admin)"
    );
    println!("  curl -s {base}/admin/clients/ungoverned -H 'Authorization: Bearer {ops}'");
    println!(
        "  # revoke a leaked credential at once (scope admin); GET lists, DELETE /admin/revocations/ID lifts"
    );
    println!(
        "  curl -s {base}/admin/revocations -H 'Authorization: Bearer {ops}' -H 'Content-Type: application/json' -d '{{\"client_id\":\"partner-feed\"}}'"
    );
    println!("  # the least-privilege report (scope admin)");
    println!("  curl -s {base}/admin/clients -H 'Authorization: Bearer {ops}'");
    println!("  # the same as one HTML page, with the nhi-guard command (the token from the environment)");
    println!(
        "  NHI_GUARD_TOKEN='{ops}' cargo run -p nhi-guard-cli -- report --gateway {base} --html report.html"
    );
    println!(
        "  # Prometheus metrics (scope admin): requests by control and decision, denials by reason, ..."
    );
    println!("  curl -s {base}/metrics -H 'Authorization: Bearer {ops}'");
}
