//! Forward auth behind a real NGINX: the `authz_server` example (built from
//! `NHI_GUARD_*` variables as its `main` builds it, served on 127.0.0.1:0 with each
//! connection's peer address) answers the `auth_request` sub-requests of an nginx
//! this test starts with `examples/authz_server/nginx.conf` as it is (only the
//! ports changed), in front of a real upstream that records what reaches it.
//!
//! - allowed: the upstream gets the request with the verified identity in
//!   `x-nhi-*` (a client-sent `x-nhi-client-id` replaced) and without the
//!   credential;
//! - refused: 401 with the Bearer challenge, 403 `insufficient_scope`, 429 with
//!   `Retry-After` and `RateLimit` reach the client with the problem body the
//!   in-process stack gives, and the upstream never sees them;
//! - one audit record per request, at the client's real address.
//!
//! Without nginx (or without the client addresses 127.0.0.2 / .3) the nginx test
//! is skipped with a message, except under `CI=true`, where it fails. The
//! Traefik-style test (the original request in `X-Forwarded-Method` /
//! `X-Forwarded-Uri`, answered with the real status) needs no nginx.

#![cfg(unix)]

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/authz_server/authz.rs"]
#[allow(dead_code, unreachable_pub)]
mod authz;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;
#[path = "../examples/edge_proxy/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use common::nginx::{Nginx, Site, nginx_binary};
use common::{HttpClient, Reply, Server, audit_requests, client_toml, get, http_client, lookup};
use http::{HeaderMap, StatusCode};
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::registry::ApiKeyHash;
use nhi_guard_testkit::temp::TempDir;
use serde_json::json;

/// The test's clients: loopback, but not the trusted proxy (127.0.0.1, nginx).
const CLIENT: &str = "127.0.0.2";
const FLOODER: &str = "127.0.0.3";

/// Holds `orders:read`.
const READER_KEY: &str = "nhik_authz_reader_5e1c0f9a27";

/// The decision server with the demo gateway's routes, a frozen clock (rate budgets
/// never refill during a test) and an audit log; served until dropped.
struct AuthzServer {
    guard: guard::Guard,
    server: Server,
    audit_log: PathBuf,
}

impl AuthzServer {
    async fn start(dir: &TempDir) -> Self {
        let clients = dir.join("clients.toml");
        let key = format!("api_keys = [\"{}\"]", ApiKeyHash::of_key(READER_KEY.as_bytes()));
        std::fs::write(&clients, client_toml("orders-reader", &[key])).expect("inventory");
        let audit_log = dir.join("audit.jsonl");
        let vars = [
            ("NHI_GUARD_CLIENTS", clients.to_str().expect("utf-8 path")),
            ("NHI_GUARD_AUDIT_LOG", audit_log.to_str().expect("utf-8 path")),
            ("NHI_GUARD_TRUSTED_PROXIES", "127.0.0.1/32"),
            // Three anonymous requests per address, then 429.
            ("NHI_GUARD_ADDRESS_LIMIT", "1:3"),
        ];
        let config = config::from_lookup(lookup(&vars)).expect("configuration");
        let registry = guard::load_registry(&config).expect("inventory");
        let guard = guard::build(
            &config,
            registry,
            "http://127.0.0.1:8080",
            Arc::new(ManualClock::now()),
        )
        .await
        .expect("stack");
        let server = Server::start(authz::routes(guard.layer.clone(), None)).await;
        Self {
            guard,
            server,
            audit_log,
        }
    }

    /// Seals the audit log and returns its request records.
    async fn finish(self) -> Vec<serde_json::Value> {
        drop(self.server);
        self.guard.audit.shutdown().await.expect("audit log flushed");
        audit_requests(&self.audit_log)
    }
}

/// What reached the upstream: each request's target and fields.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

async fn upstream(seen: Seen) -> Server {
    let router = axum::Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        async move {
            seen.lock()
                .expect("lock")
                .push((req.uri().to_string(), req.headers().clone()));
            axum::Json(json!({ "from": "upstream" }))
        }
    });
    Server::start(router).await
}

fn client_at(ip: &str) -> HttpClient {
    http_client(Some(ip.parse::<IpAddr>().expect("ip")))
}

