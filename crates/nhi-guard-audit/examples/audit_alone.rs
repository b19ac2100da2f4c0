//! The audit layer on its own in front of a plain axum app.
//!
//! ```text
//! cargo run -p nhi-guard-audit --example audit_alone
//! NHI_GUARD_AUDIT_LOG=/tmp/audit.jsonl cargo run -p nhi-guard-audit --example audit_alone
//! curl -i localhost:3000/orders/42
//! cargo run -p nhi-guard-audit --example audit_verify -- /tmp/audit.jsonl
//! ```
//!
//! With `NHI_GUARD_AUDIT_LOG=<path>` records are appended to that JSON Lines file
//! (rotated at 64 MiB); without it they go to stdout as `tracing` events. Ctrl-C
//! shuts down gracefully: the writer flushes and seals the log before exit.
//! `NHI_GUARD_ADDR` sets the listening address (default 127.0.0.1:3000).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use nhi_guard_audit::{AuditLayer, AuditWriter, JsonLinesFile, TracingSink};

async fn order(Path(id): Path<u32>) -> String {
    format!("{{\"order\":{id}}}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let builder = AuditWriter::builder();
    let (writer, handle) = match std::env::var_os("NHI_GUARD_AUDIT_LOG") {
        Some(path) => builder.spawn(JsonLinesFile::open(path)?.rotate_at(64 << 20)?)?,
        None => builder.spawn(TracingSink::new())?,
    };
    let app = Router::new().route("/orders/{id}", get(order)).layer(
        AuditLayer::new(writer)
            .service_name("orders-api")
            .allow_header("user-agent")?,
    );

    let addr: SocketAddr = std::env::var("NHI_GUARD_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    let stats = handle.shutdown().await?;
    tracing::info!(
        written = stats.written,
        dropped = stats.dropped,
        "audit log flushed"
    );
    Ok(())
}
