//! The gateway's routes and demo inventory, shared by `main.rs` and the tests in
//! `tests/gateway.rs`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::collections::HashMap;

use axum::extract::{Path, Query, RawQuery};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Extension, body::Bytes};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use nhi_guard::core::registry::ApiKeyHash;
use nhi_guard::core::registry::{ClientRecord, Inventory, Tier};
use nhi_guard::core::{ClientId, SecurityContext};
use nhi_guard::core::{ScopeSet, rfc3339};
use nhi_guard::identity::{Revocation, Revocations, Revoked, UngovernedClients, UngovernedSnapshot};
use nhi_guard::risk::RiskOperator;
use nhi_guard::risk::store::RiskKey;
use nhi_guard::scope::report::ReportService;
use nhi_guard_redis::revocations::RedisRevocations;
use serde_json::{Value, json};

/// The demo's secrets are printed at start-up so the demo can be tried; real
/// deployments register only hashes.
pub(crate) const DEMO_API_KEYS: &[(&str, &str)] = &[
    ("inventory-sync", "nhik_demo_inventory_sync_7d1f3a9c2b"),
    ("reporting-bot", "nhik_demo_reporting_bot_51e0c6a4f8"),
    ("partner-feed", "nhik_demo_partner_feed_c93b07d2e1"),
    ("ops-console", "nhik_demo_ops_console_4a8e2f6b90"),
];

fn scopes(s: &str) -> ScopeSet {
    ScopeSet::parse(s).expect("demo scopes are valid")
}

fn key_of(id: &str) -> &'static str {
    DEMO_API_KEYS
        .iter()
        .find(|(c, _)| *c == id)
        .map(|(_, k)| *k)
        .expect("every demo client has a key")
}

/// Three integrations with distinct scopes and tiers, plus an operator console
/// that may read the inventory report.
pub(crate) fn demo_inventory(now: SystemTime) -> Inventory {
    let in_days = |d: u64| now + Duration::from_secs(d * 86_400);
    let client = |id: &str, owner: &str, purpose: &str, expires, s: &str, tier: &str| {
        ClientRecord::builder(id, owner, purpose, expires)
            .scopes(scopes(s))
            .tier(tier)
            .api_key(key_of(id))
            .label("source", "demo")
    };
    Inventory::builder()
        .tier(
            "standard",
            Tier {
                per_second: 50,
                burst: 100,
            },
        )
        .tier(
            "bulk",
            Tier {
                per_second: 200,
                burst: 400,
            },
        )
        .tier(
            "partner",
            Tier {
                per_second: 5,
                burst: 10,
            },
        )
        .client(
            client(
                "inventory-sync",
                "fulfilment-team@example.com",
                "Syncs stock levels from the warehouse system",
                in_days(180),
                "orders:read orders:write inventory:read inventory:write",
                "standard",
            )
            .spiffe_id("spiffe://example.test/ns/prod/sa/inventory-sync")
            .build()
            .expect("demo client"),
        )
        .client(
            client(
                "reporting-bot",
                "analytics@example.com",
                "Builds the nightly sales report",
                in_days(10),
                "orders:read",
                "bulk",
            )
            .build()
            .expect("demo client"),
        )
        .client(
            client(
                "partner-feed",
                "partnerships@example.com",
                "Publishes stock availability to a reseller",
                in_days(365),
                "inventory:read",
                "partner",
            )
            .network("127.0.0.0/8".parse().expect("net"))
            .network("::1/128".parse().expect("net"))
            .build()
            .expect("demo client"),
        )
        .client(
            client(
                "ops-console",
                "platform-team@example.com",
                "Operators' view of the client inventory",
                in_days(90),
                "admin",
                "default",
            )
            .build()
            .expect("demo client"),
        )
        .build()
        .expect("demo inventory is valid")
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The least-privilege report behind `GET /admin/clients`.
    pub(crate) reports: ReportService,
    /// The demo issuer's JWKS, served at `/.well-known/jwks.json`.
    pub(crate) jwks: Option<Arc<str>>,
    /// The Prometheus rendering of the guard's metrics, served at `GET /metrics`
    /// (scope `admin`).
    pub(crate) metrics: Option<PrometheusHandle>,
    /// The risk layer's operator handle, behind `GET /admin/risk/decisions`
    /// (scope `admin`); `None` with risk off.
    pub(crate) risk: Option<RiskOperator>,
    /// Callers whose credential named no client of the inventory, behind
    /// `GET /admin/clients/ungoverned` and in the report (scope `admin`).
    pub(crate) ungoverned: UngovernedClients,
    /// Revoked clients, API keys and tokens, managed at `/admin/revocations`
    /// (scope `admin`).
    pub(crate) revocations: RevocationAdmin,
}

