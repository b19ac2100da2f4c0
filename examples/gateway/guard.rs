//! The gateway's security stack: every control, configured from [`Config`].

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nhi_guard::audit::{AuditHandle, AuditLayer, AuditWriter, JsonLinesFile, TracingSink};
use nhi_guard::core::ClientAddrResolver;
use nhi_guard::core::clock::SharedClock;
use nhi_guard::core::metrics as guard_metrics;
use nhi_guard::core::registry::InMemoryRegistry;
use nhi_guard::core::store::{FailurePolicy, Quota, RateLimitStore};
use nhi_guard::identity::{DemoIssuer, IdentityLayer, Issuer, JwksConfig, RemoteKeys};
use nhi_guard::ratelimit::{AuthFailureLimitLayer, InMemoryStore, Limit, RateLimitLayer};
use nhi_guard::risk::{Mode, RiskLayer, RiskOperator, Route};
use nhi_guard::scope::report::ReportService;
use nhi_guard::scope::{InMemoryUsageStore, Policy, Require, ScopeLayer, SharedUsageStore};
use nhi_guard::{NhiGuard, NhiGuardLayer};

use crate::config::{Config, RiskMode};

/// What `main` needs besides the layer.
pub(crate) struct Guard {
    /// The composed stack.
    pub(crate) layer: NhiGuardLayer,
    /// Flushes the audit log on shutdown.
    pub(crate) audit: AuditHandle,
    /// The in-process issuer when no external one is configured.
    pub(crate) demo: Option<DemoIssuer>,
    /// The least-privilege report behind `GET /admin/clients`.
    pub(crate) reports: ReportService,
    /// Lists and lifts risk blocks.
    pub(crate) risk: Option<RiskOperator>,
}

/// The demo routes' scope policy. Shared with the edge proxy so both protect the
/// same paths the same way.
pub(crate) fn policy() -> Policy {
    Policy::builder()
        .public(http::Method::GET, "/healthz")
        .public(http::Method::GET, "/.well-known/jwks.json")
        .get("/orders", Require::all_of("orders:read"))
        .post("/orders", Require::all_of("orders:write"))
        .get("/inventory/{sku}", Require::all_of("inventory:read"))
        .post("/inventory/{sku}/reserve", Require::all_of("inventory:write"))
        .get("/admin/clients", Require::all_of("admin"))
        .get("/metrics", Require::all_of("admin"))
        .build()
        .expect("the demo policy is valid")
}

/// Installs the process-wide Prometheus recorder of the `metrics` facade. Call it
/// before building the stack: each layer resolves its counters on its first
/// request. The risk score is a true Prometheus histogram (buckets of 10 points);
/// a background task drains histogram samples every 5 s so memory stays bounded
/// when nobody scrapes.
///
/// # Errors
/// Another recorder is already installed.
pub(crate) fn install_metrics() -> Result<PrometheusHandle, String> {
    let buckets: Vec<f64> = (0..=10).map(|i| f64::from(i) * 10.0).collect();
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(guard_metrics::RISK_SCORE.to_owned()), &buckets)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("metrics recorder: {e}"))?;
    guard_metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(per_second)
        .and_then(|q| q.with_burst(burst))
        .expect("constant quotas are valid")
}

