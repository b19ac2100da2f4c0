//! The demo gateway end to end: configuration from `NHI_GUARD_*` variables, the
//! demo inventory, and every control of the stack in front of the routes, with the
//! audit log checked at the end.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use nhi_guard::core::address::{ForwardedHeader, PeerAddr};
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::registry::{ClientRegistry, InMemoryRegistry};
use tower::ServiceExt;

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

#[test]
fn defaults_and_invalid_values_name_the_variable() {
    let c = config::from_lookup(lookup(&[])).expect("defaults");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert!(c.clients.is_none() && c.issuers.is_empty() && c.redis_url.is_none() && c.audit_log.is_none());
    assert!(c.ca_file.is_none() && c.jwks_url.is_none());
    assert_eq!(c.risk_mode, config::RiskMode::Enforce);
    assert_eq!(c.audience, "nhi-guard-demo");
    assert_eq!(c.forwarded_header, ForwardedHeader::XForwardedFor);
    assert_eq!(c.ipv6_prefix, 64);
    assert_eq!(
        (c.address_limit.burst(), c.address_limit.emission_nanos()),
        (200, 10_000_000)
    );
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    let inventory = ("NHI_GUARD_CLIENTS", "clients.toml");
    for (var, value) in [
        ("NHI_GUARD_LISTEN", "localhost"),
        ("NHI_GUARD_CLIENTS", ""),
        ("NHI_GUARD_TRUSTED_PROXIES", "10.0.0.0/8, nope"),
        ("NHI_GUARD_FORWARDED_HEADER", "x-real-ip"),
        ("NHI_GUARD_IPV6_PREFIX", "129"),
        ("NHI_GUARD_ISSUER", "not a url"),
        ("NHI_GUARD_ISSUER", "https://a.example.com, nope"),
        ("NHI_GUARD_ISSUER", " , "),
        ("NHI_GUARD_ISSUER", "https://a.example.com,https://a.example.com"),
        ("NHI_GUARD_CA_FILE", " "),
        ("NHI_GUARD_AUDIENCE", " "),
        ("NHI_GUARD_REDIS_URL", "127.0.0.1:6379"),
        ("NHI_GUARD_AUDIT_LOG", ""),
        ("NHI_GUARD_RISK_MODE", "loud"),
        ("NHI_GUARD_ADDRESS_LIMIT", "100"),
        ("NHI_GUARD_ADDRESS_LIMIT", "0:10"),
        ("NHI_GUARD_ADDRESS_LIMIT", "10:x"),
        ("NHI_GUARD_SHUTDOWN_GRACE", "-1"),
        ("NHI_GUARD_SHUTDOWN_GRACE", "soon"),
    ] {
        let err = config::from_lookup(lookup(&[inventory, (var, value)])).expect_err(var);
        assert!(err.starts_with(var), "{var}={value:?}: {err}");
    }
    let err =
        config::from_lookup(lookup(&[("NHI_GUARD_JWKS_URL", "http://127.0.0.1:1/jwks")])).expect_err("jwks");
    assert!(err.starts_with("NHI_GUARD_JWKS_URL"), "{err}");
    // One JWKS URL cannot serve two issuers.
    let err = config::from_lookup(lookup(&[
        inventory,
        ("NHI_GUARD_ISSUER", "https://a.example.com,https://b.example.com"),
        ("NHI_GUARD_JWKS_URL", "https://a.example.com/jwks"),
    ]))
    .expect_err("jwks with two issuers");
    assert!(err.starts_with("NHI_GUARD_JWKS_URL"), "{err}");
    let c = config::from_lookup(lookup(&[
        inventory,
        ("NHI_GUARD_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1"),
        ("NHI_GUARD_FORWARDED_HEADER", "Forwarded"),
        ("NHI_GUARD_IPV6_PREFIX", "/56"),
        ("NHI_GUARD_RISK_MODE", "shadow"),
        (
            "NHI_GUARD_ISSUER",
            "http://127.0.0.1:9999/, https://idp.example.com/tenant",
        ),
        ("NHI_GUARD_CA_FILE", "/etc/nhi/ca.pem"),
        ("NHI_GUARD_ADDRESS_LIMIT", "1000:1500"),
        ("NHI_GUARD_SHUTDOWN_GRACE", "0"),
    ]))
    .expect("ok");
    assert_eq!(c.trusted_proxies.len(), 2);
    assert_eq!(c.forwarded_header, ForwardedHeader::Forwarded);
    assert_eq!(c.ipv6_prefix, 56);
    assert_eq!(c.risk_mode, config::RiskMode::Shadow);
    assert_eq!(
        c.issuers,
        ["http://127.0.0.1:9999", "https://idp.example.com/tenant"]
    );
    assert_eq!(
        c.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/nhi/ca.pem"))
    );
    assert_eq!(
        (c.address_limit.burst(), c.address_limit.emission_nanos()),
        (1500, 1_000_000)
    );
    assert_eq!(c.shutdown_grace, Duration::ZERO);
}