/// The revocations the admin routes manage: this process's set, shared with every
/// replica through Redis when `NHI_GUARD_REDIS_URL` is set.
#[derive(Clone)]
pub(crate) struct RevocationAdmin {
    pub(crate) local: Revocations,
    pub(crate) shared: Option<RedisRevocations>,
}

impl RevocationAdmin {
    /// Revokes `target`; whether every replica was told (false: this replica only,
    /// for now).
    async fn revoke(&self, target: Revoked, by: Option<&str>, now: SystemTime) -> (Revocation, bool) {
        match &self.shared {
            Some(shared) => shared.revoke(target, by, now).await,
            None => (self.local.revoke(target, by, now), false),
        }
    }

    async fn lift(&self, id: &str) -> Option<Revocation> {
        match &self.shared {
            Some(shared) => shared.lift(id).await.0,
            None => self.local.lift(id),
        }
    }
}

/// `GET /metrics`: the guard's metrics in Prometheus text format, rendered from the
/// recorder installed at start-up (the policy requires scope `admin`).
pub(crate) fn metrics_route<S: Clone + Send + Sync + 'static>(handle: PrometheusHandle) -> MethodRouter<S> {
    get(move || {
        let text = handle.render();
        async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
    })
}

/// `GET /admin/risk/decisions`: why the risk layer throttled, challenged or blocked,
/// newest first: each decision with its key, score, lapse time and every signal
/// with its points and reason, plus the decisions still active on those keys.
/// `?client=ID` keeps those concerning a client (earned by its requests or stuck
/// to it), `?key=net:203.0.113.0/24` those stuck to one key, `?limit=N` (default
/// 100) the newest N. The policy requires scope `admin`.
pub(crate) fn risk_decisions_route<S: Clone + Send + Sync + 'static>(risk: RiskOperator) -> MethodRouter<S> {
    get(move |Query(query): Query<HashMap<String, String>>| {
        let risk = risk.clone();
        async move { explain(&risk, &query) }
    })
}

fn explain(risk: &RiskOperator, query: &HashMap<String, String>) -> axum::response::Response {
    let bad = |detail: String| problem(StatusCode::BAD_REQUEST, &detail);
    if let Some(name) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "client" | "key" | "limit"))
    {
        return bad(format!("unknown parameter {name:?}: use client, key or limit"));
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1_000).contains(&n) => n,
        Some(_) => return bad("limit must be a number from 1 to 1000".into()),
    };
    let decisions = match (query.get("client"), query.get("key")) {
        (Some(client), None) => risk.explain_client(client),
        (None, Some(key)) => match RiskKey::parse(key) {
            Some(key) => risk.explain_key(&key),
            None => {
                return bad(format!(
                    "{key:?} is not a risk key (addr:IP, net:CIDR, cred:…, client:ID)"
                ));
            }
        },
        (None, None) => risk.recent_decisions(),
        (Some(_), Some(_)) => return bad("give client or key, not both".into()),
    };
    let keys: Vec<&RiskKey> = decisions.iter().map(|d| &d.key).collect();
    let active: Vec<Value> = risk
        .active()
        .iter()
        .filter(|a| keys.contains(&&a.key))
        .map(|a| {
            json!({
                "key": a.key.to_string(),
                "action": a.action.as_str(),
                "until": rfc3339(a.until),
                "score": a.score,
            })
        })
        .collect();
    let decisions: Vec<Value> = decisions
        .iter()
        .take(limit)
        .map(|d| {
            json!({
                "at": rfc3339(d.at),
                "last_at": rfc3339(d.last_at),
                "repeats": d.repeats,
                "action": d.action.as_str(),
                "enforced": d.enforced,
                "key": d.key.to_string(),
                "until": rfc3339(d.until),
                "score": d.score,
                "client": d.client.as_ref().map(|c| c.as_str()),
                "address": d.address.map(|a| a.to_string()),
                "route": d.route.as_deref(),
                "request_id": d.request_id,
                "signals": d.signals.iter().map(|h| json!({
                    "signal": h.signal,
                    "points": h.points,
                    "reason": h.reason,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "decisions": decisions, "active": active })).into_response()
}

/// `GET /admin/clients`: the least-privilege report, with the ungoverned callers
/// seen (`ungoverned`, as at `GET /admin/clients/ungoverned`).
fn clients_report_route<S: Clone + Send + Sync + 'static>(
    reports: ReportService,
    ungoverned: UngovernedClients,
) -> MethodRouter<S> {
    get(move |RawQuery(query): RawQuery| {
        let (reports, ungoverned) = (reports.clone(), ungoverned.clone());
        async move {
            let res = reports.respond(query.as_deref()).await;
            let (mut parts, body) = res.into_parts();
            let body = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(mut report)) if parts.status == StatusCode::OK => {
                    report.insert("ungoverned".into(), ungoverned_json(&ungoverned.snapshot()));
                    let bytes = serde_json::to_vec(&report).unwrap_or_default();
                    parts.headers.remove(header::CONTENT_LENGTH);
                    axum::body::Body::from(bytes)
                }
                _ => axum::body::Body::from(body),
            };
            axum::response::Response::from_parts(parts, body)
        }
    })
}

