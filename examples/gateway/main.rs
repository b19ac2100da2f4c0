//! The nhi-guard demo gateway: `cargo run --example gateway`.
//!
//! Every control in front of a small orders / inventory API. Environment (all
//! optional; an invalid value stops start-up with a message naming the variable):
//! - `NHI_GUARD_CONFIG`: a TOML file with the same settings (keys named after the
//!   variables), the route table (`[[route]]`) and route-group quotas
//!   (`[[rate_group]]`); see `nhi-guard.toml` beside this file. Variables override it;
//! - `NHI_GUARD_LISTEN` (default `127.0.0.1:8080`);
//! - `NHI_GUARD_CLIENTS`: a TOML client inventory, re-read on SIGHUP (default: a
//!   built-in demo inventory, only with the demo issuer on a loopback address);
//! - `NHI_GUARD_ISSUER` (comma-separated, each discovered), `NHI_GUARD_JWKS_URL`
//!   (one issuer only), `NHI_GUARD_AUDIENCE`, `NHI_GUARD_CA_FILE`: external token
//!   issuers over http or https (default: an in-process demo issuer whose JWKS is
//!   served at `/.well-known/jwks.json`);
//! - `NHI_GUARD_REDIS_URL`: share rate limits and risk state through Redis (one
//!   URL, `rediss://` for TLS, or a Redis Cluster's seeds, comma-separated);
//!   `NHI_GUARD_REDIS_CA_FILE`, `NHI_GUARD_REDIS_TIMEOUT_MS`;
//! - `NHI_GUARD_AUDIT_LOG`: append the audit log (JSON Lines, hash-chained) to a file;
//! - `NHI_GUARD_RISK_MODE`: `enforce` (default), `shadow` or `off`;
//! - `NHI_GUARD_TRUSTED_PROXIES`, `NHI_GUARD_FORWARDED_HEADER`: proxies whose
//!   forwarding header (`x-forwarded-for` or `forwarded`) is believed;
//! - `NHI_GUARD_IPV6_PREFIX`: the prefix IPv6 clients are limited and scored by;
//! - `NHI_GUARD_ADDRESS_LIMIT`: `PER_SECOND:BURST` of the per-address flood shield
//!   (verified clients are limited by their tier instead);
//! - `NHI_GUARD_SHUTDOWN_GRACE`: seconds requests in flight get after SIGTERM / SIGINT;
//! - `NHI_GUARD_AUDIT_SAMPLE_ALLOWED`: the share of allowed requests audited (0 to 1);
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (built with `--features otel`): also export the
//!   request spans over OTLP/gRPC to that collector (`OTEL_SERVICE_NAME`, default
//!   `nhi-guard-gateway`); metrics stay at `GET /metrics`.
//!
//! Prints `listening on http://ADDR` once it accepts connections, then commands to try.
//! `GET /metrics` (scope `admin`) serves the guard's metrics in Prometheus text format.
//! SIGTERM or SIGINT: stop accepting, finish requests in flight, seal the audit log,
//! exit 0.

#![allow(clippy::print_stdout)]

mod app;
mod config;
mod guard;
mod server;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    #[cfg(feature = "otel")]
    let telemetry = init_otel();
    #[cfg(not(feature = "otel"))]
    guard::init_tracing();
    let code = match server::run(|k| std::env::var(k).ok()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("gateway: {msg}");
            ExitCode::from(2)
        }
    };
    #[cfg(feature = "otel")]
    if let Some(telemetry) = telemetry
        && let Err(e) = telemetry.shutdown()
    {
        eprintln!("gateway: {e}");
    }
    code
}

/// The gateway's logging, plus the request spans exported over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
#[cfg(feature = "otel")]
fn init_otel() -> Option<nhi_guard::otel::Telemetry> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") else {
        guard::init_tracing();
        return None;
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "nhi-guard-gateway".to_owned());
    let telemetry = match nhi_guard::otel::Telemetry::otlp(&service, Some(&endpoint)) {
        Ok(t) => t,
        Err(e) => {
            guard::init_tracing();
            tracing::error!(error = %e, "OpenTelemetry export is off");
            return None;
        }
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .with(telemetry.tracing_layer())
        .init();
    Some(telemetry)
}