/// The demo inventory's API keys are printed in the README: it serves only the demo
/// issuer on a loopback address, and any other set-up must name its inventory.
#[test]
fn the_published_demo_inventory_serves_only_the_local_demo() {
    assert!(
        config::from_lookup(lookup(&[]))
            .expect("local demo")
            .demo_inventory_allowed()
    );
    assert!(config::from_lookup(lookup(&[("NHI_GUARD_LISTEN", "[::1]:0")])).is_ok());
    for vars in [
        &[("NHI_GUARD_ISSUER", "https://idp.example.com")][..],
        &[("NHI_GUARD_LISTEN", "0.0.0.0:8080")][..],
        &[("NHI_GUARD_LISTEN", "10.1.2.3:8080")][..],
    ] {
        let err = config::from_lookup(lookup(vars)).expect_err("demo inventory refused");
        assert!(err.starts_with("NHI_GUARD_CLIENTS is not set"), "{err}");
        assert!(err.contains("set NHI_GUARD_CLIENTS"), "{err}");
        let mut with_inventory = vars.to_vec();
        with_inventory.push(("NHI_GUARD_CLIENTS", "clients.toml"));
        assert!(config::from_lookup(lookup(&with_inventory)).is_ok(), "{vars:?}");
    }
}

#[test]
fn demo_inventory_has_three_integrations_with_distinct_scopes_and_tiers() {
    let inv = app::demo_inventory(SystemTime::now());
    let mut tiers = std::collections::HashSet::new();
    let mut scopes = std::collections::HashSet::new();
    for id in ["inventory-sync", "reporting-bot", "partner-feed"] {
        let c = inv.client(id).expect(id);
        tiers.insert(c.tier().to_owned());
        scopes.insert(c.scopes().to_string());
        assert!(inv.tier(c.tier()).is_some());
    }
    assert_eq!(tiers.len(), 3);
    assert_eq!(scopes.len(), 3);
    assert!(
        inv.client("ops-console")
            .expect("admin client")
            .scopes()
            .contains("admin")
    );
}

#[test]
fn registry_serves_the_demo_keys_by_hash_only() {
    let registry = InMemoryRegistry::new(app::demo_inventory(SystemTime::now()));
    for (id, key) in app::DEMO_API_KEYS {
        let hash = nhi_guard::core::registry::ApiKeyHash::of_key(key.as_bytes());
        assert_eq!(
            registry.client_by_api_key(&hash).expect("client").id().as_str(),
            *id
        );
        let debug = format!("{:?}", registry.client(id));
        assert!(!debug.contains(key), "a demo key leaked into Debug output");
    }
}

struct Gateway {
    router: Router,
    guard: guard::Guard,
    clock: ManualClock,
    audit_log: std::path::PathBuf,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nhi-guard-{name}-{}-{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// The process-wide Prometheus recorder, installed by the first gateway of this
/// test binary (as `main` does before building the stack).
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| guard::install_metrics().expect("the only recorder of this binary"))
        .clone()
}

