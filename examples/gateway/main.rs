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
//! - `NHI_GUARD_AUDIT_SAMPLE_ALLOWED`: the share of allowed requests audited (0 to 1).
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
    guard::init_tracing();
    match server::run(|k| std::env::var(k).ok()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("gateway: {msg}");
            ExitCode::from(2)
        }
    }
}
