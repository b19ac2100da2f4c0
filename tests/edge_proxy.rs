//! The edge proxy end to end, over real HTTP both ways: a client → the proxy (the
//! gateway's whole stack around the forwarding handler) → a recording upstream
//! server. Allowed requests arrive with the verified identity and nothing the
//! client spoofed; denied ones never arrive; multi-megabyte bodies stream both ways;
//! an unreachable upstream is a 502.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;
#[path = "../examples/edge_proxy/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::registry::InMemoryRegistry;
use nhi_guard_testkit::temp::{TempDir, TempFile};
use tokio::sync::{Notify, mpsc};

const FIVE_MB: usize = 5 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// The test's deterministic content: byte `i` of any body.
fn byte_at(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

fn content(start: usize, len: usize) -> Bytes {
    (start..start + len).map(byte_at).collect::<Vec<u8>>().into()
}

/// FNV-1a over a stream of chunks.
#[derive(Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn of_content(len: usize) -> u64 {
        let mut c = Self::new();
        c.update(&content(0, len));
        c.0
    }
}

/// What the upstream received in one request.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: HeaderMap,
    body_len: usize,
    checksum: u64,
}

/// A real upstream server on 127.0.0.1:0 that records every request.
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `?gate`: the response stops after its first chunk until this is notified.
    release: Arc<Notify>,
    /// `?notify`: the length of the request body's first chunk, as soon as it arrives.
    first_chunk: Arc<Mutex<Option<mpsc::UnboundedSender<usize>>>>,
    /// Notified when a request body breaks off before its end.
    aborted: Arc<Notify>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = Self {
            addr: listener.local_addr().expect("addr"),
            arrived: Arc::default(),
            seen: Arc::default(),
            release: Arc::default(),
            first_chunk: Arc::default(),
            aborted: Arc::default(),
        };
        let router = Router::new().fallback(record).with_state(up.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        up
    }

    fn count(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request arrived")
    }
}

async fn record(State(up): State<Upstream>, req: Request) -> axum::response::Response {
    up.arrived.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let notify = if query.contains_key("notify") {
        up.first_chunk.lock().expect("lock").take()
    } else {
        None
    };
    let mut stream = body.into_data_stream();
    let (mut len, mut sum) = (0, Checksum::new());
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            up.aborted.notify_one();
            return (StatusCode::BAD_REQUEST, "body error").into_response();
        };
        if len == 0
            && let Some(tx) = &notify
        {
            let _ = tx.send(chunk.len());
        }
        len += chunk.len();
        sum.update(&chunk);
    }
    up.seen.lock().expect("lock").push(Seen {
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body_len: len,
        checksum: sum.0,
    });

    let size: usize = query.get("size").and_then(|s| s.parse().ok()).unwrap_or(0);
    if size == 0 {
        return (
            [("content-type", "application/json"), ("x-upstream", "yes")],
            r#"{"from":"upstream"}"#,
        )
            .into_response();
    }
    let gate = query.contains_key("gate").then(|| up.release.clone());
    let chunks = futures_util::stream::unfold((0usize, gate), move |(sent, gate)| async move {
        if sent >= size {
            return None;
        }
        if sent > 0
            && let Some(gate) = &gate
        {
            gate.notified().await;
        }
        let n = CHUNK.min(size - sent);
        Some((Ok::<_, Infallible>(content(sent, n)), (sent + n, None)))
    });
    let mut res = axum::response::Response::new(Body::from_stream(chunks));
    res.headers_mut()
        .insert("connection", http::HeaderValue::from_static("x-hop"));
    res.headers_mut()
        .insert("x-hop", http::HeaderValue::from_static("1"));
    res
}

/// The Prometheus recorder of this test binary, installed once before the first
/// stack is built.
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| guard::install_metrics().expect("the only recorder of this binary"))
        .clone()
}

/// The edge proxy on 127.0.0.1:0, served with `axum::serve` as `main.rs` does.
struct Edge {
    base: String,
    guard: guard::Guard,
    client: Client<HttpConnector, Body>,
    audit_log: TempFile,
    _clock: ManualClock,
}

async fn edge(upstream: &str) -> Edge {
    edge_with(upstream, &[]).await
}