/// Builds the stack. `public_url` is the gateway's own address (the demo issuer's
/// `iss`).
/// `clock` is the time of every control (tests pass a manual one).
pub(crate) async fn build(
    config: &Config,
    registry: Arc<InMemoryRegistry>,
    public_url: &str,
    clock: SharedClock,
) -> Result<Guard, String> {
    let resolver = ClientAddrResolver::new().trust_proxies(config.trusted_proxies.iter().copied());

    // Identity: an external issuer (JWKS fetched and refreshed) or the demo issuer.
    let (issuer, demo) = match &config.issuer {
        Some(iss) => {
            let keys = match &config.jwks_url {
                Some(url) => RemoteKeys::new(url, JwksConfig::default())
                    .map_err(|e| format!("NHI_GUARD_JWKS_URL: {e}"))?,
                None => RemoteKeys::discover(iss, JwksConfig::default())
                    .await
                    .map_err(|e| format!("NHI_GUARD_ISSUER: discovery failed: {e}"))?,
            };
            if let Err(e) = keys.refresh().await {
                tracing::warn!(error = %e, "first JWKS fetch failed; retrying in the background");
            }
            keys.spawn_refresh();
            (
                Issuer::new(iss.as_str())
                    .audience(config.audience.as_str())
                    .remote_keys(keys),
                None,
            )
        }
        None => {
            let demo = DemoIssuer::new(public_url, config.audience.as_str())
                .map_err(|e| format!("demo issuer: {e}"))?;
            (demo.issuer(), Some(demo))
        }
    };
    let identity = IdentityLayer::builder(registry.clone()).issuer(issuer);

    // Scope, with the usage store behind the least-privilege report.
    let usage: SharedUsageStore = Arc::new(InMemoryUsageStore::default());
    let scope = ScopeLayer::new(policy()).usage_store(usage.clone());
    let reports = ReportService::new(registry.clone(), usage).clock(clock.clone());

    // Rate limits: by address before authentication, failed authentications, and
    // per client at its inventory tier after.
    let shared: Option<Arc<dyn RateLimitStore>> = match &config.redis_url {
        Some(url) => Some(Arc::new(
            // Keep limiting on this replica's own counters while Redis is unreachable.
            nhi_guard_redis::RedisStore::builder(url.as_str())
                .key_prefix("nhi-guard:rl:")
                .failure_policy(FailurePolicy::FallbackLocal)
                .fallback_store(Arc::new(InMemoryStore::new()))
                .build_lazy()
                .map_err(|e| format!("NHI_GUARD_REDIS_URL: {e}"))?,
        )),
        None => None,
    };
    let mut address_limit = RateLimitLayer::new()
        .limit(Limit::per_address("per-address", quota(100, 200)))
        .map_err(|e| e.to_string())?;
    let mut client_limit = RateLimitLayer::new()
        .limit(Limit::per_client("per-client"))
        .map_err(|e| e.to_string())?;
    if let Some(store) = &shared {
        address_limit = address_limit.shared_store(store.clone());
        client_limit = client_limit.shared_store(store.clone());
    }
    let failures = AuthFailureLimitLayer::new(
        Quota::per_minute(6)
            .and_then(|q| q.with_burst(10))
            .expect("constant quota is valid"),
    );

    // Risk: enumeration on the inventory reads, hoarding on reservations.
    let mode = match config.risk_mode {
        RiskMode::Enforce => Some(Mode::Enforce),
        RiskMode::Shadow => Some(Mode::Shadow),
        RiskMode::Off => None,
    };
    let risk = match mode {
        None => None,
        Some(mode) => {
            let mut layer = RiskLayer::new()
                .mode(mode)
                .route(
                    Route::new("GET", "/inventory/{sku}")
                        .map_err(|e| e.to_string())?
                        .group("inventory"),
                )
                .map_err(|e| e.to_string())?
                .route(
                    Route::new("POST", "/inventory/{sku}/reserve")
                        .map_err(|e| e.to_string())?
                        .scarce(),
                )
                .map_err(|e| e.to_string())?
                .route(
                    Route::new("GET", "/admin/clients")
                        .and_then(|r| r.sensitivity(1.5))
                        .map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
            if let Some(url) = &config.redis_url {
                let store = nhi_guard_redis::risk::RedisRiskStore::connect(
                    url,
                    "nhi-guard:risk:",
                    Duration::from_millis(50),
                )
                .await
                .map_err(|e| format!("NHI_GUARD_REDIS_URL: {e}"))?;
                layer = layer.shared_store(Arc::new(store));
            }
            Some(layer)
        }
    };
    let operator = risk.as_ref().map(RiskLayer::operator);

    // Audit: JSON Lines with a hash chain, or tracing events.
    let writer = AuditWriter::builder().clock(clock.clone());
    let spawned = match &config.audit_log {
        Some(path) => {
            let file = JsonLinesFile::open(path)
                .map_err(|e| format!("NHI_GUARD_AUDIT_LOG={}: {e}", path.display()))?;
            writer.spawn(file)
        }
        None => writer.spawn(TracingSink::new()),
    };
    let (writer, audit_handle) = spawned.map_err(|e| format!("audit writer: {e}"))?;
    let audit = AuditLayer::new(writer).service_name("nhi-guard-gateway");

    let mut builder = NhiGuard::builder(registry)
        .clock(clock)
        .client_addr_resolver(resolver)
        .realm("nhi-guard-demo")
        .audit(audit)
        .address_rate_limit(address_limit)
        .auth_failure_limit(failures)
        .identity(identity)
        .rate_limit(client_limit)
        .scope(scope);
    if let Some(risk) = risk {
        builder = builder.risk(risk);
    }
    let layer = builder.build().map_err(|e| e.to_string())?;
    Ok(Guard {
        layer,
        audit: audit_handle,
        demo,
        reports,
        risk: operator,
    })
}

/// Serves `router` (recording each connection's peer address for the client-address
/// resolver) until Ctrl-C, then writes every audit record still queued.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    guard: &Guard,
    program: &str,
) -> Result<(), String> {
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| format!("server error: {e}"));
    if let Err(e) = guard.audit.shutdown().await {
        eprintln!("{program}: audit flush failed: {e}");
    }
    served
}

/// Re-reads `NHI_GUARD_CLIENTS` on SIGHUP; a bad file leaves the current inventory.
pub(crate) fn reload_on_sighup(registry: Arc<InMemoryRegistry>, path: Option<std::path::PathBuf>) {
    #[cfg(unix)]
    if let Some(path) = path {
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                match registry.reload_from_file(&path) {
                    Ok(()) => tracing::info!(path = %path.display(), "inventory reloaded"),
                    Err(e) => tracing::error!(error = %e, "inventory reload failed; keeping the current one"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (registry, path);
}

/// Logs to stderr at `RUST_LOG` (default `info`); stdout stays for the
/// `listening on` line and the demo commands.
pub(crate) fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The inventory from `NHI_GUARD_CLIENTS`, or the built-in demo inventory.
pub(crate) fn load_registry(config: &Config) -> Result<Arc<InMemoryRegistry>, String> {
    Ok(Arc::new(match &config.clients {
        Some(path) => InMemoryRegistry::from_toml_file(path)
            .map_err(|e| format!("NHI_GUARD_CLIENTS={}: {e}", path.display()))?,
        None => InMemoryRegistry::new(crate::app::demo_inventory(std::time::SystemTime::now())),
    }))
}
