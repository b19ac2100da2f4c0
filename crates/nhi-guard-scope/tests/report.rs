//! The least-privilege report after a scripted sequence of requests, with a
//! manual clock: scopes used (and when last), scopes unused since a time, refused
//! attempts per missing scope, expiry; and the axum handler behind `admin`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::registry::InMemoryRegistry;
use nhi_guard_scope::report::ReportService;
use nhi_guard_scope::usage::InMemoryUsageStore;
use nhi_guard_scope::{Policy, Require, ScopeLayer};
use serde_json::{Value, json};
use tower::util::MapRequestLayer;
use tower::{Layer, ServiceExt, service_fn};

use common::{identify, t0};

const DAY: Duration = Duration::from_secs(86_400);

fn policy() -> Policy {
    Policy::builder()
        .get("/orders/{id}", Require::all_of("orders:read"))
        .post("/orders", Require::all_of("orders:write"))
        .get("/inventory/{sku}", Require::all_of("inventory:read"))
        .get("/invoices/{id}", Require::all_of("invoices:read"))
        .get("/admin/clients", Require::all_of("admin"))
        .build()
        .expect("policy")
}

struct Fixture {
    clock: ManualClock,
    store: Arc<InMemoryUsageStore>,
    layer: ScopeLayer,
    reports: ReportService,
}

fn fixture() -> Fixture {
    let clock = ManualClock::at(t0());
    let store = Arc::new(InMemoryUsageStore::new());
    let registry = Arc::new(InMemoryRegistry::new(common::inventory()));
    let layer = ScopeLayer::new(policy())
        .clock(Arc::new(clock.clone()))
        .usage_store(store.clone());
    let reports = ReportService::new(registry, store.clone()).clock(Arc::new(clock.clone()));
    Fixture {
        clock,
        store,
        layer,
        reports,
    }
}

async fn send(layer: &ScopeLayer, client: &str, method: Method, path: &str) -> StatusCode {
    send_with(layer, client, method, path, &[]).await
}

async fn send_with(
    layer: &ScopeLayer,
    client: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> StatusCode {
    let svc = MapRequestLayer::new(identify).layer(layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    })));
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-test-client", client);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(()).expect("request");
    svc.oneshot(req).await.expect("infallible").status()
}

/// The scripted sequence, starting at t0 (2027-01-15T08:00:00Z).
async fn script(f: &Fixture) {
    let l = &f.layer;
    assert_eq!(send(l, "inventory-sync", Method::GET, "/orders/1").await, 200);
    f.clock.advance(DAY);
    assert_eq!(send(l, "inventory-sync", Method::GET, "/inventory/a7").await, 200);
    assert_eq!(send(l, "ops-console", Method::GET, "/admin/clients").await, 200);
    f.clock.advance(9 * DAY);
    // Tokens issued 2 h and 1 h before this moment: the newer one is kept.
    for iat in [10 * 86_400 - 7_200, 10 * 86_400 - 3_600] {
        let iat = iat.to_string();
        let headers = [("x-test-iat", iat.as_str())];
        assert_eq!(
            send_with(l, "inventory-sync", Method::GET, "/orders/2", &headers).await,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            send(l, "inventory-sync", Method::GET, "/admin/clients").await,
            403
        );
    }
    assert_eq!(send(l, "billing-export", Method::GET, "/orders/3").await, 403);
    f.clock.advance(20 * DAY); // now t0 + 30 days
}

fn client<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["client_id"] == id)
        .unwrap_or_else(|| panic!("no client {id}"))
}

