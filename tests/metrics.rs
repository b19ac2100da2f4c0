//! The whole stack's metrics, rendered by the Prometheus recorder: an allowed
//! request and one denial by each control move exactly the documented series.
//!
//! One test in its own binary: the recorder is process-wide, and every layer
//! resolves its counters on its first request, after the recorder is installed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use metrics_exporter_prometheus::PrometheusBuilder;
use nhi_guard::audit::{AuditLayer, AuditWriter, TracingSink};
use nhi_guard::core::address::PeerAddr;
use nhi_guard::core::clock::ManualClock;
use nhi_guard::identity::IdentityLayer;
use nhi_guard::prelude::*;
use nhi_guard::risk::store::RiskKey;
use nhi_guard::risk::{Points, RequestFacts, Signal};
use tower::ServiceExt;

/// Gives every request of the client `suspect` the full 100 points.
#[derive(Debug)]
struct Suspect;

impl Signal for Suspect {
    fn name(&self) -> &'static str {
        // Not the client's id: the test checks that no client id reaches a label.
        "watchlist"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let client = f.client().filter(|c| c.as_str() == "suspect")?;
        Some(Points {
            points: 100,
            key: RiskKey::Client(client.clone()),
            reason: Cow::Borrowed("test signal"),
        })
    }
}

const KEYS: &[(&str, &str)] = &[
    ("good", "nhik_metrics_good_0123456789"),
    ("bot", "nhik_metrics_bot_0123456789"),
    ("tiny", "nhik_metrics_tiny_0123456789"),
    ("suspect", "nhik_metrics_suspect_0123456789"),
];

fn registry() -> Arc<InMemoryRegistry> {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
    let mut inv = Inventory::builder().tier(
        "tiny",
        Tier {
            per_second: 1,
            burst: 1,
        },
    );
    for (id, key) in KEYS {
        let record = ClientRecord::builder(*id, "team@example.com", "metrics test", expires)
            .scopes(
                ScopeSet::parse(if *id == "good" {
                    "orders:read orders:write"
                } else {
                    "orders:read"
                })
                .expect("scopes"),
            )
            .tier(if *id == "tiny" { "tiny" } else { "default" })
            .api_key(key)
            .build()
            .expect("client");
        inv = inv.client(record);
    }
    Arc::new(InMemoryRegistry::new(inv.build().expect("inventory")))
}

