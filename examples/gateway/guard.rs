//! The gateway's security stack: every control, configured from [`Config`].

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nhi_guard::audit::{AuditHandle, AuditLayer, AuditWriter, JsonLinesFile, TracingSink};
use nhi_guard::core::ClientAddrResolver;
use nhi_guard::core::clock::SharedClock;
use nhi_guard::core::config::ConfigError;
use nhi_guard::core::metrics as guard_metrics;
use nhi_guard::core::registry::{ClientRegistry, InMemoryRegistry};
use nhi_guard::core::route::{Route, Routes};
use nhi_guard::identity::{
    DemoIssuer, HttpFetcher, IdentityLayer, Issuer, JwksConfig, JwksFetcher, RemoteKeys, Revocations,
    UngovernedClients,
};
use nhi_guard::ratelimit::store::{FailurePolicy, Quota, RateLimitStore};
use nhi_guard::ratelimit::{AuthFailureLimitLayer, InMemoryRateLimitStore, Limit, RateLimitLayer};
use nhi_guard::risk::{Mode, RiskLayer, RiskOperator, RouteRisk};
use nhi_guard::scope::report::{ReportService, warn_unreachable_rules};
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
    /// Callers whose credential named no client of the inventory.
    pub(crate) ungoverned: UngovernedClients,
    /// Revoked clients, API keys and tokens: this process's set, shared through
    /// Redis when configured.
    pub(crate) revocations: crate::app::RevocationAdmin,
    /// The usage records shared through Redis, flushed once more on shutdown.
    pub(crate) shared_usage: Option<nhi_guard_redis::usage::RedisUsageStore>,
}

impl Guard {
    /// What the gateway's routes serve from the stack: the report, the demo
    /// issuer's key set, the risk decisions, and `metrics` when given.
    pub(crate) fn app_state(&self, metrics: Option<PrometheusHandle>) -> crate::app::AppState {
        crate::app::AppState {
            reports: self.reports.clone(),
            jwks: self.demo.as_ref().map(|d| Arc::from(d.jwks_json())),
            metrics,
            risk: self.risk.clone(),
            ungoverned: self.ungoverned.clone(),
            revocations: self.revocations.clone(),
        }
    }
}

/// The demo's one route table: each route's required scopes and risk attributes
/// declared once. Shared with the edge proxy so both protect the same paths the same
/// way; every layer of the stack matches a request against it once.
pub(crate) fn routes() -> Routes {
    let admin = || Require::all_of("admin");
    Routes::builder()
        .route(Route::get("/healthz").with(Require::public()))
        .route(Route::get("/.well-known/jwks.json").with(Require::public()))
        .route(Route::get("/orders").with(Require::all_of("orders:read")))
        .route(Route::post("/orders").with(Require::all_of("orders:write")))
        // Enumeration on the inventory reads, hoarding on reservations.
        .route(
            Route::get("/inventory/{sku}")
                .with(Require::all_of("inventory:read"))
                .with(RouteRisk::new().group("inventory")),
        )
        .route(
            Route::post("/inventory/{sku}/reserve")
                .with(Require::all_of("inventory:write"))
                .with(RouteRisk::new().scarce()),
        )
        // The inventory report: more sensitive.
        .route(
            Route::get("/admin/clients").with(admin()).with(
                RouteRisk::new()
                    .sensitivity(1.5)
                    .expect("constant weight is valid"),
            ),
        )
        .route(Route::get("/admin/risk/decisions").with(admin()))
        .route(Route::get("/admin/clients/ungoverned").with(admin()))
        .route(Route::get("/admin/revocations").with(admin()))
        .route(Route::post("/admin/revocations").with(admin()))
        .route(Route::delete("/admin/revocations/{id}").with(admin()))
        .route(Route::get("/metrics").with(admin()))
        .build()
        .expect("the demo route table is valid")
}

/// The scope policy of a route table.
pub(crate) fn policy(routes: &Routes) -> Policy {
    Policy::from_routes(routes).expect("the demo's requirements are valid")
}

/// Installs the process-wide Prometheus recorder of the `metrics` facade. Call it
/// before building the stack: each layer resolves its counters on its first
/// request. The risk score is a true Prometheus histogram (buckets of 10 points),
/// and so is the decision time (core's `DECISION_DURATION_BUCKETS`);
/// a background task drains histogram samples every 5 s so memory stays bounded
/// when nobody scrapes.
///
/// # Errors
/// Another recorder is already installed.
pub(crate) fn install_metrics() -> Result<PrometheusHandle, String> {
    let buckets: Vec<f64> = (0..=10).map(|i| f64::from(i) * 10.0).collect();
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(guard_metrics::RISK_SCORE.to_owned()), &buckets)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(guard_metrics::DECISION_DURATION_SECONDS.to_owned()),
                &guard_metrics::DECISION_DURATION_BUCKETS,
            )
        })
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