#[tokio::test]
async fn report_after_a_scripted_sequence() {
    let f = fixture();
    script(&f).await;

    let report = f.reports.report_since(t0() + 5 * DAY).await.expect("report");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["generated_at"], "2027-02-14T08:00:00Z");
    assert_eq!(json["unused_since"], "2027-01-20T08:00:00Z");
    let ids: Vec<&str> = report.clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(
        ids,
        ["billing-export", "inventory-sync", "monitor", "ops-console"]
    );

    assert_eq!(
        client(&json, "inventory-sync"),
        &json!({
            "client_id": "inventory-sync",
            "owner": "inventory-sync-owner@example.com",
            "purpose": "inventory-sync purpose",
            "status": "active",
            "expires": "2027-04-15T08:00:00Z",
            "days_left": 60,
            "expiring_soon": false,
            "granted": ["inventory:read", "orders:read", "orders:write"],
            "used": [
                {"scope": "inventory:read", "uses": 1, "last_used": "2027-01-16T08:00:00Z", "granted": true},
                {"scope": "orders:read", "uses": 3, "last_used": "2027-01-25T08:00:00Z", "granted": true},
            ],
            "unused": ["inventory:read", "orders:write"],
            "denied": [
                {"scope": "admin", "attempts": 3, "last_attempt": "2027-01-25T08:00:00Z"},
            ],
            "truncated": false,
            "last_seen": "2027-01-25T08:00:00Z",
            "stale": false,
            "never_seen": false,
            "api_keys": [],
            // Issued 2027-01-25T07:00:00Z; the report is made 20 days later.
            "newest_token": {"issued_at": "2027-01-25T07:00:00Z", "age_seconds": 20 * 86_400 + 3_600, "age_days": 20},
        })
    );
    // Stale identities: ops-console was last seen before the window, monitor never.
    let ops = client(&json, "ops-console");
    assert_eq!(
        (ops["stale"].as_bool(), ops["never_seen"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(ops["last_seen"], "2027-01-16T08:00:00Z");
    let monitor = client(&json, "monitor");
    assert_eq!(
        (monitor["stale"].as_bool(), monitor["never_seen"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(monitor["last_seen"], Value::Null);
    assert_eq!(
        client(&json, "billing-export")["stale"],
        false,
        "a refusal is a sighting"
    );
    assert_eq!((report.stale_clients, report.never_seen_clients), (1, 1));
    assert_eq!(
        ops["used"],
        json!([{"scope": "admin", "uses": 1, "last_used": "2027-01-16T08:00:00Z", "granted": true}])
    );
    assert_eq!(ops["unused"], json!(["admin", "orders:read"]));
    let billing = client(&json, "billing-export");
    assert_eq!(billing["used"], json!([]));
    assert_eq!(billing["unused"], json!(["invoices:read"]));
    assert_eq!(
        billing["denied"],
        json!([{"scope": "orders:read", "attempts": 1, "last_attempt": "2027-01-25T08:00:00Z"}])
    );

    // A wider window: only scopes never used remain unused.
    let all_time = f.reports.report_since(t0()).await.expect("report");
    let sync = all_time
        .clients
        .iter()
        .find(|c| c.client_id.as_str() == "inventory-sync")
        .expect("client");
    assert_eq!(sync.unused.to_string(), "orders:write");

    // The default window (30 days before now = t0): the same.
    let default = f.reports.report().await.expect("report");
    assert_eq!(default.unused_since, "2027-01-15T08:00:00Z");

    // Close to expiry: days left shrink, the flag rises (14-day window).
    f.clock.advance(50 * DAY);
    let late = f.reports.report().await.expect("report");
    let sync = late
        .clients
        .iter()
        .find(|c| c.client_id.as_str() == "inventory-sync")
        .expect("client");
    assert_eq!((sync.days_left, sync.expiring_soon), (10, true));
    f.clock.advance(11 * DAY);
    let expired = f.reports.report().await.expect("report");
    let sync = expired
        .clients
        .iter()
        .find(|c| c.client_id.as_str() == "inventory-sync")
        .expect("client");
    assert_eq!((sync.days_left, sync.expiring_soon), (-1, false));
    assert!(f.store.len() >= 3);
}

// The handler needs the crate's `axum` feature.
#[cfg(feature = "axum")]
#[tokio::test]
async fn admin_clients_handler_behind_the_admin_scope() {
    use http_body_util::BodyExt;

    let f = fixture();
    script(&f).await;
    let admin = f.layer.for_route(Require::all_of("admin")).expect("valid");
    let app = axum::Router::new()
        .route("/admin/clients", f.reports.get_handler().route_layer(admin))
        .layer(MapRequestLayer::new(identify));

    let get = |client: &str, uri: &str| {
        let req = Request::builder()
            .uri(uri)
            .header("x-test-client", client)
            .body(axum::body::Body::empty())
            .expect("request");
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await.expect("infallible");
            let status = res.status();
            let ct = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            let body = res.into_body().collect().await.expect("body").to_bytes();
            (status, ct, serde_json::from_slice::<Value>(&body).expect("json"))
        }
    };

    let (status, ct, body) = get("ops-console", "/admin/clients?unused_days=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert_eq!(body["unused_since"], "2027-02-09T08:00:00Z");
    assert_eq!(client(&body, "inventory-sync")["denied"][0]["scope"], "admin");

    let (status, _, body) = get("ops-console", "/admin/clients?since=2027-01-20T08:00:00Z").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        client(&body, "inventory-sync")["unused"],
        json!(["inventory:read", "orders:write"])
    );

    let (status, ct, body) = get("ops-console", "/admin/clients?unused_days=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    assert_eq!(body["type"], "urn:nhi-guard:problem:invalid-query");

    // The admin route is itself protected by the layer.
    let (status, _, body) = get("inventory-sync", "/admin/clients").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["missing_scopes"], json!(["admin"]));
}

/// Rules nobody can pass are listed (by the report given the policy) and counted,
/// and follow the inventory when it is replaced.
#[tokio::test]
async fn rules_no_client_can_pass_are_reported_and_follow_the_inventory() {
    use nhi_guard_core::registry::{ClientRecord, ClientRegistry, Inventory};
    use nhi_guard_scope::report::{unreachable_rules, warn_unreachable_rules};

    let policy = Policy::builder()
        .get("/orders/{id}", Require::all_of("orders:read"))
        .post("/exports", Require::all_of("exports:run orders:read"))
        .get("/reports", Require::any_of("reports:read reports:admin"))
        .public(Method::GET, "/healthz")
        .build()
        .expect("policy");
    let registry = Arc::new(InMemoryRegistry::new(common::inventory()));
    let reports = ReportService::new(registry.clone(), Arc::new(InMemoryUsageStore::new()))
        .clock(Arc::new(ManualClock::at(t0())))
        .policy(policy.clone());
    let report = serde_json::to_value(reports.report().await.expect("report")).expect("json");
    assert_eq!(
        report["unreachable_rules"],
        json!([
            { "rule": "POST /exports", "missing": "exports:run" },
            { "rule": "GET /reports", "missing": "one of reports:admin reports:read" },
        ])
    );

    // A client holding the scopes arrives: nothing is unreachable any more.
    let mut onboarded = Inventory::builder();
    for c in registry.clients() {
        onboarded = onboarded.client((*c).clone());
    }
    let exporter = ClientRecord::builder("exporter", "data@example.com", "Exports", t0() + DAY * 90)
        .scopes(nhi_guard_core::ScopeSet::parse("exports:run reports:read").expect("scopes"))
        .build()
        .expect("record");
    registry
        .replace(onboarded.client(exporter).build().expect("inventory"))
        .expect("replace");
    let report = serde_json::to_value(reports.report().await.expect("report")).expect("json");
    assert_eq!(report["unreachable_rules"], json!([]));
    assert!(unreachable_rules(&policy, &registry.clients()).is_empty());

    // The warning path counts them in the gauge.
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let empty = Arc::new(InMemoryRegistry::new(
        Inventory::builder().build().expect("empty"),
    ));
    let found = metrics::with_local_recorder(&recorder, || warn_unreachable_rules(&policy, &*empty));
    assert_eq!(found.len(), 3);
    let snapshot = nhi_guard_testkit::metrics::Snapshot::take(&snapshotter);
    assert_eq!(
        snapshot.get(
            metrics_util::MetricKind::Gauge,
            nhi_guard_core::metrics::SCOPE_UNREACHABLE_RULES,
            &[]
        ),
        Some(&metrics_util::debugging::DebugValue::Gauge(3.0.into()))
    );
}