/// The ungoverned callers as JSON: client ids named by trusted tokens but absent
/// from the inventory, and API keys matching no client (by hash prefix only).
fn ungoverned_json(s: &UngovernedSnapshot) -> Value {
    json!({
        "clients": s.clients.iter().map(|c| json!({
            "client_id": c.client_id,
            "issuer": c.issuer,
            "first_seen": rfc3339(c.first_seen),
            "last_seen": rfc3339(c.last_seen),
            "requests": c.requests,
            "addresses": c.addresses,
            "scopes": c.scopes,
        })).collect::<Vec<_>>(),
        "api_keys": s.api_keys.iter().map(|k| json!({
            "fingerprint_prefix": k.fingerprint_prefix,
            "first_seen": rfc3339(k.first_seen),
            "last_seen": rfc3339(k.last_seen),
            "requests": k.requests,
            "addresses": k.addresses,
        })).collect::<Vec<_>>(),
        "evicted": s.evicted,
        "capacity": s.capacity,
    })
}

/// An RFC 9457 problem answer of the admin routes.
fn problem(status: StatusCode, detail: &str) -> axum::response::Response {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn revocation_json(r: &Revocation) -> Value {
    json!({
        "id": r.id,
        "kind": r.target.kind(),
        "value": r.target.value(),
        "created_at": rfc3339(r.created_at),
        "created_by": r.created_by,
        "expires_at": r.expires_at().map(rfc3339),
    })
}

/// How long a token revocation holds when the request does not say: longer than
/// any access token the gateway accepts lives.
const TOKEN_REVOCATION_HOLD: Duration = Duration::from_secs(24 * 3600);

/// `POST /admin/revocations` revokes one of `{"client_id": "…"}`,
/// `{"api_key": "sha256:…"}` or `{"jti": "…", "expires_at": "RFC 3339"}` (held
/// until the token's expiry; 24 hours when not given) and answers 201 with the
/// revocation; `GET` lists those in force. The operator is the request's verified
/// client, recorded as `created_by` (and in the request's audit record).
fn revocations_route<S: Clone + Send + Sync + 'static>(revocations: RevocationAdmin) -> MethodRouter<S> {
    let listing = revocations.clone();
    get(move |Extension(ctx): Extension<SecurityContext>| {
        let revocations = listing.clone();
        async move {
            let list: Vec<Value> = revocations
                .local
                .list(ctx.received_at())
                .iter()
                .map(revocation_json)
                .collect();
            Json(json!({ "revocations": list, "shared": revocations.shared.is_some() }))
        }
    })
    .post(move |Extension(ctx): Extension<SecurityContext>, body: Bytes| {
        let revocations = revocations.clone();
        async move {
            let now = ctx.received_at();
            let target = match revocation_target(&body, now) {
                Ok(t) => t,
                Err(detail) => return problem(StatusCode::BAD_REQUEST, &detail),
            };
            let by = ctx.principal().map(|p| p.client_id().to_string());
            let (r, shared) = revocations.revoke(target, by.as_deref(), now).await;
            tracing::info!(id = %r.id, kind = r.target.kind(), by = ?r.created_by, shared, "credential revoked");
            let location = format!("/admin/revocations/{}", r.id);
            let mut body = revocation_json(&r);
            body["shared"] = json!(shared);
            (StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response()
        }
    })
}

/// The revocation a request body asks for.
fn revocation_target(body: &[u8], now: SystemTime) -> Result<Revoked, String> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("the body must be a JSON object".into());
    };
    if let Some(k) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "client_id" | "api_key" | "jti" | "expires_at"))
    {
        return Err(format!(
            "unknown field {k:?}: give one of client_id, api_key or jti"
        ));
    }
    let text = |name: &str| -> Result<Option<&str>, String> {
        match fields.get(name) {
            None => Ok(None),
            Some(Value::String(v)) if !v.is_empty() && v.len() <= 256 && !v.chars().any(char::is_control) => {
                Ok(Some(v.as_str()))
            }
            Some(_) => Err(format!(
                "{name} must be a string of 1 to 256 characters without control characters"
            )),
        }
    };
    let expires_at = text("expires_at")?;
    match (text("client_id")?, text("api_key")?, text("jti")?) {
        (Some(id), None, None) if expires_at.is_none() => Ok(Revoked::Client(ClientId::from(id))),
        (None, Some(hash), None) if expires_at.is_none() => {
            ApiKeyHash::parse(hash).map(Revoked::ApiKey).map_err(|_| {
                "api_key must be the key's hash as in the inventory, sha256: and 64 hex digits".into()
            })
        }
        (None, None, Some(jti)) => {
            let until = match expires_at {
                None => now + TOKEN_REVOCATION_HOLD,
                Some(t) => nhi_guard::core::parse_rfc3339(t)
                    .map_err(|_| "expires_at must be an RFC 3339 date-time".to_owned())?,
            };
            if until <= now {
                return Err("expires_at is in the past: the token has expired already".into());
            }
            Ok(Revoked::Token {
                jti: Arc::from(jti),
                until,
            })
        }
        (None, None, None) => Err("give one of client_id, api_key or jti".into()),
        _ if expires_at.is_some() && text("jti")?.is_none() => Err("expires_at goes with jti only".into()),
        _ => Err("give exactly one of client_id, api_key or jti".into()),
    }
}