/// An edge proxy configured from `vars` (besides `NHI_GUARD_UPSTREAM` and the
/// audit log, a JSON Lines file of its own), read as `main.rs` reads them.
async fn edge_with(upstream: &str, vars: &[(&str, &str)]) -> Edge {
    let audit_log = TempDir::unique("nhi-guard-edge-proxy").file("audit.jsonl");
    let audit = audit_log.to_string_lossy().into_owned();
    let lookup = |k: &str| match k {
        "NHI_GUARD_UPSTREAM" => Some(upstream.to_owned()),
        "NHI_GUARD_AUDIT_LOG" => Some(audit.clone()),
        _ => vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()),
    };
    let config = config::from_lookup(lookup).expect("defaults");
    let upstream = proxy::Upstream::from_lookup(lookup).expect("upstream");
    let limits = proxy::Limits::from_lookup(lookup).expect("limits");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let clock = ManualClock::now();
    let registry = Arc::new(InMemoryRegistry::new(app::demo_inventory(SystemTime::now())));
    let guard = guard::build(&config, registry, &base, Arc::new(clock.clone()))
        .await
        .expect("the stack builds");
    let jwks = guard.demo.as_ref().map(|d| Arc::from(d.jwks_json()));
    let router = proxy::routes(proxy::Proxy::new(upstream, limits), jwks, Some(metrics_handle()))
        .layer(guard.layer.clone());
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Edge {
        base,
        guard,
        client: Client::builder(TokioExecutor::new()).build_http(),
        audit_log,
        _clock: clock,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Edge {
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> http::request::Builder {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Reply {
        let req = self.request(method, path, headers).body(body).expect("request");
        let res = self.client.request(req).await.expect("the proxy answers");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    fn token(&self, client: &str, scopes: &str) -> String {
        let demo = self.guard.demo.as_ref().expect("demo issuer");
        format!("Bearer {}", demo.mint(client, scopes, Duration::from_secs(600)))
    }

    async fn finish(self) {
        self.records().await;
    }

    /// Flushes the audit log and returns its records.
    async fn records(self) -> Vec<serde_json::Value> {
        self.guard.audit.shutdown().await.expect("audit flushed");
        std::fs::read_to_string(&*self.audit_log)
            .expect("audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect()
    }
}

/// The audit record of the request `id`.
fn record_of<'a>(records: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["metadata"]["uid"] == id)
        .unwrap_or_else(|| panic!("no audit record for {id}"))
}

fn key(client: &str) -> &'static str {
    app::DEMO_API_KEYS
        .iter()
        .find(|(c, _)| *c == client)
        .expect("demo key")
        .1
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect()
}

fn is_request_id(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[tokio::test]
async fn allowed_requests_carry_the_verified_identity_and_nothing_spoofed() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;

    // An API key, with identity headers and a hop-by-hop header the client made up.
    let r = edge
        .send(
            "GET",
            "/orders?page=2",
            &[
                ("x-api-key", key("inventory-sync")),
                ("x-nhi-client-id", "ops-console"),
                ("x-nhi-scopes", "admin"),
                ("X-NHI-Tier", "bulk"),
                ("x-nhi-anything", "spoofed"),
                ("connection", "x-private-hop"),
                ("x-private-hop", "secret"),
                ("keep-alive", "timeout=5"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-custom", "kept"),
            ],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["from"], "upstream");
    assert_eq!(header(&r.headers, "x-upstream"), ["yes"]);
    assert_eq!(up.count(), 1);
    let seen = up.last();
    assert_eq!(seen.uri, "/orders?page=2");
    let h = &seen.headers;
    assert_eq!(header(h, "x-nhi-client-id"), ["inventory-sync"]);
    assert_eq!(header(h, "x-nhi-owner"), ["fulfilment-team@example.com"]);
    assert_eq!(
        header(h, "x-nhi-scopes"),
        ["inventory:read inventory:write orders:read orders:write"]
    );
    assert_eq!(header(h, "x-nhi-tier"), ["standard"]);
    assert_eq!(header(h, "x-nhi-credential-kind"), ["api_key"]);
    let id1 = header(h, "x-nhi-request-id")[0].to_owned();
    assert!(is_request_id(&id1), "{id1}");
    assert!(h.get("x-nhi-anything").is_none());
    assert!(h.get("x-api-key").is_none(), "the credential stays at the edge");
    assert!(h.get("x-private-hop").is_none() && h.get("keep-alive").is_none());
    assert_eq!(header(h, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(h, "x-custom"), ["kept"]);
    assert_eq!(header(h, "host"), [up.addr.to_string().as_str()]);

    // A bearer token narrower than the client's registration.
    let token = edge.token("reporting-bot", "orders:read");
    let r = edge
        .send(
            "GET",
            "/orders",
            &[("authorization", &token), ("x-nhi-client-id", "inventory-sync")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.count(), 2);
    let h = up.last().headers;
    assert_eq!(header(&h, "x-nhi-client-id"), ["reporting-bot"]);
    assert_eq!(header(&h, "x-nhi-scopes"), ["orders:read"]);
    assert_eq!(header(&h, "x-nhi-tier"), ["bulk"]);
    assert_eq!(header(&h, "x-nhi-credential-kind"), ["service_account"]);
    assert!(h.get("authorization").is_none());
    let id2 = header(&h, "x-nhi-request-id")[0].to_owned();
    assert!(is_request_id(&id2) && id2 != id1);

    // A public route without a credential: forwarded, with no identity at all.
    let r = edge
        .send(
            "GET",
            "/healthz",
            &[("x-nhi-client-id", "ops-console")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.count(), 3);
    let h = up.last().headers;
    assert!(h.get("x-nhi-client-id").is_none() && h.get("x-nhi-scopes").is_none());
    assert_eq!(header(&h, "x-nhi-request-id").len(), 1);

    // The demo issuer's keys are served by the proxy itself.
    let r = edge
        .send("GET", "/.well-known/jwks.json", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["keys"][0]["alg"], "ES256");
    assert_eq!(up.count(), 3);
    edge.finish().await;
}

#[tokio::test]
async fn denied_requests_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;

    let r = edge.send("GET", "/orders", &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&r.headers, "www-authenticate"),
        [r#"Bearer realm="nhi-guard-demo""#]
    );

    // reporting-bot may read orders, not create them; its body is not forwarded either.
    let r = edge
        .send(
            "POST",
            "/orders",
            &[("x-api-key", key("reporting-bot"))],
            Body::from(content(0, 256 * 1024)),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        header(&r.headers, "www-authenticate")[0].contains(r#"error="insufficient_scope""#),
        "{:?}",
        r.headers
    );
    assert_eq!(r.json()["status"], 403);

    // A path the policy does not name is refused, whoever asks.
    let r = edge
        .send(
            "GET",
            "/internal/debug",
            &[("x-api-key", key("inventory-sync"))],
            Body::empty(),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.status);

    assert_eq!(up.count(), 0, "no denied request may contact the upstream");
    // The same client is forwarded once it asks for what it holds.
    let r = edge
        .send(
            "GET",
            "/orders",
            &[("x-api-key", key("reporting-bot"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
    edge.finish().await;
}

#[tokio::test]
async fn metrics_are_served_by_the_proxy_itself_to_the_admin_scope_only() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;
    let bot = [("x-api-key", key("reporting-bot"))];
    let r = edge.send("GET", "/orders", &bot, Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK);

    let r = edge.send("GET", "/metrics", &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = edge.send("GET", "/metrics", &bot, Body::empty()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["missing_scopes"], serde_json::json!(["admin"]));

    let r = edge
        .send(
            "GET",
            "/metrics",
            &[("x-api-key", key("ops-console"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(header(&r.headers, "content-type"), ["text/plain; version=0.0.4"]);
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains(r#"nhi_guard_requests_total{control="scope",decision="allow"}"#),
        "{text}"
    );
    assert!(!text.contains(key("ops-console")), "no credential in the metrics");
    assert_eq!(
        up.count(),
        1,
        "only /orders went upstream; /metrics is answered here"
    );
    edge.finish().await;
}

#[tokio::test]
async fn five_megabytes_stream_up_and_down_whole() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;
    let auth = [("x-api-key", key("inventory-sync"))];

    // Up: a chunked body of unknown length, 64 KiB at a time.
    let chunks = futures_util::stream::iter((0..FIVE_MB).step_by(CHUNK))
        .map(|at| Ok::<_, Infallible>(content(at, CHUNK.min(FIVE_MB - at))));
    let r = edge
        .send("POST", "/orders", &auth, Body::from_stream(chunks))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.body_len, FIVE_MB);
    assert_eq!(seen.checksum, Checksum::of_content(FIVE_MB));

    // Up again with a Content-Length, which is kept.
    let r = edge
        .send("POST", "/orders", &auth, Body::from(content(0, FIVE_MB)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(
        header(&seen.headers, "content-length"),
        [FIVE_MB.to_string().as_str()]
    );
    assert_eq!(
        (seen.body_len, seen.checksum),
        (FIVE_MB, Checksum::of_content(FIVE_MB))
    );

    // Down: the upstream streams 5 MB (and a hop-by-hop header that must not pass).
    let r = edge
        .send("GET", &format!("/orders?size={FIVE_MB}"), &auth, Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), FIVE_MB);
    let mut sum = Checksum::new();
    sum.update(&r.body);
    assert_eq!(sum.0, Checksum::of_content(FIVE_MB));
    assert!(r.headers.get("x-hop").is_none());
    assert_eq!(up.count(), 3);
    edge.finish().await;
}

/// Each direction is proved to stream: the far side sees the first chunk while the
/// near side still holds the rest back.
#[tokio::test]
async fn bodies_are_forwarded_as_they_arrive() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;
    let auth = [("x-api-key", key("inventory-sync"))];
    let guard_hang = Duration::from_secs(30);

    // Request: the upstream reports the first chunk before the client sends the rest.
    let (first_tx, mut first_rx) = mpsc::unbounded_channel();
    *up.first_chunk.lock().expect("lock") = Some(first_tx);
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let req = edge
        .request("POST", "/orders?notify", &auth)
        .body(Body::from_stream(stream))
        .expect("request");
    let pending = tokio::spawn(edge.client.request(req));
    body_tx.send(content(0, CHUNK)).await.expect("send");
    let first = tokio::time::timeout(guard_hang, first_rx.recv())
        .await
        .expect("the first chunk reached the upstream before the body ended")
        .expect("reported");
    assert!(first > 0 && first <= CHUNK);
    for at in (CHUNK..FIVE_MB).step_by(CHUNK) {
        body_tx
            .send(content(at, CHUNK.min(FIVE_MB - at)))
            .await
            .expect("send");
    }
    drop(body_tx);
    let res = pending.await.expect("task").expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.last().body_len, FIVE_MB);
    assert_eq!(up.last().checksum, Checksum::of_content(FIVE_MB));

    // Response: the client reads the first chunk while the upstream waits to send more.
    let req = edge
        .request("GET", &format!("/orders?gate&size={FIVE_MB}"), &auth)
        .body(Body::empty())
        .expect("request");
    let res = edge.client.request(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut received = Vec::new();
    while received.is_empty() {
        let frame = tokio::time::timeout(guard_hang, body.frame())
            .await
            .expect("the first chunk arrived before the upstream finished")
            .expect("a frame")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert!(received.len() <= CHUNK, "only the first chunk can have been sent");
    up.release.notify_one();
    // The rest: one release per further chunk.
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("no error").into_data() {
            received.extend_from_slice(&data);
            up.release.notify_one();
        }
    }
    assert_eq!(received.len(), FIVE_MB);
    assert_eq!(received, content(0, FIVE_MB));
    edge.finish().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_problem() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let edge = edge(&format!("http://{dead}")).await;
    for _ in 0..2 {
        let r = edge
            .send(
                "GET",
                "/orders",
                &[("x-api-key", key("inventory-sync"))],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(header(&r.headers, "content-type"), ["application/problem+json"]);
        let body = r.json();
        assert_eq!(
            (body["status"].as_u64(), body["title"].as_str()),
            (Some(502), Some("Bad Gateway"))
        );
        assert!(is_request_id(body["request_id"].as_str().expect("request id")));
        assert!(!String::from_utf8_lossy(&r.body).contains(key("inventory-sync")));
    }
    // Denials are still answered by the guard.
    let r = edge.send("GET", "/orders", &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    edge.finish().await;
}

#[tokio::test]
async fn a_path_prefix_is_kept_in_front_of_the_request_path() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}/api/v1/", up.addr)).await;
    let r = edge
        .send(
            "GET",
            "/inventory/sku-9?fields=a",
            &[("x-api-key", key("partner-feed"))],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().uri, "/api/v1/inventory/sku-9?fields=a");
    assert_eq!(header(&up.last().headers, "x-nhi-client-id"), ["partner-feed"]);
    edge.finish().await;
}

#[test]
fn the_upstream_variable_has_a_default_and_bad_values_name_it() {
    let default = proxy::Upstream::from_lookup(|_| None).expect("default");
    assert_eq!(default.to_string(), "http://127.0.0.1:9000");
    let ok = proxy::Upstream::parse(" http://10.1.2.3:8081/base/ ").expect("prefix");
    assert_eq!(ok.to_string(), "http://10.1.2.3:8081/base");
    for bad in [
        "",
        "127.0.0.1:9000",
        "not a url",
        "ftp://127.0.0.1/",
        "https://127.0.0.1:9443",
        "http://user:pw@127.0.0.1:9000",
        "http://127.0.0.1:9000/?a=b",
    ] {
        let err = proxy::Upstream::from_lookup(|_| Some(bad.to_owned())).expect_err(bad);
        assert!(err.starts_with("NHI_GUARD_UPSTREAM="), "{err}");
        assert!(!err.contains("pw@"), "credentials in an error: {err}");
    }
}

#[test]
fn header_values_are_visible_ascii() {
    assert_eq!(proxy::encode("team@example.com"), "team@example.com");
    assert_eq!(proxy::encode("équipe 100%"), "%C3%A9quipe 100%25");
    assert_eq!(
        proxy::encode("a\r\nx-nhi-client-id: b"),
        "a%0D%0Ax-nhi-client-id: b"
    );
}

/// An HTTP/1.0 upstream that ends its body by closing the connection: the client
/// still gets an HTTP/1.1 response (the version belongs to each hop) and the body.
#[tokio::test]
async fn an_http_1_0_upstream_is_answered_as_http_1_1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = vec![0; 16 * 1024];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn
                .write_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nold but fine")
                .await;
        }
    });
    let edge = edge(&format!("http://{addr}")).await;
    let req = edge
        .request("GET", "/orders", &[("x-api-key", key("inventory-sync"))])
        .body(Body::empty())
        .expect("request");
    let res = edge.client.request(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_11);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"old but fine");
    edge.finish().await;
}

fn problem(r: &Reply) -> serde_json::Value {
    assert_eq!(header(&r.headers, "content-type"), ["application/problem+json"]);
    r.json()
}

/// A path the upstream could route somewhere the policy never looked is refused
/// by the guard's scope control: 400, audited, never forwarded.
#[tokio::test]
async fn ambiguous_paths_are_refused_audited_and_never_forwarded() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;
    // inventory-sync may read /inventory/{sku}; it holds no admin scope.
    let auth = [("x-api-key", key("inventory-sync"))];
    let mut refused = Vec::new();
    for path in [
        "/inventory/..%2Fadmin%2Fclients",
        "/inventory/%2e%2E/admin/clients",
        "/inventory/sku/../../admin/clients",
        "/inventory/..;/admin/clients",
        "/inventory/./sku-1",
        "/inventory//sku-1",
        "/inventory/sku%5C..%5Cadmin",
        "/inventory/..\\admin",
        "/inventory/%61dmin",
    ] {
        let r = edge.send("GET", path, &auth, Body::empty()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        let body = problem(&r);
        assert_eq!(
            (&body["control"], &body["reason"], &body["type"]),
            (
                &serde_json::json!("scope"),
                &serde_json::json!("request_target_ambiguous"),
                &serde_json::json!("urn:nhi-guard:problem:request-target-ambiguous")
            ),
            "{path}"
        );
        assert!(r.headers.get("www-authenticate").is_none());
        refused.push(body["request_id"].as_str().expect("request id").to_owned());
    }
    assert_eq!(up.count(), 0, "no ambiguous path may reach the upstream");

    // The normalised path is judged and forwarded as always.
    let r = edge.send("GET", "/inventory/sku-1", &auth, Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().uri, "/inventory/sku-1");

    let records = edge.records().await;
    for id in &refused {
        let record = record_of(&records, id);
        let nhi = &record["unmapped"]["nhi_guard"];
        assert_eq!(
            (&nhi["decision"], &nhi["control"], &nhi["reason"]),
            (
                &serde_json::json!("denied"),
                &serde_json::json!("scope"),
                &serde_json::json!("request_target_ambiguous")
            ),
            "{record}"
        );
        assert_eq!(record["api"]["response"]["code"], 400);
    }
}

#[tokio::test]
async fn method_overrides_are_refused_and_audited() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;
    let mut refused = Vec::new();
    for (name, shown) in [
        ("x-http-method-override", "X-HTTP-Method-Override"),
        ("X-HTTP-Method", "X-HTTP-Method"),
        ("x-method-override", "X-Method-Override"),
    ] {
        // Allowed as a POST; the override would make it a DELETE upstream.
        let r = edge
            .send(
                "POST",
                "/orders",
                &[("x-api-key", key("inventory-sync")), (name, "DELETE")],
                Body::from("{}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}");
        let body = problem(&r);
        assert_eq!(body["control"], "edge_proxy");
        assert_eq!(body["reason"], "method_override_refused");
        assert_eq!(body["type"], "urn:nhi-guard:problem:method-override-refused");
        assert_eq!(
            body["detail"],
            format!("{shown} is not forwarded: send the request with the method itself")
        );
        refused.push(body["request_id"].as_str().expect("request id").to_owned());
    }
    assert_eq!(up.count(), 0);
    let r = edge
        .send(
            "POST",
            "/orders",
            &[("x-api-key", key("inventory-sync"))],
            Body::from("{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let records = edge.records().await;
    for id in &refused {
        let nhi = &record_of(&records, id)["unmapped"]["nhi_guard"];
        assert_eq!(
            (&nhi["decision"], &nhi["control"], &nhi["reason"]),
            (
                &serde_json::json!("denied"),
                &serde_json::json!("edge_proxy"),
                &serde_json::json!("method_override_refused")
            )
        );
    }
}

/// Headers the proxy sets, headers upstreams read as if a proxy had set them, and
/// any name with `_` (which CGI-style servers read as the `-` name) never reach the
/// upstream as the client sent them.
#[tokio::test]
async fn headers_a_client_could_smuggle_are_stripped() {
    let up = Upstream::start().await;
    let edge = edge(&format!("http://{}", up.addr)).await;
    let r = edge
        .send(
            "GET",
            "/orders",
            &[
                ("x-api-key", key("reporting-bot")),
                // CGI reads these as X-API-Key / X-NHI-Client-ID / X-NHI-Scopes.
                ("X_API_KEY", key("ops-console")),
                ("X_NHI_CLIENT_ID", "ops-console"),
                ("x_nhi_scopes", "admin"),
                ("x-custom_name", "dropped"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-host", "admin.internal"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-port", "443"),
                ("x-forwarded-prefix", "/admin"),
                ("forwarded", "for=203.0.113.9;host=admin.internal;proto=https"),
                ("x-real-ip", "203.0.113.9"),
                ("x-client-ip", "203.0.113.9"),
                ("true-client-ip", "203.0.113.9"),
                ("x-original-url", "/admin/clients"),
                ("x-original-uri", "/admin/clients"),
                ("x-rewrite-url", "/admin/clients"),
                ("x-custom", "kept"),
            ],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = up.last().headers;
    for name in [
        "x_api_key",
        "x_nhi_client_id",
        "x_nhi_scopes",
        "x-custom_name",
        "x-api-key",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-original-url",
        "x-original-uri",
        "x-rewrite-url",
    ] {
        assert!(h.get(name).is_none(), "{name} reached the upstream: {h:?}");
    }
    let names: Vec<&str> = h.keys().map(http::HeaderName::as_str).collect();
    assert!(!names.iter().any(|n| n.contains('_')), "{names:?}");
    // What the proxy sets, once, with its own values.
    assert_eq!(header(&h, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&h, "x-nhi-client-id"), ["reporting-bot"]);
    assert_eq!(header(&h, "x-nhi-scopes"), ["orders:read"]);
    assert_eq!(header(&h, "x-custom"), ["kept"]);
    edge.finish().await;
}

/// An upstream that accepts connections and never answers.
async fn silent_upstream() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504_problem() {
    let addr = silent_upstream().await;
    // A short response timeout so the test does not wait the default 30 s.
    let edge = edge_with(
        &format!("http://{addr}"),
        &[("NHI_GUARD_UPSTREAM_TIMEOUT", "0.3")],
    )
    .await;
    // A guard against a hang, not a timed assertion.
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        edge.send(
            "GET",
            "/orders",
            &[("x-api-key", key("inventory-sync"))],
            Body::empty(),
        ),
    )
    .await
    .expect("the proxy answered instead of waiting on the upstream");
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let body = problem(&r);
    assert_eq!(
        (
            body["status"].as_u64(),
            body["title"].as_str(),
            body["detail"].as_str()
        ),
        (
            Some(504),
            Some("Gateway Timeout"),
            Some("the upstream did not answer in time")
        )
    );
    assert!(is_request_id(body["request_id"].as_str().expect("request id")));
    edge.finish().await;
}

/// A listener whose accept queue is full: the kernel drops further connection
/// attempts, so a connect to it neither succeeds nor fails.
async fn unaccepting_upstream() -> (SocketAddr, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the queue (a backlog of 0 holds one connection).
    let mut fillers = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(conn)) => fillers.push(conn),
            _ => break,
        }
    }
    std::mem::forget(listener);
    (addr, fillers)
}

#[tokio::test]
async fn an_upstream_that_does_not_accept_in_time_is_a_504_problem() {
    let (addr, _fillers) = unaccepting_upstream().await;
    let edge = edge_with(
        &format!("http://{addr}"),
        &[("NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT", "0.3")],
    )
    .await;
    // A guard against a hang, not a timed assertion.
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        edge.send(
            "GET",
            "/orders",
            &[("x-api-key", key("inventory-sync"))],
            Body::empty(),
        ),
    )
    .await
    .expect("the proxy answered instead of waiting on the upstream");
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let body = problem(&r);
    assert_eq!(body["detail"], "the upstream did not accept a connection in time");
    edge.finish().await;
}

const CAP: usize = 1024 * 1024;

/// A declared length above the cap is refused before any connection; at the cap
/// it passes.
#[tokio::test]
async fn a_content_length_above_the_cap_is_a_413_before_connecting() {
    let up = Upstream::start().await;
    let cap = CAP.to_string();
    let edge = edge_with(
        &format!("http://{}", up.addr),
        &[("NHI_GUARD_MAX_BODY_BYTES", cap.as_str())],
    )
    .await;
    let auth = ("x-api-key", key("inventory-sync"));

    // As curl sends a large body: the headers, then the body only after
    // `100 Continue`, which never comes.
    let r = raw_request(
        &edge.base,
        &format!(
            "POST /orders HTTP/1.1\r\nhost: edge\r\n{}: {}\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
            auth.0,
            auth.1,
            CAP + 1
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    assert!(r.contains("content-type: application/problem+json"), "{r}");
    let body: serde_json::Value =
        serde_json::from_str(r.split("\r\n\r\n").nth(1).expect("body")).expect("json body");
    assert_eq!(body["control"], "edge_proxy");
    assert_eq!(body["reason"], "request_body_too_large");
    assert_eq!(
        body["detail"],
        format!("The request body is larger than {CAP} bytes")
    );
    let refused = body["request_id"].as_str().expect("request id").to_owned();
    assert_eq!(up.count(), 0, "refused before connecting");

    // A client that sends the body at once gets the same answer.
    let r = edge
        .send("POST", "/orders", &[auth], Body::from(content(0, 4 * CAP)))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem(&r)["reason"], "request_body_too_large");
    assert_eq!(up.count(), 0, "refused before connecting");

    // Exactly the cap is forwarded whole.
    let r = edge
        .send("POST", "/orders", &[auth], Body::from(content(0, CAP)))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().body_len, CAP);

    let records = edge.records().await;
    let record = record_of(&records, &refused);
    let nhi = &record["unmapped"]["nhi_guard"];
    assert_eq!(
        (&nhi["control"], &nhi["reason"]),
        (
            &serde_json::json!("edge_proxy"),
            &serde_json::json!("request_body_too_large")
        )
    );
    assert_eq!(record["api"]["response"]["code"], 413);
}

/// Sends `head` on a fresh connection and reads the response until the server
/// closes or the body's declared length has arrived.
async fn raw_request(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| body.len() >= n) {
                return text.into_owned();
            }
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return text.into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A chunked body that grows past the cap: the upstream request is aborted and
/// the client gets 413.
#[tokio::test]
async fn a_chunked_body_past_the_cap_aborts_the_upstream_request_with_413() {
    let up = Upstream::start().await;
    let cap = CAP.to_string();
    let edge = edge_with(
        &format!("http://{}", up.addr),
        &[("NHI_GUARD_MAX_BODY_BYTES", cap.as_str())],
    )
    .await;
    let auth = [("x-api-key", key("inventory-sync"))];

    // The cap in 64 KiB chunks, one byte more, then nothing (the client waits for
    // the answer instead of racing it with more data).
    let chunks = futures_util::stream::iter((0..CAP).step_by(CHUNK))
        .map(|at| Ok::<_, Infallible>(content(at, CHUNK.min(CAP - at))))
        .chain(futures_util::stream::once(async { Ok(Bytes::from_static(b"!")) }))
        .chain(futures_util::stream::pending());
    let r = edge
        .send("POST", "/orders", &auth, Body::from_stream(chunks))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = problem(&r);
    assert_eq!(body["reason"], "request_body_too_large");
    assert_eq!(body["control"], "edge_proxy");
    let refused = body["request_id"].as_str().expect("request id").to_owned();
    // The upstream saw the request start and its body break off, never its end.
    tokio::time::timeout(Duration::from_secs(30), up.aborted.notified())
        .await
        .expect("the upstream request was aborted");
    assert!(up.seen.lock().expect("lock").is_empty());

    // Within the cap, a chunked body streams through whole.
    let chunks = futures_util::stream::iter((0..CAP).step_by(CHUNK))
        .map(|at| Ok::<_, Infallible>(content(at, CHUNK.min(CAP - at))));
    let r = edge
        .send("POST", "/orders", &auth, Body::from_stream(chunks))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (up.last().body_len, up.last().checksum),
        (CAP, Checksum::of_content(CAP))
    );

    let records = edge.records().await;
    let nhi = &record_of(&records, &refused)["unmapped"]["nhi_guard"];
    assert_eq!(nhi["reason"], "request_body_too_large");
}

#[test]
fn the_limit_variables_have_defaults_and_bad_values_name_them() {
    let d = proxy::Limits::from_lookup(|_| None).expect("defaults");
    assert_eq!(d.connect_timeout, Duration::from_secs(5));
    assert_eq!(d.response_timeout, Duration::from_secs(30));
    assert_eq!(d.max_body_bytes, 10 * 1024 * 1024);

    let set = proxy::Limits::from_lookup(|k| match k {
        "NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT" => Some("0.5".into()),
        "NHI_GUARD_UPSTREAM_TIMEOUT" => Some(" 120 ".into()),
        "NHI_GUARD_MAX_BODY_BYTES" => Some("1048576".into()),
        _ => None,
    })
    .expect("valid values");
    assert_eq!(set.connect_timeout, Duration::from_millis(500));
    assert_eq!(set.response_timeout, Duration::from_secs(120));
    assert_eq!(set.max_body_bytes, 1024 * 1024);

    for var in ["NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT", "NHI_GUARD_UPSTREAM_TIMEOUT"] {
        for bad in ["", "0", "-1", "five", "NaN", "inf", "1e30", "5s"] {
            let err = proxy::Limits::from_lookup(|k| (k == var).then(|| bad.to_owned())).expect_err(bad);
            assert!(err.starts_with(&format!("{var}=")), "{err}");
        }
    }
    for bad in ["", "0", "-1", "10MiB", "1.5", "99999999999999999999999"] {
        let err = proxy::Limits::from_lookup(|k| (k == "NHI_GUARD_MAX_BODY_BYTES").then(|| bad.to_owned()))
            .expect_err(bad);
        assert!(err.starts_with("NHI_GUARD_MAX_BODY_BYTES="), "{err}");
    }
}
