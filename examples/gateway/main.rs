//! The nhi-guard demo gateway: `cargo run --example gateway`.
//!
//! Environment (all optional):
//! - `NHI_GUARD_LISTEN` (default `127.0.0.1:8080`);
//! - `NHI_GUARD_CLIENTS`: a TOML client inventory (default: a built-in demo inventory);
//! - `NHI_GUARD_TRUSTED_PROXIES`: comma-separated CIDRs of proxies whose
//!   `Forwarded` / `X-Forwarded-For` headers are believed.
//!
//! Prints `listening on http://ADDR` once it accepts connections.

#![allow(clippy::print_stdout)]

mod app;
mod config;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use nhi_guard::core::registry::InMemoryRegistry;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = match config::from_lookup(|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("gateway: {msg}");
            return ExitCode::from(2);
        }
    };
    let registry = match &config.clients {
        Some(path) => match InMemoryRegistry::from_toml_file(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("gateway: NHI_GUARD_CLIENTS={}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => InMemoryRegistry::new(app::demo_inventory(SystemTime::now())),
    };
    let state = app::AppState {
        registry: Arc::new(registry),
    };
    let router = app::routes(state);

    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gateway: NHI_GUARD_LISTEN={}: cannot listen: {e}", config.listen);
            return ExitCode::from(2);
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    println!("listening on http://{addr}");
    if !config.trusted_proxies.is_empty() {
        let nets: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
        println!("believing Forwarded / X-Forwarded-For from {}", nets.join(", "));
    }
    if config.clients.is_none() {
        println!("demo inventory loaded; try:");
        println!("  curl -s http://{addr}/healthz");
        println!("  curl -s http://{addr}/orders");
        println!("  curl -s http://{addr}/inventory/sku-123");
    }
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    if let Err(e) = server.await {
        eprintln!("gateway: server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