/// The demo routes.
pub(crate) fn routes(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/orders", get(list_orders).post(create_order))
        .route("/inventory/{sku}", get(get_inventory))
        .route("/inventory/{sku}/reserve", post(reserve))
        .route(
            "/admin/clients",
            clients_report_route(state.reports.clone(), state.ungoverned.clone()),
        )
        .route("/admin/revocations", revocations_route(state.revocations.clone()))
        .route("/admin/revocations/{id}", {
            let revocations = state.revocations.clone();
            delete(move |Path(id): Path<String>| {
                let revocations = revocations.clone();
                async move {
                    match revocations.lift(&id).await {
                        Some(r) => {
                            tracing::info!(id = %r.id, kind = r.target.kind(), "revocation lifted");
                            StatusCode::NO_CONTENT.into_response()
                        }
                        None => problem(StatusCode::NOT_FOUND, &format!("no revocation {id:?}")),
                    }
                }
            })
        })
        .route("/admin/clients/ungoverned", {
            let ungoverned = state.ungoverned.clone();
            get(move || {
                let snapshot = ungoverned.snapshot();
                async move { Json(ungoverned_json(&snapshot)) }
            })
        });
    if let Some(handle) = state.metrics {
        router = router.route("/metrics", metrics_route(handle));
    }
    if let Some(risk) = state.risk {
        router = router.route("/admin/risk/decisions", risk_decisions_route(risk));
    }
    if let Some(jwks) = state.jwks {
        router = router.route(
            "/.well-known/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/jwk-set+json")],
                        jwks.to_string(),
                    )
                }
            }),
        );
    }
    router
}

async fn list_orders() -> Json<Value> {
    Json(
        json!({ "orders": [ { "id": "ord-1001", "status": "shipped" }, { "id": "ord-1002", "status": "open" } ] }),
    )
}

async fn create_order() -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({ "id": "ord-1003", "status": "open" })),
    )
}

async fn get_inventory(Path(sku): Path<String>) -> Json<Value> {
    Json(json!({ "sku": sku, "available": 42 }))
}

async fn reserve(Path(sku): Path<String>) -> Json<Value> {
    Json(json!({ "sku": sku, "reserved": 1 }))
}