/// The fetcher of issuer metadata and key sets: http, and https against the
/// platform's trust anchors plus those of `NHI_GUARD_CA_FILE`.
fn jwks_fetcher(config: &Config) -> Result<Arc<dyn JwksFetcher>, String> {
    let mut builder = HttpFetcher::builder().timeout(JwksConfig::default().timeout);
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("NHI_GUARD_CA_FILE={}: {e}", path.display()))?;
        builder = builder
            .add_root_certificates_pem(&pem)
            .map_err(|e| format!("NHI_GUARD_CA_FILE={}: {e}", path.display()))?;
    }
    Ok(Arc::new(builder.build()))
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
    let resolver = ClientAddrResolver::new()
        .trust_proxies(config.trusted_proxies.iter().copied())
        .header(config.forwarded_header)
        .ipv6_prefix(config.ipv6_prefix)
        .map_err(|e| format!("NHI_GUARD_IPV6_PREFIX: {e}"))?;

    // Identity: external issuers (JWKS discovered, fetched and refreshed over http
    // or https) or the demo issuer.
    // Callers whose credential names no client of the inventory are refused and
    // recorded (bounded) for the report.
    let ungoverned = UngovernedClients::new(1_000);
    // Revocations made at /admin/revocations hold at once for every request.
    let revocations = Revocations::new();
    let mut identity = IdentityLayer::builder(registry.clone())
        .ungoverned(ungoverned.clone())
        .revocations(revocations.clone());
    let demo = if config.issuers.is_empty() {
        let demo =
            DemoIssuer::new(public_url, config.audience.as_str()).map_err(|e| format!("demo issuer: {e}"))?;
        identity = identity.issuer(demo.issuer());
        Some(demo)
    } else {
        let fetcher = jwks_fetcher(config)?;
        for iss in &config.issuers {
            let keys = match &config.jwks_url {
                Some(url) => RemoteKeys::with_fetcher(url, JwksConfig::default(), fetcher.clone())
                    .map_err(|e| format!("NHI_GUARD_JWKS_URL: {e}"))?,
                None => RemoteKeys::discover_with_fetcher(iss, JwksConfig::default(), fetcher.clone())
                    .await
                    .map_err(|e| {
                        let hint = if e.to_string().contains("not trusted") {
                            "; if a private CA issued its certificate, set NHI_GUARD_CA_FILE to that CA's PEM bundle"
                        } else {
                            ""
                        };
                        format!("NHI_GUARD_ISSUER: {iss}: {e}{hint}")
                    })?,
            };
            if let Err(e) = keys.refresh().await {
                tracing::warn!(issuer = %iss, error = %e, "first JWKS fetch failed; retrying in the background");
            }
            keys.spawn_refresh();
            identity = identity.issuer(
                Issuer::new(iss.as_str())
                    .audience(config.audience.as_str())
                    .remote_keys(keys),
            );
        }
        None
    };

    // Scope, with the usage store behind the least-privilege report.
    // With Redis, every replica's records are shared: a client seen on any replica
    // is not stale in this one's report.
    let shared_usage = match &config.redis_url {
        Some(target) => Some(
            nhi_guard_redis::usage::RedisUsageStore::connect(target, "nhi-guard:")
                .await
                .map_err(|e| format!("NHI_GUARD_REDIS_URL: scope usage: {e}"))?,
        ),
        None => None,
    };
    let usage: SharedUsageStore = match &shared_usage {
        Some(store) => Arc::new(store.clone()),
        None => Arc::new(InMemoryUsageStore::default()),
    };
    let routes = config.routes.clone().unwrap_or_else(routes);
    let scope = ScopeLayer::new(policy(&routes)).usage_store(usage.clone());
    let reports = ReportService::new(registry.clone(), usage)
        .clock(clock.clone())
        .policy(policy(&routes));

    // Rate limits: by address before authentication, failed authentications, and
    // per client at its inventory tier after.
    let shared: Option<Arc<dyn RateLimitStore>> = match &config.redis_url {
        Some(target) => Some(Arc::new(
            // Keep limiting on this replica's own counters while Redis is unreachable.
            nhi_guard_redis::RedisStore::builder(target)
                .key_prefix("nhi-guard:rl:")
                .timeout(config.redis_timeout)
                .failure_policy(FailurePolicy::FallbackLocal)
                .fallback_store(Arc::new(InMemoryRateLimitStore::new()))
                .build_lazy()
                .map_err(|e| format!("NHI_GUARD_REDIS_URL: {e}"))?,
        )),
        None => None,
    };
    // The flood shield in front of identity: anonymous traffic and failed
    // credentials count per address; a verified client is governed by its tier
    // alone, however many of its calls share one address (NAT, batch host, sidecar).
    let (mut address_limit, mut client_limit) = limits(config).map_err(|e| e.to_string())?;
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
            let mut layer = risk_layer(mode);
            if let Some(target) = &config.redis_url {
                let store = nhi_guard_redis::risk::RedisRiskStore::connect(
                    target,
                    "nhi-guard:risk:",
                    config.redis_timeout,
                )
                .await
                .map_err(|e| format!("NHI_GUARD_REDIS_URL: {e}"))?;
                layer = layer.shared_store(Arc::new(store));
            }
            Some(layer)
        }
    };
    let operator = risk.as_ref().map(RiskLayer::operator);

    // Revocations: shared by every replica through Redis when configured.
    let shared_revocations = match &config.redis_url {
        Some(target) => Some(
            nhi_guard_redis::revocations::RedisRevocations::start(target, "nhi-guard:", revocations.clone())
                .await
                .map_err(|e| format!("NHI_GUARD_REDIS_URL: revocations: {e}"))?,
        ),
        None => None,
    };

    // Audit: JSON Lines with a hash chain, or tracing events.
    let mut writer = AuditWriter::builder().clock(clock.clone());
    if let Some(path) = &config.audit_key_file {
        let key = nhi_guard::audit::CheckpointKey::from_file(path)
            .map_err(|e| format!("NHI_GUARD_AUDIT_KEY_FILE: {e}"))?;
        writer = writer.checkpoint_key(key);
    }
    if let Some(path) = &config.audit_signing_key_file {
        let signer = nhi_guard::audit::CheckpointSigner::from_pem_file(path)
            .map_err(|e| format!("NHI_GUARD_AUDIT_SIGNING_KEY_FILE: {e}"))?;
        tracing::info!(public_key = %signer.public_key().hex(), "audit checkpoints are signed (Ed25519)");
        writer = writer.checkpoint_signer(signer);
    }
    let spawned = match &config.audit_log {
        Some(path) => {
            let file = JsonLinesFile::open(path)
                .map_err(|e| format!("NHI_GUARD_AUDIT_LOG={}: {e}", path.display()))?;
            writer.spawn(file)
        }
        None => writer.spawn(TracingSink::new()),
    };
    let (writer, audit_handle) = spawned.map_err(|e| format!("audit writer: {e}"))?;
    let audit = AuditLayer::new(writer)
        .service_name("nhi-guard-gateway")
        .sample_allowed(config.audit_sample_allowed)
        .map_err(|e| format!("NHI_GUARD_AUDIT_SAMPLE_ALLOWED: {e}"))?;

    let mut builder = NhiGuard::builder(registry)
        .clock(clock)
        .client_addr_resolver(resolver)
        .realm("nhi-guard-demo")
        .audit(audit)
        .address_rate_limit(address_limit)
        .auth_failure_limit(failures)
        .identity(identity)
        .rate_limit(client_limit)
        .scope(scope)
        .routes(routes);
    if let Some(risk) = risk {
        builder = builder.risk(risk);
    }
    let layer = builder
        .build()
        .map_err(|e| match (&config.clients, e.control(), e.field()) {
            // The inventory breaks what the configured issuers require of it.
            (Some(path), "identity", "registry") => format!("NHI_GUARD_CLIENTS={}: {e}", path.display()),
            _ => e.to_string(),
        })?;
    Ok(Guard {
        layer,
        audit: audit_handle,
        demo,
        reports,
        risk: operator,
        ungoverned,
        revocations: crate::app::RevocationAdmin {
            local: revocations,
            shared: shared_revocations,
        },
        shared_usage,
    })
}

