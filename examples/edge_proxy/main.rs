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
//! - `NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT`: seconds (decimals allowed) a connection
//!   to the upstream may take to open (default 5);
//! - `NHI_GUARD_UPSTREAM_TIMEOUT`: seconds the proxy waits for the upstream's
//!   response headers while nothing moves (default 30); each chunk of request body
//!   the upstream takes restarts the wait, so a long upload is not cut off while it
//!   flows;
//! - `NHI_GUARD_MAX_BODY_BYTES`: the largest request body forwarded, in bytes
//!   (default 10485760, 10 MiB);
//! - every variable of the `gateway` example (the README's table): `NHI_GUARD_LISTEN`
//!   (default `127.0.0.1:8080`), `NHI_GUARD_CLIENTS` (re-read on SIGHUP),
//!   `NHI_GUARD_ISSUER`, `NHI_GUARD_JWKS_URL`, `NHI_GUARD_AUDIENCE`,
//!   `NHI_GUARD_CA_FILE`, `NHI_GUARD_REDIS_URL`, `NHI_GUARD_AUDIT_LOG`,
//!   `NHI_GUARD_RISK_MODE`, `NHI_GUARD_TRUSTED_PROXIES`,
//!   `NHI_GUARD_FORWARDED_HEADER`, `NHI_GUARD_IPV6_PREFIX`,
//!   `NHI_GUARD_ADDRESS_LIMIT`, `NHI_GUARD_SHUTDOWN_GRACE`.
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
//! Removed before forwarding:
//!
//! - every field the proxy sets or that upstreams read as if a proxy had set it, so
//!   an upstream can trust them: `x-nhi-*`, `x-forwarded-*` (`X-Forwarded-For`,
//!   `-Host`, `-Proto`, ...), `Forwarded`, `X-Real-IP`, `X-Client-IP`,
//!   `True-Client-IP`, and `X-Original-URL`, `X-Original-URI`, `X-Rewrite-URL`
//!   (which some frameworks route by instead of the path the policy judged);
//! - every field whose name contains `_`: CGI-style servers read `X_API_KEY` or
//!   `X_NHI_CLIENT_ID` as the `-` names, which would smuggle them past these rules;
//! - the credential (`Authorization`, `X-API-Key`: secrets stay at the edge) and
//!   `Host` (set to the upstream's);
//! - the hop-by-hop fields of RFC 9110 §7.6.1 (`Connection` and the fields it
//!   names, `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`,
//!   `Upgrade`) plus `Proxy-Authorization` / `Proxy-Authenticate`. Hop-by-hop
//!   fields are removed from the response as well; its body is streamed back as it
//!   arrives.
//!
//! # What is refused here
//!
//! The upstream sees only what the policy judged. Answered by the proxy as
//! `application/problem+json`, recorded as the request's denial (the audit record
//! names the control and the reason), never forwarded:
//!
//! - `400 request_target_ambiguous` (control `scope`): a path an upstream could
//!   read differently from the policy: dot segments (`..`, `%2e%2E`), `//`, a
//!   backslash, encoded `/`, `\` or unreserved characters;
//! - `400 method_override_refused` (control `edge_proxy`): an
//!   `X-HTTP-Method-Override`, `X-HTTP-Method` or `X-Method-Override` header. The
//!   policy judged the request's own method; stripping the header instead would
//!   silently turn the client's intended `DELETE` into the `POST` it sent, so the
//!   client is told to send the method itself;
//! - `413 request_body_too_large` (control `edge_proxy`): a `Content-Length` above
//!   `NHI_GUARD_MAX_BODY_BYTES`, before any connection to the upstream; a chunked
//!   body that grows past it aborts the upstream request (answered 413 unless the
//!   upstream already answered).
//!
//! When the upstream refuses the connection the client gets `502 Bad Gateway`; when
//! it does not accept it within the connect timeout, or does not answer within the
//! response timeout, `504 Gateway Timeout`; both as `application/problem+json`
//! with the request id.

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
    let limits = proxy::Limits::from_lookup(get)?;
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
    let router = proxy::routes(proxy::Proxy::new(upstream.clone(), limits), jwks, Some(metrics))
        .layer(guard.layer.clone());
    guard::reload_on_sighup(registry.clone(), &config);

    println!("listening on {base}");
    println!("forwarding allowed requests to {upstream} ({limits})");
    if let Some(line) = config.trusted_proxies_line() {
        println!("{line}");
    }
    // The demo's keys and tokens name the demo inventory's clients.
    if let (Some(demo), None) = (&guard.demo, &config.clients) {
        print_demo(&base, demo);
    }

    guard::serve(listener, router, &guard, "edge_proxy", config.shutdown_grace).await
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
