//! The lifecycle across replicas: two gateways sharing one real `redis-server`
//! (started by the test on a free loopback port; skipped without it, except in CI).
//! A revocation made on one holds on the other at once, survives the other's
//! restart and Redis restarting empty, and a lift reaches every replica; a client
//! seen on one replica is seen (not stale, its newest token's age known) in the
//! other's report.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
mod common;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;

use std::time::{Duration, Instant};

use common::{Gateway, HttpClient, Reply, get, http_client};
use http::StatusCode;
use nhi_guard_redis::testing::RedisServer;

fn partner_key() -> &'static str {
    app::DEMO_API_KEYS
        .iter()
        .find(|(c, _)| *c == "partner-feed")
        .expect("demo key")
        .1
}

/// An operator token of `gw`'s own demo issuer.
fn ops(gw: &Gateway) -> String {
    let demo = gw.guard.demo.as_ref().expect("demo issuer");
    format!(
        "Bearer {}",
        demo.mint("ops-console", "admin", Duration::from_secs(600))
    )
}

async fn partner(client: &HttpClient, gw: &Gateway) -> Reply {
    get(
        client,
        &format!("{}/inventory/sku-1", gw.base()),
        &[("x-api-key", partner_key())],
    )
    .await
}

/// Sends `method` with a JSON body to `gw`'s admin routes.
async fn admin(
    gw: &Gateway,
    method: http::Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", gw.base()))
        .header("authorization", ops(gw))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
        .expect("request");
    let res = client.request(req).await.expect("admin request");
    let status = res.status();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// How long until `gw` refuses partner-feed with `reason` (or answers 200 when
/// `reason` is `None`); panics after 10 s.
async fn until(client: &HttpClient, gw: &Gateway, reason: Option<&str>) -> Duration {
    let start = Instant::now();
    loop {
        let r = partner(client, gw).await;
        let done = match reason {
            Some(reason) => r.status == StatusCode::UNAUTHORIZED && r.body["reason"] == reason,
            None => r.status == StatusCode::OK,
        };
        if done {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {}: {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_holds_on_every_replica_and_survives_restarts() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let vars = [("NHI_GUARD_REDIS_URL", url.as_str())];
    let a = Gateway::start(&vars).await.expect("replica a");
    let b = Gateway::start(&vars).await.expect("replica b");
    let client = http_client(None);
    assert_eq!(partner(&client, &b).await.status, StatusCode::OK);

    // Revoked on a: b refuses the next requests.
    let (status, body) = admin(
        &a,
        http::Method::POST,
        "/admin/revocations",
        r#"{"client_id":"partner-feed"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["shared"], true, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let latency = until(&client, &b, Some("client_revoked")).await;
    eprintln!("revocation on replica a refused on replica b after {latency:?}");

    // b restarts: it loads the revocation from Redis before serving.
    drop(b);
    let b = Gateway::start(&vars).await.expect("replica b again");
    let r = partner(&client, &b).await;
    assert_eq!(r.body["reason"], "client_revoked", "{}", r.text);

    // Redis restarts empty: the replicas write back what they hold, so nothing is
    // lifted by the loss; a replica started afterwards sees it too.
    redis.restart();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let c = Gateway::start(&vars).await.expect("replica c");
    let r = partner(&client, &c).await;
    assert_eq!(r.body["reason"], "client_revoked", "{}", r.text);

    // Lifted on b: a serves partner-feed again.
    let (status, _) = admin(&b, http::Method::DELETE, &format!("/admin/revocations/{id}"), "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let latency = until(&client, &a, None).await;
    eprintln!("lift on replica b reached replica a after {latency:?}");
    until(&client, &c, None).await;

    // Redis down: a revocation made on a holds on a at once, and reaches the
    // others once Redis is back.
    redis.kill();
    let (status, body) = admin(
        &a,
        http::Method::POST,
        "/admin/revocations",
        r#"{"client_id":"partner-feed"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["shared"], false, "{body}");
    assert_eq!(partner(&client, &a).await.body["reason"], "client_revoked");
    redis.restart();
    let latency = until(&client, &b, Some("client_revoked")).await;
    eprintln!("revocation made while Redis was down reached replica b {latency:?} after Redis came back");
}

/// The report of `gw` (as its own operator), with `query`.
async fn report(gw: &Gateway, query: &str) -> serde_json::Value {
    let (status, body) = admin(gw, http::Method::GET, &format!("/admin/clients{query}"), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn client<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .find(|c| c["client_id"] == id)
        .unwrap_or_else(|| panic!("{id} in the report"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_seen_on_one_replica_is_not_stale_on_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let vars = [("NHI_GUARD_REDIS_URL", url.as_str())];
    let a = Gateway::start(&vars).await.expect("replica a");
    let b = Gateway::start(&vars).await.expect("replica b");

    // inventory-sync calls a alone, with a token issued 20 hours ago (a day is the
    // longest lifetime the gateway accepts).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let demo = a.guard.demo.as_ref().expect("demo issuer");
    let token = demo.mint_claims(&serde_json::json!({
        "iss": demo.iss(), "aud": config::from_lookup(common::lookup(&vars)).expect("config").audience,
        "sub": "inventory-sync",
        "client_id": "inventory-sync", "scope": "inventory:read",
        "iat": now - 20 * 3600, "exp": now + 600, "jti": "lifecycle-1",
    }));
    let r = get(
        &http_client(None),
        &format!("{}/inventory/sku-1", a.base()),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // b's report knows within its flush period (a second); without Redis it would
    // call inventory-sync never seen.
    let start = Instant::now();
    let seen = loop {
        let report = report(&b, "").await;
        let sync = client(&report, "inventory-sync").clone();
        if sync["never_seen"] == false {
            break sync;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{sync}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "a client seen on replica a was seen in replica b's report after {:?}",
        start.elapsed()
    );
    assert_eq!(seen["stale"], false, "{seen}");
    assert!(seen["last_seen"].is_string(), "{seen}");
    // The gateway's clock stands at its start, a moment before `now`.
    let age = seen["newest_token"]["age_seconds"].as_u64().expect("token age");
    assert!((20 * 3600 - 60..=20 * 3600).contains(&age), "{seen}");
    assert_eq!(seen["newest_token"]["age_days"], 0, "{seen}");
    assert_eq!(seen["used"][0]["scope"], "inventory:read", "{seen}");
    let report_b = report(&b, "").await;
    assert_eq!(client(&report_b, "reporting-bot")["never_seen"], true);
    assert!(report_b["never_seen_clients"].as_u64().expect("count") >= 1);

    // Not seen since a later time: stale, on every replica.
    let later =
        nhi_guard::core::rfc3339(nhi_guard::core::clock::Clock::now(&b.clock) + Duration::from_secs(3600));
    for gw in [&a, &b] {
        let report = report(gw, &format!("?since={later}")).await;
        let sync = client(&report, "inventory-sync");
        assert_eq!(sync["stale"], true, "{sync}");
        assert!(report["stale_clients"].as_u64().expect("count") >= 1);
    }
}