/// The flood shield in front of identity (per address, verified clients exempt)
/// and the per-client limit at each client's inventory tier.
fn limits(config: &Config) -> Result<(RateLimitLayer, RateLimitLayer), ConfigError> {
    let address = RateLimitLayer::new()
        .limit(Limit::per_address("per-address", config.address_limit).exempt_verified())?;
    let mut client = RateLimitLayer::new().limit(Limit::per_client("per-client"))?;
    // The configuration file's route groups: a quota per client and group.
    if !config.rate_groups.is_empty() {
        let per_group = config.rate_groups.iter().fold(
            Limit::per_client_route("per-client-route"),
            |l, (group, quota)| l.route_quota(group, *quota),
        );
        client = client.limit(per_group)?;
    }
    Ok((address, client))
}

/// Risk; its routes are the route table's (given to the whole stack).
fn risk_layer(mode: Mode) -> RiskLayer {
    RiskLayer::new()
        .mode(mode)
        // The bulk tier's clients read and reserve in volume by contract.
        .bulk_tier("bulk")
}

/// Serves `router` (recording each connection's peer address for the client-address
/// resolver) until SIGTERM or SIGINT; then stops accepting connections, lets the
/// requests in flight finish for up to `grace`, and writes every audit record still
/// queued and the log's final checkpoint.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    guard: &Guard,
    program: &str,
    grace: Duration,
) -> Result<(), String> {
    serve_all(vec![(listener, router)], guard, program, grace).await
}