/// The value of each series of the Prometheus text, keyed by `name{labels}`.
fn series(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn the_stack_counts_decisions_denials_and_risk_scores() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    nhi_guard::core::metrics::describe();

    let registry = registry();
    let clock = ManualClock::now();
    let (writer, audit) = AuditWriter::builder().spawn(TracingSink::new()).expect("writer");
    let policy = Policy::builder()
        .get("/orders", Require::all_of("orders:read"))
        .post("/orders", Require::all_of("orders:write"))
        .build()
        .expect("policy");
    let quota = nhi_guard::ratelimit::store::Quota::per_second(1000).expect("quota");
    let guard = NhiGuard::builder(registry.clone())
        .clock(Arc::new(clock.clone()))
        .audit(AuditLayer::new(writer))
        .address_rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_address("per-address", quota))
                .expect("limit"),
        )
        .identity(IdentityLayer::builder(registry.clone()))
        .risk(RiskLayer::new().signals(vec![Arc::new(Suspect)]))
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client"))
                .expect("limit"),
        )
        .scope(ScopeLayer::new(policy))
        .build()
        .expect("stack");
    let app = Router::new()
        .route("/orders", get(|| async { "[]" }).post(|| async { "{}" }))
        .layer(guard);

    let send = |method: &str, client: Option<&str>| {
        let mut req = Request::builder().method(method).uri("/orders");
        if let Some(client) = client {
            let key = KEYS
                .iter()
                .find(|(id, _)| *id == client)
                .map_or(client, |(_, k)| *k);
            req = req.header("x-api-key", key);
        }
        let mut req = req.body(Body::empty()).expect("request");
        req.extensions_mut()
            .insert(PeerAddr("127.0.0.1:40000".parse::<SocketAddr>().expect("peer")));
        let app = app.clone();
        async move { app.oneshot(req).await.expect("infallible").status() }
    };

    assert_eq!(send("GET", Some("good")).await, StatusCode::OK);
    // No credential: identity lets it on to the policy, which requires a principal.
    assert_eq!(send("GET", None).await, StatusCode::UNAUTHORIZED);
    // identity: an unknown key.
    assert_eq!(
        send("GET", Some("nhik_metrics_nobody_0123456789")).await,
        StatusCode::UNAUTHORIZED
    );
    // scope: bot may not write.
    assert_eq!(send("POST", Some("bot")).await, StatusCode::FORBIDDEN);
    // rate limit: tiny's burst is one request (the clock stands still).
    assert_eq!(send("GET", Some("tiny")).await, StatusCode::OK);
    assert_eq!(send("GET", Some("tiny")).await, StatusCode::TOO_MANY_REQUESTS);
    // risk: the suspect scores 100 and is blocked.
    assert_eq!(send("GET", Some("suspect")).await, StatusCode::FORBIDDEN);
    // The writer has taken every record: its last batch reported the queue empty.
    audit.flush().await.expect("flushed");

    let text = handle.render();
    let s = series(&text);
    let get = |key: &str| {
        s.get(key)
            .copied()
            .unwrap_or_else(|| panic!("no series {key} in\n{text}"))
    };
    let requests = |control: &str, decision: &str| {
        get(&format!(
            r#"nhi_guard_requests_total{{control="{control}",decision="{decision}"}}"#
        ))
    };
    // 7 requests pass the address limit; the anonymous one (no client limit applies),
    // good, bot and tiny's first pass the client limit, tiny's second does not.
    assert_eq!(requests("rate_limit", "allow"), 11.0);
    assert_eq!(requests("rate_limit", "deny"), 1.0);
    // Every request but the unknown key passes identity.
    assert_eq!(requests("identity", "allow"), 6.0);
    assert_eq!(requests("identity", "deny"), 1.0);
    assert_eq!(requests("risk", "allow"), 5.0);
    assert_eq!(requests("risk", "deny"), 1.0);
    assert_eq!(requests("scope", "allow"), 2.0);
    assert_eq!(requests("scope", "deny"), 2.0);
    // Nothing ran in shadow mode (the shadow series exist, at zero).
    for control in ["identity", "scope", "rate_limit", "risk"] {
        assert_eq!(requests(control, "shadow_deny"), 0.0);
    }
    assert!(!text.contains("nhi_guard_shadow_denials_total{"), "{text}");

    let denials = |control: &str, reason: &str| {
        get(&format!(
            r#"nhi_guard_denials_total{{control="{control}",reason="{reason}"}}"#
        ))
    };
    assert_eq!(denials("scope", "credential_missing"), 1.0);
    assert_eq!(denials("identity", "api_key_unknown"), 1.0);
    assert_eq!(denials("scope", "insufficient_scope"), 1.0);
    assert_eq!(denials("rate_limit", "rate_limited"), 1.0);
    assert_eq!(denials("risk", "risk_blocked"), 1.0);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("nhi_guard_denials_total{"))
            .count(),
        5,
        "{text}"
    );

    // Every request risk assessed: five scored 0, the suspect 100.
    assert_eq!(get("nhi_guard_risk_score_count"), 6.0);
    assert_eq!(get("nhi_guard_risk_score_sum"), 100.0);
    // Per signal, by the action its request got.
    assert_eq!(
        get(r#"nhi_guard_risk_signals_total{signal="watchlist",action="block"}"#),
        1.0
    );
    // One decision-time sample per layer and request it decided: the address limit
    // decides all 7 and the client limit the 5 that reach it; the risk edge times all
    // 7 and the inner half the 6 identity let through.
    let decided = |control: &str| {
        get(&format!(
            r#"nhi_guard_decision_duration_seconds_count{{control="{control}"}}"#
        ))
    };
    assert_eq!(
        ["identity", "risk", "rate_limit", "scope"].map(decided),
        [7.0, 13.0, 12.0, 4.0]
    );
    assert!(get(r#"nhi_guard_decision_duration_seconds_sum{control="identity"}"#) > 0.0);
    assert_eq!(get("nhi_guard_audit_queue_depth"), 0.0);
    assert!(text.contains("# HELP nhi_guard_requests_total "), "{text}");
    // No credential or client id in any label.
    for (id, key) in KEYS {
        assert!(
            !text.contains(key) && !text.contains(id),
            "{id} leaked into\n{text}"
        );
    }
    audit.shutdown().await.expect("audit shut down");
    // In the same test: the recorder is the binary's one.
    inventory_gauges_follow_load_and_reload(&handle).await;
}

/// The inventory gauges after the stack is built and after each replacement.
fn inventory_gauges(handle: &metrics_exporter_prometheus::PrometheusHandle) -> [f64; 4] {
    let text = handle.render();
    let s = series(&text);
    let get = |key: &str| {
        s.get(key)
            .copied()
            .unwrap_or_else(|| panic!("no series {key} in\n{text}"))
    };
    [
        get(r#"nhi_guard_clients{status="active"}"#),
        get(r#"nhi_guard_clients{status="expired"}"#),
        get(r#"nhi_guard_clients{status="suspended"}"#),
        get("nhi_guard_clients_expiring_soon"),
    ]
}

async fn inventory_gauges_follow_load_and_reload(handle: &metrics_exporter_prometheus::PrometheusHandle) {
    let registry = registry();
    // The registry set them when it loaded, the builder when it built.
    assert_eq!(inventory_gauges(handle), [4.0, 0.0, 0.0, 0.0]);
    let _guard = NhiGuard::builder(registry.clone()).build().expect("stack");
    assert_eq!(inventory_gauges(handle), [4.0, 0.0, 0.0, 0.0]);

    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let client = |id: &str, expires| ClientRecord::builder(id, "team@example.com", "reload", expires);
    registry
        .replace(
            Inventory::builder()
                .client(client("steady", now + 90 * day).build().expect("client"))
                .client(client("leaving", now + 3 * day).build().expect("client"))
                .client(client("gone", now - day).build().expect("client"))
                .client(
                    client("paused", now + 90 * day)
                        .status(nhi_guard::core::registry::ClientStatus::Suspended)
                        .build()
                        .expect("client"),
                )
                .build()
                .expect("inventory"),
        )
        .expect("no requirement");
    // `leaving` expires within the default 14-day warning window.
    assert_eq!(inventory_gauges(handle), [2.0, 1.0, 1.0, 1.0]);
}