async fn gateway(name: &str, vars: &[(&str, &str)]) -> Gateway {
    let dir = TempDir::new(name);
    let audit_log = dir.0.join("audit.jsonl");
    let audit = audit_log.to_string_lossy().into_owned();
    let mut all = vec![("NHI_GUARD_AUDIT_LOG", audit.as_str())];
    all.extend_from_slice(vars);
    let config = config::from_lookup(lookup(&all)).expect("config");
    let clock = ManualClock::now();
    let registry = Arc::new(InMemoryRegistry::new(app::demo_inventory(SystemTime::now())));
    let guard = guard::build(
        &config,
        registry,
        "http://127.0.0.1:8080",
        Arc::new(clock.clone()),
    )
    .await
    .expect("the gateway's stack builds");
    let state = guard.app_state(Some(metrics_handle()));
    let router = app::routes(state).layer(guard.layer.clone());
    Gateway {
        router,
        guard,
        clock,
        audit_log,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: serde_json::Value,
    text: String,
}

impl Gateway {
    async fn send(&self, method: &str, uri: &str, auth: Option<(&str, &str)>, peer: &str) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some((name, value)) = auth {
            req = req.header(name, value);
        }
        let mut req = req.body(axum::body::Body::empty()).expect("request");
        req.extensions_mut()
            .insert(PeerAddr(peer.parse::<SocketAddr>().expect("peer")));
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            body,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn token(&self, client: &str, scopes: &str) -> String {
        let demo = self.guard.demo.as_ref().expect("demo issuer");
        format!("Bearer {}", demo.mint(client, scopes, Duration::from_secs(600)))
    }

    async fn finish(self) -> (nhi_guard::audit::Verification, Vec<serde_json::Value>) {
        self.guard.audit.shutdown().await.expect("audit flushed");
        let verification = nhi_guard::audit::verify_file(&self.audit_log).expect("readable log");
        let records = std::fs::read_to_string(&self.audit_log)
            .expect("log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        (verification, records)
    }
}

fn key(client: &str) -> (&'static str, &'static str) {
    let k = app::DEMO_API_KEYS
        .iter()
        .find(|(c, _)| *c == client)
        .expect("demo key")
        .1;
    ("x-api-key", k)
}

#[tokio::test]
async fn every_control_answers_through_the_gateway() {
    let gw = gateway("controls", &[]).await;
    let peer = "127.0.0.10:40000";

    let r = gw.send("GET", "/healthz", None, peer).await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let r = gw.send("GET", "/.well-known/jwks.json", None, peer).await;
    assert_eq!(r.body["keys"][0]["alg"], "ES256");

    // identity: no credential, then a wrong key.
    let r = gw.send("GET", "/orders", None, peer).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["www-authenticate"], r#"Bearer realm="nhi-guard-demo""#);
    let r = gw
        .send("GET", "/orders", Some(("x-api-key", "nhik_wrong_key_0000")), peer)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains(r#"error="invalid_token""#)
    );

    // allowed, by API key and by bearer token, with rate-limit fields.
    let r = gw.send("GET", "/orders", Some(key("inventory-sync")), peer).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["ratelimit-policy"]
            .to_str()
            .expect("ascii")
            .contains(r#""per-client";q=100"#)
    );
    let token = gw.token("inventory-sync", "orders:read orders:write");
    let r = gw
        .send("POST", "/orders", Some(("authorization", &token)), peer)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // scope: reporting-bot may only read orders.
    let bot = gw.token("reporting-bot", "orders:read");
    let r = gw
        .send("POST", "/orders", Some(("authorization", &bot)), peer)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.headers["www-authenticate"],
        r#"Bearer realm="nhi-guard-demo", error="insufficient_scope", error_description="The access token lacks a required scope", scope="orders:write""#
    );
    assert_eq!(r.body["missing_scopes"], serde_json::json!(["orders:write"]));

    // the admin report is itself protected by the scope layer.
    let r = gw
        .send("GET", "/admin/clients", Some(key("inventory-sync")), peer)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let ops = gw.token("ops-console", "admin");
    let r = gw
        .send("GET", "/admin/clients", Some(("authorization", &ops)), peer)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let sync = r.body["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["client_id"] == "inventory-sync")
        .expect("inventory-sync in the report")
        .clone();
    assert_eq!(sync["owner"], "fulfilment-team@example.com");
    let used: Vec<&str> = sync["used"]
        .as_array()
        .expect("used")
        .iter()
        .filter_map(|u| u["scope"].as_str())
        .collect();
    assert!(
        used.contains(&"orders:read") && used.contains(&"orders:write"),
        "{used:?}"
    );

    // rate limit: partner-feed's tier is 5/s with bursts of 10 (the clock stands still).
    let partner = key("partner-feed");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(gw.send("GET", "/inventory/sku-1", Some(partner), peer).await);
    }
    assert!(statuses[..10].iter().all(|r| r.status == StatusCode::OK));
    let limited = &statuses[10];
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "1");
    assert_eq!(
        limited.body["violated-policies"],
        serde_json::json!(["per-client"])
    );
    gw.clock.advance(Duration::from_secs(2));
    assert_eq!(
        gw.send("GET", "/inventory/sku-1", Some(partner), peer)
            .await
            .status,
        StatusCode::OK
    );

    let (verification, records) = gw.finish().await;
    assert!(
        verification.first_break.is_none(),
        "{:?}",
        verification.first_break
    );
    // One record per request: 2 + 2 + 2 + 1 + 2 + 12 + 1.
    assert_eq!(verification.requests, 22);
    let controls: Vec<&str> = records
        .iter()
        .filter_map(|r| r["unmapped"]["nhi_guard"]["control"].as_str())
        .collect();
    for control in ["identity", "scope", "rate_limit"] {
        assert!(
            controls.contains(&control),
            "no {control} denial audited in {controls:?}"
        );
    }
    // No secret in any record.
    let all: String = records.iter().map(ToString::to_string).collect();
    for (_, k) in app::DEMO_API_KEYS {
        assert!(!all.contains(k), "an API key reached the audit log");
    }
    assert!(
        !all.contains(token.trim_start_matches("Bearer ")),
        "a token reached the audit log"
    );
}

