//! The `authz_server` example's three ways in: NGINX `auth_request`, Traefik
//! `ForwardAuth` and Envoy's `ext_authz` `Check`.
//!
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
//!
//! Envoy: no Envoy binary is available here (Debian does not package it), so a
//! real tonic client sends the `CheckRequest`s Envoy's `ext_authz` filter sends
//! (attributes with the downstream address, pseudo-headers, `headers` or raw
//! `header_map`) to the `Check` service served over HTTP/2 on loopback.

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
#[path = "../examples/authz_server/envoy.rs"]
#[allow(dead_code, unreachable_pub)]
mod envoy;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;
#[path = "../examples/edge_proxy/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use common::nginx::{Nginx, Site, documented_site};
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

/// Which of the server's listeners a test talks to.
#[derive(Clone, Copy)]
enum Way {
    /// `/authz`, HTTP/1.
    Http,
    /// Envoy's `Check`, gRPC.
    Grpc,
}

impl AuthzServer {
    async fn start(dir: &TempDir, way: Way) -> Self {
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
        let decider = authz::decider(guard.layer.clone());
        let server = Server::start(match way {
            Way::Http => authz::routes(decider, None),
            Way::Grpc => envoy::ExtAuthz::router(decider),
        })
        .await;
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

fn prerequisites(test: &str) -> Option<PathBuf> {
    common::nginx::prerequisites(test, &[CLIENT, FLOODER])
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

#[test]
fn the_problem_header_is_ascii_and_the_same_json() {
    let body = "{\"detail\":\"tr\u{e8}s \u{1f600}\",\"status\":429}".as_bytes();
    let line = authz::ascii_json(body);
    assert!(line.is_ascii(), "{line}");
    let back: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(
        back,
        serde_json::from_slice::<serde_json::Value>(body).expect("JSON")
    );
    assert_eq!(authz::ascii_json(b"not json"), "{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_asks_the_stack_about_every_request() {
    let Some(bin) = prerequisites("nginx_auth_request_asks_the_stack_about_every_request") else {
        return;
    };
    let dir = TempDir::unique("nhi-guard-authz-nginx");
    let authz = AuthzServer::start(&dir, Way::Http).await;
    let seen = Seen::default();
    let upstream = upstream(seen.clone()).await;
    let conf = documented_site(authz.server.addr, upstream.addr);
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
    let placed = common::placed(&records);
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
    let authz = AuthzServer::start(&dir, Way::Http).await;
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
    let placed = common::placed(&records);
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

// ---------------------------------------------------------------------------
// Envoy ext_authz
// ---------------------------------------------------------------------------

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HeaderAppendAction, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{self as core_v3, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

/// The downstream client Envoy names in `source`.
const DOWNSTREAM: &str = "203.0.113.9";
/// Another one, for the flood shield.
const DOWNSTREAM_FLOODER: &str = "203.0.113.10";

/// A `CheckRequest` as Envoy's filter builds it: the downstream address, the
/// request line and its fields with the HTTP/2-style pseudo-headers; in
/// `header_map` (raw values) when `raw` is set, as with `encode_raw_headers`.
fn check_request(source: &str, method: &str, path: &str, fields: &[(&str, &str)], raw: bool) -> CheckRequest {
    let mut headers: Vec<(String, String)> = vec![
        (":authority".into(), "orders.example".into()),
        (":method".into(), method.into()),
        (":path".into(), path.into()),
        (":scheme".into(), "https".into()),
        ("user-agent".into(), "inventory-sync/2.1".into()),
    ];
    headers.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut http = HttpRequest {
        id: "1234567890".into(),
        method: method.into(),
        path: path.into(),
        host: "orders.example".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        ..Default::default()
    };
    if raw {
        http.header_map = Some(core_v3::HeaderMap {
            headers: headers
                .into_iter()
                .map(|(key, value)| core_v3::HeaderValue {
                    key,
                    raw_value: value.into_bytes(),
                    ..Default::default()
                })
                .collect(),
        });
    } else {
        http.headers = headers.into_iter().collect();
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(core_v3::Address {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: source.into(),
                        port_specifier: Some(PortSpecifier::PortValue(40_000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The fields an allowed check sets, and those it removes.
fn ok_fields(res: &CheckResponse) -> (Vec<(String, String)>, Vec<String>) {
    match &res.http_response {
        Some(HttpResponse::OkResponse(ok)) => (
            ok.headers
                .iter()
                .map(|h| {
                    assert_eq!(
                        h.append_action,
                        HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                        "a client-sent value is overwritten"
                    );
                    let hv = h.header.as_ref().expect("header");
                    (hv.key.clone(), hv.value.clone())
                })
                .collect(),
            ok.headers_to_remove.clone(),
        ),
        other => panic!("not an OkResponse: {other:?}"),
    }
}

/// The denied answer: HTTP status, fields and problem body.
fn denied(res: &CheckResponse) -> (u16, HeaderMap, serde_json::Value) {
    match &res.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            let mut headers = HeaderMap::new();
            for h in &d.headers {
                let hv = h.header.as_ref().expect("header");
                headers.append(
                    http::HeaderName::from_bytes(hv.key.as_bytes()).expect("name"),
                    hv.value.parse().expect("value"),
                );
            }
            let code = d.status.as_ref().map(|s| s.code).unwrap_or_default();
            (
                u16::try_from(code).expect("an HTTP status"),
                headers,
                serde_json::from_str(&d.body).expect("a JSON problem body"),
            )
        }
        other => panic!("not a DeniedResponse: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_check_requests_get_the_stacks_decision() {
    let dir = TempDir::unique("nhi-guard-authz-envoy");
    let authz = AuthzServer::start(&dir, Way::Grpc).await;
    let mut client = AuthorizationClient::connect(authz.server.base())
        .await
        .expect("a gRPC connection");
    let mut check = async |req: CheckRequest| client.check(req).await.map(tonic::Response::into_inner);

    // Allowed, fields as a map and as raw values: the identity for the upstream.
    for raw in [false, true] {
        let res = check(check_request(
            DOWNSTREAM,
            "GET",
            "/orders?page=2",
            &[("x-api-key", READER_KEY), ("x-nhi-client-id", "someone-else")],
            raw,
        ))
        .await
        .expect("check");
        assert_eq!(res.status.as_ref().map(|s| s.code), Some(0), "{res:?}");
        let (set, removed) = ok_fields(&res);
        let get = |k: &str| set.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("x-nhi-client-id"), Some("orders-reader"), "{set:?}");
        assert_eq!(get("x-nhi-scopes"), Some("orders:read"));
        assert_eq!(get("x-nhi-credential-kind"), Some("api_key"));
        assert!(get("x-nhi-request-id").is_some_and(|v| !v.is_empty()));
        assert!(removed.is_empty(), "{removed:?}");
    }
    // A public route without a credential: allowed, and a client-sent identity
    // field is removed rather than passed on.
    let res = check(check_request(
        DOWNSTREAM,
        "GET",
        "/healthz",
        &[("x-nhi-client-id", "admin")],
        false,
    ))
    .await
    .expect("check");
    let (set, removed) = ok_fields(&res);
    assert!(removed.contains(&"x-nhi-client-id".to_owned()), "{removed:?}");
    assert_eq!(set.len(), 1, "only the request id: {set:?}");

    // No credential: UNAUTHENTICATED, 401 with the Bearer challenge.
    let res = check(check_request(DOWNSTREAM, "GET", "/orders", &[], false))
        .await
        .expect("check");
    assert_eq!(
        res.status.as_ref().map(|s| s.code),
        Some(tonic::Code::Unauthenticated as i32)
    );
    let (status, headers, body) = denied(&res);
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["status"], json!(401));

    // The method is judged: POST /orders needs orders:write.
    let res = check(check_request(
        DOWNSTREAM,
        "POST",
        "/orders",
        &[("x-api-key", READER_KEY)],
        false,
    ))
    .await
    .expect("check");
    assert_eq!(
        res.status.as_ref().map(|s| s.code),
        Some(tonic::Code::PermissionDenied as i32)
    );
    let (status, headers, body) = denied(&res);
    assert_eq!(status, 403);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("error=\"insufficient_scope\""),
        "{headers:?}"
    );
    assert_eq!(body["reason"], json!("insufficient_scope"));

    // The flood shield keys on the downstream address: 429 with Retry-After.
    for i in 0..4 {
        let res = check(check_request(DOWNSTREAM_FLOODER, "GET", "/orders", &[], false))
            .await
            .expect("check");
        let (status, headers, _) = denied(&res);
        if i < 3 {
            assert_eq!(status, 401);
        } else {
            assert_eq!(status, 429);
            assert_eq!(
                res.status.as_ref().map(|s| s.code),
                Some(tonic::Code::ResourceExhausted as i32)
            );
            assert!(headers.contains_key("retry-after"), "{headers:?}");
            assert!(headers.contains_key("ratelimit"), "{headers:?}");
        }
    }

    // A CheckRequest without the HTTP attributes is the caller's error.
    let err = check(CheckRequest::default()).await.expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let records = authz.finish().await;
    let placed = common::placed(&records);
    let (d, f) = (DOWNSTREAM, DOWNSTREAM_FLOODER);
    assert_eq!(
        placed,
        [
            (d, 200),
            (d, 200),
            (d, 200),
            (d, 401),
            (d, 403),
            (f, 401),
            (f, 401),
            (f, 401),
            (f, 429)
        ],
        "one record per check, at the downstream address: {records:#?}"
    );
}
