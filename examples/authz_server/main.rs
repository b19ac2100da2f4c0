//! The nhi-guard forward-auth server: `cargo run --example authz_server`.
//!
//! The gateway's whole security stack (identity, scope, rate limits, risk, audit)
//! as a decision service for the edge a team already runs: NGINX `auth_request` and
//! Traefik `ForwardAuth` ask `GET /authz` about each request before forwarding it
//! (see `authz.rs` for what is read and answered, and `nginx.conf` beside this file
//! for a complete NGINX set-up), and Envoy's `ext_authz` filter calls the gRPC
//! `Check` service (`envoy.rs`, `envoy.yaml`). The same controls decide, with the
//! same answers, as in the gateway and the edge proxy; one audit record per request.
//!
//! # Environment
//!
//! Every variable of the `gateway` example (the README's table): `NHI_GUARD_LISTEN`
//! (default `127.0.0.1:8080`), `NHI_GUARD_CLIENTS` (re-read on SIGHUP),
//! `NHI_GUARD_ISSUER`, `NHI_GUARD_JWKS_URL`, `NHI_GUARD_AUDIENCE`,
//! `NHI_GUARD_CA_FILE`, `NHI_GUARD_REDIS_URL`, `NHI_GUARD_AUDIT_LOG`,
//! `NHI_GUARD_RISK_MODE`, `NHI_GUARD_TRUSTED_PROXIES` (list the edge: its
//! forwarding field then gives the client's address), `NHI_GUARD_FORWARDED_HEADER`,
//! `NHI_GUARD_IPV6_PREFIX`, `NHI_GUARD_ADDRESS_LIMIT`, `NHI_GUARD_SHUTDOWN_GRACE`.
//! The routes and their scopes are the gateway's. `NHI_GUARD_GRPC_LISTEN`: where
//! Envoy's `ext_authz` filter reaches the `Check` service (`envoy.rs`; default
//! `127.0.0.1:9191`, `off` to serve only HTTP). Prints `listening on http://ADDR`
//! once it accepts connections; SIGTERM or SIGINT: finish the decisions in flight
//! on both listeners, seal the audit log, exit 0.

#![allow(clippy::print_stdout)]

#[path = "../gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
mod authz;
#[path = "../gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
mod envoy;
#[path = "../gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;
#[path = "../edge_proxy/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use nhi_guard::core::clock::SystemClock;

#[tokio::main]
async fn main() -> ExitCode {
    guard::init_tracing();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("authz_server: {msg}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let get = |k: &str| std::env::var(k).ok();
    let config = config::from_lookup(get)?;
    let registry = guard::load_registry(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("NHI_GUARD_LISTEN={}: cannot listen: {e}", config.listen))?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let base = format!("http://{addr}");

    let grpc = match grpc_listen(config.grpc_listen.as_deref())? {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| format!("NHI_GUARD_GRPC_LISTEN={at}: cannot listen: {e}"))?,
        ),
        None => None,
    };

    let guard = guard::build(&config, registry.clone(), &base, Arc::new(SystemClock)).await?;
    let jwks = guard.demo.as_ref().map(|d| Arc::from(d.jwks_json()));
    let decider = authz::decider(guard.layer.clone());
    let mut servers = vec![(listener, authz::routes(decider.clone(), jwks))];
    guard::reload_on_sighup(registry, &config);

    println!("listening on {base}");
    println!("forward auth at {base}/authz (NGINX auth_request, Traefik ForwardAuth)");
    if let Some(grpc) = grpc {
        let at = grpc
            .local_addr()
            .map_err(|e| format!("NHI_GUARD_GRPC_LISTEN: {e}"))?;
        println!("envoy ext_authz (envoy.service.auth.v3.Authorization/Check) on grpc://{at}");
        servers.push((grpc, envoy::ExtAuthz::router(decider)));
    }
    if let Some(line) = config.trusted_proxies_line() {
        println!("{line}");
    }
    guard::serve_all(servers, &guard, "authz_server", config.shutdown_grace).await
}

/// `NHI_GUARD_GRPC_LISTEN`: where the Envoy `Check` service listens (default
/// `127.0.0.1:9191`; `off`: not served).
fn grpc_listen(value: Option<&str>) -> Result<Option<SocketAddr>, String> {
    match value.map(str::trim) {
        None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9191)))),
        Some("off") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            format!("NHI_GUARD_GRPC_LISTEN={v:?} must be ADDRESS:PORT, such as 127.0.0.1:9191, or off")
        }),
    }
}