#[tokio::test]
async fn enumeration_is_throttled_then_blocked_by_risk() {
    walk_is_throttled_then_blocked("GET").await;
}

/// `HEAD` is served by the `GET` route, so walking items with it (the status alone
/// says whether an item exists) is scored like the `GET` walk.
#[tokio::test]
async fn enumeration_with_head_is_throttled_then_blocked_by_risk() {
    walk_is_throttled_then_blocked("HEAD").await;
}

async fn walk_is_throttled_then_blocked(method: &str) {
    let gw = gateway(&format!("risk-{method}"), &[]).await;
    let sync = key("inventory-sync");
    let mut refused_by_risk = 0;
    let mut first_refusal = None;
    for i in 0..200 {
        // 20 requests a second: well inside the client's tier, so only risk refuses.
        gw.clock.advance(Duration::from_millis(50));
        let r = gw
            .send(
                method,
                &format!("/inventory/sku-{i}"),
                Some(sync),
                "127.0.0.11:40000",
            )
            .await;
        if r.status != StatusCode::OK {
            assert!(
                matches!(r.status.as_u16(), 429 | 403),
                "{method} {i}: {}",
                r.status
            );
            if method == "GET" {
                assert_eq!(r.body["control"], "risk", "{method} {i}: {}", r.body);
            } else {
                assert!(r.text.is_empty(), "a HEAD answer carries no body: {}", r.text);
            }
            first_refusal.get_or_insert(i);
            refused_by_risk += 1;
        }
    }
    let first = first_refusal.unwrap_or_else(|| panic!("risk never refused the {method} walk"));
    assert!(
        first <= 130,
        "risk reacted to the {method} walk only after {first} objects"
    );
    assert_eq!(
        refused_by_risk,
        200 - first,
        "once refused, the walk stays refused"
    );
    // Another client keeps working.
    let r = gw
        .send("GET", "/orders", Some(key("reporting-bot")), "127.0.0.12:40000")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    explains_the_walk(&gw, method).await;
    let (verification, records) = gw.finish().await;
    assert!(verification.first_break.is_none());
    // The audit log says risk refused each of them.
    let by_risk = records
        .iter()
        .filter(|r| {
            r["unmapped"]["nhi_guard"]["control"] == "risk"
                && r["unmapped"]["nhi_guard"]["decision"] == "denied"
        })
        .count();
    assert_eq!(by_risk, refused_by_risk, "{method}");
}