/// [`serve`] for several listeners, each with its router, stopped together: the
/// audit log is sealed once every one of them has finished.
pub(crate) async fn serve_all(
    servers: Vec<(tokio::net::TcpListener, axum::Router)>,
    guard: &Guard,
    program: &str,
    grace: Duration,
) -> Result<(), String> {
    let signals = stop_signal()?;
    let (stop, _) = tokio::sync::watch::channel(false);
    // The block owns the servers: leaving it closes whatever connections the grace
    // period left open, before the audit log is sealed.
    let served = {
        // Dropping the set (leaving the block) aborts the servers still running.
        let mut tasks = tokio::task::JoinSet::new();
        for (listener, router) in servers {
            let mut stopping = stop.subscribe();
            tasks.spawn(
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                })
                .into_future(),
            );
        }
        let server = async {
            while let Some(joined) = tasks.join_next().await {
                joined.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        tokio::pin!(server);
        tokio::select! {
            served = &mut server => served,
            signal = signals => {
                tracing::info!(signal, grace_secs = grace.as_secs(), "stopping: no new connections, finishing requests in flight");
                stop.send_replace(true);
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!(grace_secs = grace.as_secs(), "grace period over: closing the connections still open");
                        Ok(())
                    }
                }
            }
        }
    }
    .map_err(|e| format!("server error: {e}"));
    // The last second of usage records reaches the other replicas.
    if let Some(usage) = &guard.shared_usage
        && let Err(e) = usage.flush().await
    {
        tracing::warn!(error = %e, "scope usage not flushed to redis on shutdown");
    }
    // The audit records of every answered request are queued by now.
    match guard.audit.shutdown().await {
        Ok(stats) => tracing::info!(written = stats.written, "audit log flushed and sealed"),
        Err(e) => eprintln!("{program}: audit flush failed: {e}"),
    }
    served
}

/// Resolves with the name of the first stop signal: SIGTERM (Kubernetes, systemd,
/// Docker) or SIGINT (Ctrl-C). The handlers are installed before it returns, so a
/// signal arriving before the future is polled is not lost.
fn stop_signal() -> Result<impl std::future::Future<Output = &'static str>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

/// Re-reads `NHI_GUARD_CLIENTS` on SIGHUP. The new inventory is swapped in
/// atomically (requests in flight finish with the one they started with); a file
/// that does not load, or breaks what the controls require of it (with several
/// issuers, every client names its own), leaves the current one. Policy rules no
/// client of the new inventory can pass are logged and counted, never refused.
pub(crate) fn reload_on_sighup(registry: Arc<InMemoryRegistry>, config: &Config) {
    #[cfg(unix)]
    if let Some(path) = config.clients.clone() {
        let policy = policy(&config.routes.clone().unwrap_or_else(routes));
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                match registry.reload_from_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), clients = registry.clients().len(), "inventory reloaded");
                        warn_unreachable_rules(&policy, &*registry);
                    }
                    Err(e) => tracing::error!(error = %e, "inventory reload failed; keeping the current one"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (registry, config);
}

/// Logs to stderr at `RUST_LOG` (default `info`); stdout stays for the
/// `listening on` line and the demo commands.
pub(crate) fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        // Colour codes only for a terminal, not in a journal or a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The inventory from `NHI_GUARD_CLIENTS`, or the built-in demo inventory (only
/// with the demo issuer on a loopback address: its keys are published).
pub(crate) fn load_registry(config: &Config) -> Result<Arc<InMemoryRegistry>, String> {
    Ok(Arc::new(match &config.clients {
        Some(path) => InMemoryRegistry::from_toml_file(path)
            .map_err(|e| format!("NHI_GUARD_CLIENTS={}: {e}", path.display()))?,
        None if config.demo_inventory_allowed() => {
            InMemoryRegistry::new(crate::app::demo_inventory(std::time::SystemTime::now()))
        }
        None => return Err("NHI_GUARD_CLIENTS is not set: the demo inventory serves only the demo issuer on a loopback address".into()),
    }))
}
