//! Revocation across replicas: two gateways sharing one real `redis-server`
//! (started by the test on a free loopback port; skipped without it, except in CI).
//! A revocation made on one holds on the other at once, survives the other's
//! restart and Redis restarting empty, and a lift reaches every replica.

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
