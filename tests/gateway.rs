//! The demo gateway's contract: configuration from `NHI_GUARD_*` variables, the
//! demo inventory, and the routes.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
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
    assert!(c.clients.is_none());
    for (var, value) in [
        ("NHI_GUARD_LISTEN", "localhost"),
        ("NHI_GUARD_CLIENTS", ""),
        ("NHI_GUARD_TRUSTED_PROXIES", "10.0.0.0/8, nope"),
    ] {
        let err = config::from_lookup(lookup(&[(var, value)])).expect_err(var);
        assert!(err.starts_with(var), "{err}");
    }
    let c =
        config::from_lookup(lookup(&[("NHI_GUARD_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")])).expect("ok");
    assert_eq!(c.trusted_proxies.len(), 2);
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

async fn call(method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
    let registry = Arc::new(InMemoryRegistry::new(app::demo_inventory(SystemTime::now())));
    let router = app::routes(app::AppState { registry });
    let res = router
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .expect("req"),
        )
        .await
        .expect("infallible");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).expect("json"))
}

#[tokio::test]
async fn routes_answer_with_json() {
    assert_eq!(call("GET", "/healthz").await.1["status"], "ok");
    assert_eq!(call("GET", "/orders").await.0, StatusCode::OK);
    assert_eq!(call("POST", "/orders").await.0, StatusCode::CREATED);
    assert_eq!(call("GET", "/inventory/sku-9").await.1["sku"], "sku-9");
    assert_eq!(call("POST", "/inventory/sku-9/reserve").await.1["reserved"], 1);
    let (status, body) = call("GET", "/admin/clients").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["clients"].as_array().map(Vec::len), Some(4));
    assert_eq!(body["clients"][0]["id"], "inventory-sync");
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