/// The nginx, or `None` (after saying why) when the test must be skipped.
fn prerequisites(test: &str) -> Option<PathBuf> {
    let bound = [CLIENT, FLOODER]
        .iter()
        .try_for_each(|ip| std::net::TcpListener::bind((*ip, 0)).map(drop));
    let missing = match (nginx_binary(), bound) {
        (Some(nginx), Ok(())) => return Some(nginx),
        (None, _) => {
            "nginx not found on PATH or at /usr/sbin/nginx (Debian: apt-get install nginx-light)".to_owned()
        }
        (_, Err(e)) => format!("cannot bind {CLIENT} and {FLOODER}: {e}"),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {missing}; required under CI=true"
    );
    eprintln!("{test}: SKIPPED: {missing}");
    None
}

/// The documented site, with the test's ports.
fn site(authz: SocketAddr, upstream: SocketAddr) -> String {
    let conf = include_str!("../examples/authz_server/nginx.conf");
    assert!(conf.contains("http://127.0.0.1:8080/authz") && conf.contains("http://127.0.0.1:9000;"));
    conf.replace("http://127.0.0.1:8080/authz", &format!("http://{authz}/authz"))
        .replace("http://127.0.0.1:9000;", &format!("http://{upstream};"))
}

/// A refusal as the stack renders it: problem body with the status, one challenge
/// at most, the edge's internal fields not passed on.
fn assert_problem(r: &Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{:?}",
        r.headers
    );
    assert_eq!(r.body["status"], json!(status.as_u16()), "{}", r.text);
    assert!(
        r.headers.get_all("www-authenticate").iter().count() <= 1,
        "{:?}",
        r.headers
    );
    assert!(
        r.headers.get("x-nhi-problem").is_none(),
        "internal fields stay at the edge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_asks_the_stack_about_every_request() {
    let Some(bin) = prerequisites("nginx_auth_request_asks_the_stack_about_every_request") else {
        return;
    };
    let dir = TempDir::unique("nhi-guard-authz-nginx");
    let authz = AuthzServer::start(&dir).await;
    let seen = Seen::default();
    let upstream = upstream(seen.clone()).await;
    let conf = site(authz.server.addr, upstream.addr);
    let nginx = Nginx::start(&bin, &[Site::Server(&conf)]).await;
    let base = nginx.url(0);
    let (client, flooder) = (client_at(CLIENT), client_at(FLOODER));

    // Allowed: the upstream answers, and sees the identity instead of the key.
    let r = get(
        &client,
        &format!("{base}/orders?page=2"),
        &[("x-api-key", READER_KEY), ("x-nhi-client-id", "someone-else")],
    )
    .await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::OK, &json!({ "from": "upstream" })),
        "{}",
        r.text
    );
    {
        let seen = seen.lock().expect("lock");
        let (target, headers) = seen.last().expect("the upstream was reached");
        assert_eq!(target, "/orders?page=2");
        let field = |n: &str| {
            headers
                .get(n)
                .map(|v| v.to_str().expect("ascii"))
                .unwrap_or_default()
        };
        assert_eq!(field("x-nhi-client-id"), "orders-reader", "{headers:?}");
        assert_eq!(field("x-nhi-owner"), "qa@example.com");
        assert_eq!(field("x-nhi-scopes"), "orders:read");
        assert_eq!(field("x-nhi-credential-kind"), "api_key");
        assert!(!field("x-nhi-request-id").is_empty(), "{headers:?}");
        assert!(
            headers.get("x-api-key").is_none(),
            "the credential stays at the edge"
        );
    }

    // No credential: 401 with the Bearer challenge and the problem body.
    let r = get(&client, &format!("{base}/orders"), &[]).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED);
    assert!(r.body["request_id"].is_string(), "{}", r.text);
    assert_eq!(
        r.header("x-nhi-request-id"),
        r.body["request_id"].as_str().unwrap_or_default()
    );
    assert!(
        r.header("www-authenticate").starts_with("Bearer"),
        "{:?}",
        r.headers
    );

    // A scope the client does not hold: 403 insufficient_scope.
    let r = get(&client, &format!("{base}/metrics"), &[("x-api-key", READER_KEY)]).await;
    assert_problem(&r, StatusCode::FORBIDDEN);
    assert!(
        r.header("www-authenticate")
            .contains("error=\"insufficient_scope\""),
        "{:?}",
        r.headers
    );

    // Outside the policy: 403.
    let r = get(&client, &format!("{base}/nowhere"), &[("x-api-key", READER_KEY)]).await;
    assert_problem(&r, StatusCode::FORBIDDEN);

    // The address flood shield: three anonymous requests, then 429 with
    // Retry-After and the RateLimit fields, though auth_request passes only 401/403.
    for i in 0..4 {
        let r = get(&flooder, &format!("{base}/orders"), &[]).await;
        if i < 3 {
            assert_problem(&r, StatusCode::UNAUTHORIZED);
        } else {
            assert_problem(&r, StatusCode::TOO_MANY_REQUESTS);
            let retry: u64 = r.header("retry-after").parse().expect("Retry-After in seconds");
            assert!(retry >= 1, "{:?}", r.headers);
            assert!(!r.header("ratelimit").is_empty(), "{:?}", r.headers);
            assert!(!r.header("ratelimit-policy").is_empty(), "{:?}", r.headers);
            assert_eq!(r.body["violated-policies"], json!(["per-address"]), "{}", r.text);
        }
    }

    // Only the allowed request reached the upstream.
    assert_eq!(
        seen.lock().expect("lock").len(),
        1,
        "refused requests never reach the upstream"
    );
    drop(nginx);
    let records = authz.finish().await;
    let placed: Vec<(&str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["src_endpoint"]["ip"].as_str().unwrap_or_default(),
                r["http_response"]["code"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        [
            (CLIENT, 200),
            (CLIENT, 401),
            (CLIENT, 403),
            (CLIENT, 403),
            (FLOODER, 401),
            (FLOODER, 401),
            (FLOODER, 401),
            (FLOODER, 429),
        ],
        "one record per request, at the client's address, with the status it got: {records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_forward_auth_gets_the_real_status() {
    let dir = TempDir::unique("nhi-guard-authz-traefik");
    let authz = AuthzServer::start(&dir).await;
    let url = format!("{}/authz", authz.server.base());
    // Traefik is the socket peer (127.0.0.1, trusted) and names the client.
    let edge = client_at("127.0.0.1");
    let ask = |method: &'static str, uri: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let (edge, url) = (edge.clone(), url.clone());
        async move {
            let mut headers = vec![
                ("x-forwarded-method", method),
                ("x-forwarded-uri", uri),
                ("x-forwarded-for", "203.0.113.7"),
            ];
            headers.extend_from_slice(extra);
            get(&edge, &url, &headers).await
        }
    };

    let r = ask("GET", "/orders", &[("x-api-key", READER_KEY)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.header("x-nhi-client-id"), "orders-reader");
    assert!(!r.header("x-nhi-request-id").is_empty());
    // The method is judged: POST /orders needs orders:write.
    let r = ask("POST", "/orders", &[("x-api-key", READER_KEY)]).await;
    assert_problem(&r, StatusCode::FORBIDDEN);
    assert!(r.header("x-nhi-client-id").is_empty(), "no identity on a refusal");
    // Traefik passes any status on: 429 itself, no X-Nhi-Status.
    for _ in 0..3 {
        assert_eq!(ask("GET", "/orders", &[]).await.status, StatusCode::UNAUTHORIZED);
    }
    let r = ask("GET", "/orders", &[]).await;
    assert_problem(&r, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("x-nhi-status").is_empty(), "{:?}", r.headers);
    assert!(!r.header("retry-after").is_empty(), "{:?}", r.headers);

    // A sub-request without the original request: the edge's configuration is wrong.
    let r = get(&edge, &url, &[("x-api-key", READER_KEY)]).await;
    assert_problem(&r, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["reason"], json!("original_request_missing"), "{}", r.text);
    let r = ask("GET", "http://elsewhere.example/orders", &[]).await;
    assert_problem(&r, StatusCode::BAD_REQUEST);

    let records = authz.finish().await;
    let placed: Vec<(&str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["src_endpoint"]["ip"].as_str().unwrap_or_default(),
                r["http_response"]["code"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let client = "203.0.113.7";
    assert_eq!(
        placed,
        [
            (client, 200),
            (client, 403),
            (client, 401),
            (client, 401),
            (client, 401),
            (client, 429)
        ],
        "the unusable sub-requests are not requests of a client: {records:#?}"
    );
}