/// An operator asks why inventory-sync was refused: the throttle, then the block,
/// each with the enumeration signal's points and reason; the block is still active.
async fn explains_the_walk(gw: &Gateway, method: &str) {
    let ops = gw.token("ops-console", "admin");
    let ops = Some(("authorization", ops.as_str()));
    let peer = "127.0.0.13:40000";
    let r = gw
        .send("GET", "/admin/risk/decisions?client=inventory-sync", ops, peer)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let decisions = r.body["decisions"].as_array().expect("decisions");
    let actions: Vec<&str> = decisions.iter().filter_map(|d| d["action"].as_str()).collect();
    // Newest first; the throttle re-decided on every scored request while it held
    // is one entry.
    assert_eq!(actions, ["block", "throttle"], "{method}: {}", r.text);
    let throttle = &decisions[1];
    assert!(throttle["repeats"].as_u64().is_some_and(|n| n >= 1), "{throttle}");
    assert!(
        throttle["last_at"].as_str() > throttle["at"].as_str(),
        "{throttle}"
    );
    for d in decisions {
        assert_eq!(d["client"], "inventory-sync");
        assert_eq!(d["key"], "client:inventory-sync");
        assert_eq!(d["route"], "/inventory/{sku}");
        assert_eq!(d["address"], "127.0.0.11");
        assert!(d["score"].as_u64().is_some_and(|s| s >= 40), "{d}");
        let enumeration = d["signals"]
            .as_array()
            .and_then(|s| s.iter().find(|h| h["signal"] == "enumeration"))
            .unwrap_or_else(|| panic!("no enumeration signal in {d}"));
        assert!(enumeration["points"].as_u64().is_some_and(|p| p >= 40), "{d}");
        assert!(
            enumeration["reason"]
                .as_str()
                .is_some_and(|r| r.contains("identifiers")),
            "{d}"
        );
    }
    assert_eq!(r.body["active"][0]["key"], "client:inventory-sync", "{}", r.text);
    assert_eq!(r.body["active"][0]["action"], "block");
    // The same by key; another client has none; bad queries are 400.
    let r = gw
        .send(
            "GET",
            "/admin/risk/decisions?key=client:inventory-sync&limit=1",
            ops,
            peer,
        )
        .await;
    assert_eq!(
        r.body["decisions"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );
    let r = gw
        .send("GET", "/admin/risk/decisions?client=reporting-bot", ops, peer)
        .await;
    assert_eq!(r.body["decisions"], serde_json::json!([]));
    for bad in ["key=nonsense", "limit=0", "who=me", "client=a&key=client:a"] {
        let r = gw
            .send("GET", &format!("/admin/risk/decisions?{bad}"), ops, peer)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert_eq!(r.headers["content-type"], "application/problem+json", "{bad}");
        assert_eq!(r.body["status"], 400, "{bad}: {}", r.text);
    }
    // Only for the admin scope.
    let r = gw
        .send("GET", "/admin/risk/decisions", Some(key("partner-feed")), peer)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // And per signal in the metrics.
    let r = gw.send("GET", "/metrics", ops, peer).await;
    assert!(
        r.text
            .contains(r#"nhi_guard_risk_signals_total{signal="enumeration",action="block"}"#),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn risk_off_and_shadow_refuse_nothing() {
    for mode in ["off", "shadow"] {
        let gw = gateway(mode, &[("NHI_GUARD_RISK_MODE", mode)]).await;
        for i in 0..200 {
            gw.clock.advance(Duration::from_millis(50));
            let r = gw
                .send(
                    "GET",
                    &format!("/inventory/sku-{i}"),
                    Some(key("inventory-sync")),
                    "127.0.0.13:40000",
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{mode}: request {i} refused: {}",
                r.body
            );
        }
        let _ = gw.finish().await;
    }
}

#[tokio::test]
async fn metrics_are_served_to_the_admin_scope_only() {
    let gw = gateway("metrics", &[]).await;
    let peer = "127.0.0.12:40000";
    // One scope denial and one allowed request of this gateway's own stack.
    let bot = gw.token("reporting-bot", "orders:read");
    let r = gw
        .send("POST", "/orders", Some(("authorization", &bot)), peer)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = gw
        .send("GET", "/orders", Some(("authorization", &bot)), peer)
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // No credential: 401; a client without the admin scope: 403, and no metrics.
    let r = gw.send("GET", "/metrics", None, peer).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = gw
        .send("GET", "/metrics", Some(key("inventory-sync")), peer)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["missing_scopes"], serde_json::json!(["admin"]));
    assert!(!r.text.contains("nhi_guard_requests_total"), "{}", r.text);

    let ops = gw.token("ops-console", "admin");
    let r = gw
        .send("GET", "/metrics", Some(("authorization", &ops)), peer)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/plain; version=0.0.4");
    // Other tests of this binary share the recorder: at least this test's requests.
    let value = |series: &str| -> f64 {
        r.text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{}", r.text))
    };
    assert!(value(r#"nhi_guard_requests_total{control="scope",decision="deny"} "#) >= 1.0);
    assert!(value(r#"nhi_guard_requests_total{control="scope",decision="allow"} "#) >= 1.0);
    assert!(value(r#"nhi_guard_denials_total{control="scope",reason="insufficient_scope"} "#) >= 1.0);
    // The /metrics requests themselves: identity lets an anonymous request on to the
    // policy (public routes exist), and scope refuses it.
    assert!(value(r#"nhi_guard_denials_total{control="scope",reason="credential_missing"} "#) >= 1.0);
    assert!(
        r.text.contains("# TYPE nhi_guard_risk_score histogram"),
        "{}",
        r.text
    );
    assert!(
        !r.text.contains("nhik_demo"),
        "a demo key leaked into the metrics"
    );
    gw.finish().await;
}

/// reporting-bot's `bulk` tier allows 200/s with bursts of 400; the gateway's
/// per-address flood shield allows 100/s with bursts of 200. The tier decides.
#[tokio::test]
async fn a_client_inside_its_tier_is_not_refused_by_the_address_limit() {
    let gw = gateway("tier-not-address", &[]).await;
    let bot = key("reporting-bot");
    for i in 0..600 {
        gw.clock.advance(Duration::from_millis(5));
        let r = gw.send("GET", "/orders", Some(bot), "127.0.0.21:40000").await;
        assert_eq!(r.status, StatusCode::OK, "request {i} at 200/s: {}", r.body);
    }
    // Anonymous requests from that same address still meet the shield.
    let mut anonymous = Vec::new();
    for _ in 0..210 {
        anonymous.push(
            gw.send("GET", "/orders", None, "127.0.0.21:40000")
                .await
                .status
                .as_u16(),
        );
    }
    assert!(anonymous[..200].iter().all(|s| *s == 401), "{anonymous:?}");
    assert_eq!(anonymous[200..], [429; 10]);
    // The setting moves the shield.
    let gw = gateway("address-limit-setting", &[("NHI_GUARD_ADDRESS_LIMIT", "1:3")]).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            gw.send("GET", "/healthz", None, "127.0.0.22:40000")
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

/// A trusted issuer's token for a client nobody registered, and an API key that
/// matches no client: refused as before, recorded, listed for operators and
/// included in the least-privilege report, never with the key itself.
#[tokio::test]
async fn ungoverned_callers_are_refused_recorded_and_reported() {
    let gw = gateway("ungoverned", &[]).await;
    let shadow = gw.token("shadow-etl", "orders:read inventory:read");
    for peer in ["127.0.0.31:40000", "127.0.0.32:40000"] {
        let r = gw
            .send("GET", "/orders", Some(("authorization", &shadow)), peer)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body["reason"], "client_unknown", "{}", r.text);
    }
    let stray = "nhik_stray_key_0123456789abcdef";
    for _ in 0..3 {
        let r = gw
            .send("GET", "/orders", Some(("x-api-key", stray)), "127.0.0.33:40000")
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    let ops = gw.token("ops-console", "admin");
    let ops = Some(("authorization", ops.as_str()));
    let peer = "127.0.0.34:40000";
    let r = gw.send("GET", "/admin/clients/ungoverned", ops, peer).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let c = &r.body["clients"][0];
    assert_eq!(c["client_id"], "shadow-etl", "{}", r.text);
    assert_eq!(c["issuer"], "http://127.0.0.1:8080");
    assert_eq!(
        (c["requests"].as_u64(), c["addresses"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(c["scopes"], serde_json::json!(["inventory:read", "orders:read"]));
    assert!(c["first_seen"].as_str().is_some_and(|t| t.ends_with('Z')), "{c}");
    let k = &r.body["api_keys"][0];
    let hash = nhi_guard::core::registry::ApiKeyHash::of_key(stray.as_bytes()).to_string();
    let prefix = k["fingerprint_prefix"].as_str().expect("prefix");
    assert!(
        hash.starts_with(prefix) && prefix.len() == 15,
        "{prefix} vs {hash}"
    );
    assert_eq!(k["requests"], 3);
    assert!(
        !r.text.contains(stray) && !r.text.contains(&hash),
        "the key leaked: {}",
        r.text
    );
    assert_eq!(r.body["evicted"], 0);

    // In the least-privilege report too.
    let r = gw.send("GET", "/admin/clients", ops, peer).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["ungoverned"]["clients"][0]["client_id"], "shadow-etl",
        "{}",
        r.text
    );
    // Nobody registered has called yet but the operator: the others are never
    // seen.
    let never: Vec<&str> = r.body["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter(|c| c["never_seen"] == true)
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    assert!(
        !never.contains(&"ops-console") && never.contains(&"partner-feed"),
        "{never:?}"
    );
    assert_eq!(r.body["never_seen_clients"].as_u64(), Some(never.len() as u64));
    // A bad query keeps the report's own answer.
    let r = gw.send("GET", "/admin/clients?since=yesterday", ops, peer).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // Only for the admin scope; counted in the metrics.
    let r = gw
        .send(
            "GET",
            "/admin/clients/ungoverned",
            Some(key("partner-feed")),
            peer,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = gw.send("GET", "/metrics", ops, peer).await;
    // The report made above set the stale-identity gauges.
    for state in ["stale", "never_seen"] {
        let series = format!(r#"nhi_guard_stale_clients{{state="{state}"}} "#);
        assert!(r.text.contains(&series), "no {series} in\n{}", r.text);
    }
    for kind in ["token", "api_key"] {
        let series = format!(r#"nhi_guard_ungoverned_requests_total{{kind="{kind}"}} "#);
        let n: f64 = r
            .text
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{}", r.text));
        assert!(n >= 2.0, "{series}{n}");
    }
    gw.finish().await;
}

impl Gateway {
    /// `method uri` with a JSON body, as an operator.
    async fn send_json(&self, method: &str, uri: &str, auth: &str, body: &str) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.40:40000".parse::<SocketAddr>().expect("peer")));
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
            headers,
        }
    }
}

/// Revoking a client, one API key and one token takes effect on the next request
/// (also for a token the verified-token cache holds); lifting restores access;
/// the admin routes refuse bad bodies with 400 and other clients with 403.
#[tokio::test]
async fn revocations_hold_at_once_and_lift() {
    let gw = gateway("revocations", &[]).await;
    let ops = gw.token("ops-console", "admin");
    let peer = "127.0.0.41:40000";
    // Each call from its own address: the refusals below are failed
    // authentications, which the risk layer would otherwise hold against one
    // address.
    let next_peer = std::sync::atomic::AtomicU8::new(50);
    let orders = |auth: (&'static str, String)| {
        let gw = &gw;
        let peer = format!(
            "127.0.1.{}:40000",
            next_peer.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        async move {
            gw.send("GET", "/orders", Some((auth.0, auth.1.as_str())), &peer)
                .await
        }
    };
    let bot_key = ("x-api-key", key("reporting-bot").1.to_owned());
    assert_eq!(orders(bot_key.clone()).await.status, StatusCode::OK);

    // A client: every credential of it.
    let r = gw
        .send_json(
            "POST",
            "/admin/revocations",
            &ops,
            r#"{"client_id":"reporting-bot"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        (r.body["kind"].as_str(), r.body["value"].as_str()),
        (Some("client_id"), Some("reporting-bot"))
    );
    assert_eq!(r.body["created_by"], "ops-console");
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert_eq!(r.headers["location"], format!("/admin/revocations/{id}").as_str());
    let refused = orders(bot_key.clone()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["reason"], "client_revoked", "{}", refused.text);
    let bot_token = ("authorization", gw.token("reporting-bot", "orders:read"));
    assert_eq!(orders(bot_token).await.body["reason"], "client_revoked");
    // Listed, then lifted.
    let r = gw
        .send("GET", "/admin/revocations", Some(("authorization", &ops)), peer)
        .await;
    assert_eq!(r.body["revocations"][0]["id"], id.as_str(), "{}", r.text);
    let r = gw
        .send_json("DELETE", &format!("/admin/revocations/{id}"), &ops, "")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(orders(bot_key.clone()).await.status, StatusCode::OK);
    let r = gw
        .send_json("DELETE", &format!("/admin/revocations/{id}"), &ops, "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // One API key, by its hash: the key is refused, the client's tokens are not.
    let hash = nhi_guard::core::registry::ApiKeyHash::of_key(bot_key.1.as_bytes()).to_string();
    let r = gw
        .send_json(
            "POST",
            "/admin/revocations",
            &ops,
            &format!(r#"{{"api_key":"{hash}"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(orders(bot_key.clone()).await.body["reason"], "api_key_revoked");
    let fresh = ("authorization", gw.token("reporting-bot", "orders:read"));
    assert_eq!(orders(fresh).await.status, StatusCode::OK);

    // One token, by its jti, while the verified-token cache holds it.
    let jti = "tok-to-revoke-1";
    let token = {
        let demo = gw.guard.demo.as_ref().expect("demo issuer");
        let audience = config::from_lookup(lookup(&[])).expect("config").audience;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("time")
            .as_secs();
        format!(
            "Bearer {}",
            demo.mint_claims(&serde_json::json!({
                "iss": "http://127.0.0.1:8080",
                "aud": audience,
                "sub": "inventory-sync",
                "client_id": "inventory-sync",
                "scope": "orders:read",
                "iat": now,
                "exp": now + 600,
                "jti": jti,
            }))
        )
    };
    let bearer = ("authorization", token.clone());
    assert_eq!(orders(bearer.clone()).await.status, StatusCode::OK);
    let r = gw
        .send_json(
            "POST",
            "/admin/revocations",
            &ops,
            &format!(r#"{{"jti":"{jti}"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.body["expires_at"].is_string(), "{}", r.text);
    assert_eq!(orders(bearer).await.body["reason"], "token_revoked");
    let other = ("authorization", gw.token("inventory-sync", "orders:read"));
    assert_eq!(orders(other).await.status, StatusCode::OK);

    // Bad bodies are 400 problems; other clients are refused.
    for bad in [
        "",
        "[]",
        r#"{"client_id":""}"#,
        r#"{"client_id":"a","jti":"b"}"#,
        r#"{"api_key":"nhik_plaintext"}"#,
        r#"{"jti":"x","expires_at":"2000-01-01T00:00:00Z"}"#,
        r#"{"client_id":"a","expires_at":"2100-01-01T00:00:00Z"}"#,
        r#"{"who":"me"}"#,
    ] {
        let r = gw.send_json("POST", "/admin/revocations", &ops, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        assert_eq!(r.headers["content-type"], "application/problem+json", "{bad}");
    }
    let partner = gw.token("partner-feed", "inventory:read");
    let r = gw
        .send_json(
            "POST",
            "/admin/revocations",
            &partner,
            r#"{"client_id":"ops-console"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The revocations are audited as the operator's requests.
    let (verification, records) = gw.finish().await;
    assert!(verification.first_break.is_none());
    let by_ops = records
        .iter()
        .filter(|r| {
            r["api"]["operation"]
                .as_str()
                .is_some_and(|o| o.contains("/admin/revocations"))
                && r["api"]["response"]["code"] == 201
        })
        .count();
    assert_eq!(by_ops, 3);
}
