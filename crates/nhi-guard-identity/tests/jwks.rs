//! The JWKS manager against a real HTTP server on 127.0.0.1:0: rotation, the
//! unknown-kid cooldown under a flood, issuer down (stale keys, staleness limit),
//! ETag / 304, max-age, discovery, skipped keys, timeouts.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::*;
use http::StatusCode;
use nhi_guard_core::clock::ManualClock;
use nhi_guard_identity::jwks::{FetchFuture, FetchResponse, JwksFetcher};
use nhi_guard_identity::{Algorithm, IdentityLayer, Issuer, JwksConfig, RemoteKeys};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt, service_fn};

#[derive(Default)]
struct Served {
    /// path -> body
    docs: HashMap<String, String>,
    etag: Option<String>,
    max_age: Option<u64>,
    down: bool,
    hits: HashMap<String, usize>,
}

#[derive(Clone, Default)]
struct Issuer_ {
    state: Arc<Mutex<Served>>,
}

impl Issuer_ {
    fn set(&self, path: &str, body: Value) {
        self.state
            .lock()
            .unwrap()
            .docs
            .insert(path.into(), body.to_string());
    }
    fn hits(&self, path: &str) -> usize {
        self.state.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }
    fn with<R>(&self, f: impl FnOnce(&mut Served) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }
}

async fn serve_doc(State(s): State<Issuer_>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let mut st = s.state.lock().unwrap();
    *st.hits.entry(uri.path().to_owned()).or_default() += 1;
    if st.down {
        return AxStatus::SERVICE_UNAVAILABLE.into_response();
    }
    let Some(body) = st.docs.get(uri.path()).cloned() else {
        return AxStatus::NOT_FOUND.into_response();
    };
    let mut res = body.into_response();
    if let Some(tag) = &st.etag {
        if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(tag.as_str()) {
            res = AxStatus::NOT_MODIFIED.into_response();
        }
        res.headers_mut().insert("etag", tag.parse().unwrap());
    }
    if let Some(age) = st.max_age {
        res.headers_mut()
            .insert("cache-control", format!("public, max-age={age}").parse().unwrap());
    }
    res
}

/// Starts the issuer's HTTP server on 127.0.0.1:0; returns its base URL.
async fn start(issuer: &Issuer_) -> String {
    let app = Router::new().fallback(get(serve_doc)).with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn config(clock: &Arc<ManualClock>) -> JwksConfig {
    JwksConfig {
        clock: clock.clone(),
        unknown_kid_cooldown: Duration::from_secs(30),
        max_staleness: Duration::from_secs(3600),
        ..JwksConfig::default()
    }
}

fn layer(remote: Arc<RemoteKeys>) -> IdentityLayer {
    IdentityLayer::builder(registry())
        .issuer(
            Issuer::new(ISS)
                .audience(AUD)
                .algorithms([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA])
                .remote_keys(remote),
        )
        .build()
        .unwrap()
}

async fn status(layer: &IdentityLayer, token: &str) -> (StatusCode, String) {
    let res = layer
        .layer(service_fn(echo))
        .oneshot(bearer(token))
        .await
        .unwrap();
    let status = res.status();
    (status, body_string(res.into_body()).await)
}

#[tokio::test]
async fn rotation_new_kid_accepted_after_refetch_removed_key_rejected() {
    let server = Issuer_::default();
    let k1 = TestKey::es256("k1");
    let k2 = TestKey::rs256("k2");
    server.set("/jwks.json", jwks(&[&k1]));
    let base = start(&server).await;
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::new(&format!("{base}/jwks.json"), config(&clock)).unwrap();
    remote.refresh().await.unwrap();
    let l = layer(remote.clone());

    let t1 = k1.sign(&claims("svc-a", "orders:read"));
    assert_eq!(status(&l, &t1).await.0, StatusCode::OK);
    assert_eq!(status(&l, &t1).await.0, StatusCode::OK); // cached

    // The issuer rotates: k2 added, k1 removed.
    server.set("/jwks.json", jwks(&[&k2]));
    let t2 = k2.sign(&claims("svc-a", "orders:read"));
    let (s, body) = status(&l, &t2).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(server.hits("/jwks.json"), 2, "one refetch for the new kid");
    assert_eq!(remote.stats().unknown_kid_fetches, 1);

    // k1's token was cached, but its key left the set: refused.
    let (s, body) = status(&l, &t1).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("token_key_unknown"), "{body}");
    assert!(!body.contains("k1"), "the body must not name keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let server = Issuer_::default();
    let k1 = TestKey::es256("k1");
    server.set("/jwks.json", jwks(&[&k1]));
    let base = start(&server).await;
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::new(&format!("{base}/jwks.json"), config(&clock)).unwrap();
    remote.refresh().await.unwrap();
    let l = layer(remote.clone());
    let attacker = TestKey::es256("unused");

    let flood = |round: usize| {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let token = attacker.sign_with(
                json!({"kid": format!("random-{round}-{i}")}),
                &claims("svc-a", "x"),
            );
            let l = l.clone();
            set.spawn(async move { status(&l, &token).await.0 });
        }
        set
    };
    for s in flood(1).join_all().await {
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.hits("/jwks.json"), 2, "initial fetch + one refetch");
    for s in flood(2).join_all().await {
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.hits("/jwks.json"), 2, "still inside the cooldown");

    clock.advance(Duration::from_secs(31));
    for s in flood(3).join_all().await {
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.hits("/jwks.json"), 3, "one more after the cooldown");
    assert_eq!(remote.stats().unknown_kid_fetches, 2);

    // Legitimate tokens kept working throughout.
    assert_eq!(
        status(&l, &k1.sign(&claims("svc-a", "orders:read"))).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn issuer_down_stale_keys_work_until_the_staleness_limit() {
    let server = Issuer_::default();
    let k1 = TestKey::ed25519("k1");
    server.set("/jwks.json", jwks(&[&k1]));
    let base = start(&server).await;
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::new(&format!("{base}/jwks.json"), config(&clock)).unwrap();
    remote.refresh().await.unwrap();
    let l = layer(remote.clone());

    server.with(|s| s.down = true);
    let err = remote.refresh().await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(remote.stats().failures, 1);

    clock.advance(Duration::from_secs(1800));
    let token = k1.sign(&claims("svc-a", "orders:read"));
    assert_eq!(
        status(&l, &token).await.0,
        StatusCode::OK,
        "stale keys still used"
    );

    clock.advance(Duration::from_secs(1801));
    let fresh = k1.sign(&claims("svc-a", "orders:write"));
    let (s, body) = status(&l, &fresh).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("issuer_keys_unavailable"));

    server.with(|s| s.down = false);
    remote.refresh().await.unwrap();
    assert_eq!(status(&l, &fresh).await.0, StatusCode::OK);
}

#[tokio::test]
async fn etag_gets_304_and_max_age_sets_the_interval() {
    let server = Issuer_::default();
    let k1 = TestKey::es256("k1");
    server.set("/jwks.json", jwks(&[&k1]));
    server.with(|s| {
        s.etag = Some("\"v1\"".into());
        s.max_age = Some(120);
    });
    let base = start(&server).await;
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::new(&format!("{base}/jwks.json"), config(&clock)).unwrap();
    assert_eq!(remote.refresh().await.unwrap(), Duration::from_secs(120));
    assert_eq!(remote.refresh().await.unwrap(), Duration::from_secs(120));
    let stats = remote.stats();
    assert_eq!((stats.fetches, stats.not_modified), (2, 1));
    assert_eq!(remote.keys().len(), 1);
    assert_eq!(
        status(&layer(remote.clone()), &k1.sign(&claims("svc-a", "orders:read")))
            .await
            .0,
        StatusCode::OK
    );

    // max-age below the floor is clamped.
    server.with(|s| {
        s.max_age = Some(1);
        s.etag = None;
    });
    assert_eq!(remote.refresh().await.unwrap(), Duration::from_secs(30));
}

#[tokio::test]
async fn unsupported_and_weak_keys_are_skipped_the_rest_stays_usable() {
    let server = Issuer_::default();
    let k1 = TestKey::es256("k1");
    let mut doc = jwks(&[&k1]);
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.push(json!({"kty": "oct", "kid": "sym", "k": "c2VjcmV0c2VjcmV0"}));
    keys.push(json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}));
    keys.push(json!({"kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB"}));
    keys.push(json!({"kty": "dragon", "kid": "x"}));
    server.set("/jwks.json", doc);
    let base = start(&server).await;
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::new(&format!("{base}/jwks.json"), config(&clock)).unwrap();
    remote.refresh().await.unwrap();
    assert_eq!(remote.keys().len(), 1);
    assert_eq!(
        status(&layer(remote), &k1.sign(&claims("svc-a", "orders:read")))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn discovery_uses_oauth_metadata_then_openid_configuration() {
    let server = Issuer_::default();
    let k1 = TestKey::es256("k1");
    let base = start(&server).await;
    server.set("/keys", jwks(&[&k1]));
    server.set(
        "/.well-known/openid-configuration",
        json!({"issuer": base, "jwks_uri": format!("{base}/keys")}),
    );
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::discover(&base, config(&clock)).await.unwrap();
    assert_eq!(remote.url().to_string(), format!("{base}/keys"));
    assert_eq!(server.hits("/.well-known/oauth-authorization-server"), 1);

    server.set(
        "/.well-known/oauth-authorization-server",
        json!({"issuer": base, "jwks_uri": format!("{base}/oauth-keys")}),
    );
    let remote = RemoteKeys::discover(&base, config(&clock)).await.unwrap();
    assert_eq!(remote.url().to_string(), format!("{base}/oauth-keys"));

    // Metadata naming another issuer is refused (RFC 8414 §3.3).
    let err = RemoteKeys::discover(&format!("{base}/other"), config(&clock))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("discovery failed"), "{err}");
}

#[tokio::test]
async fn fetch_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let clock = Arc::new(ManualClock::now());
    let cfg = JwksConfig {
        timeout: Duration::from_millis(100),
        ..config(&clock)
    };
    let remote = RemoteKeys::new(&format!("http://{addr}/jwks.json"), cfg).unwrap();
    let err = remote.refresh().await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

/// An in-memory fetcher counting calls, to drive the background loop under
/// paused tokio time (no sockets involved).
#[derive(Debug)]
struct CountingFetcher {
    body: String,
    calls: Mutex<usize>,
}

impl JwksFetcher for CountingFetcher {
    fn fetch<'a>(&'a self, _url: &'a http::Uri, _etag: Option<&'a str>) -> FetchFuture<'a> {
        *self.calls.lock().unwrap() += 1;
        let body = bytes::Bytes::from(self.body.clone());
        Box::pin(async move {
            Ok(FetchResponse::Document {
                body,
                etag: None,
                max_age: Some(Duration::from_secs(600)),
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn background_refresh_after_a_first_fetch_waits_for_its_max_age() {
    let fetcher = Arc::new(CountingFetcher {
        body: jwks(&[&TestKey::es256("k1")]).to_string(),
        calls: Mutex::new(0),
    });
    let remote = RemoteKeys::with_fetcher(
        "http://issuer.invalid/jwks",
        JwksConfig::default(),
        fetcher.clone(),
    )
    .unwrap();
    // Start-up: one fetch to fail loudly, then the background refresh.
    assert_eq!(remote.refresh().await.unwrap(), Duration::from_secs(600));
    let _task = remote.spawn_refresh();
    tokio::time::sleep(Duration::from_secs(599)).await;
    assert_eq!(*fetcher.calls.lock().unwrap(), 1, "not fetched again at once");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert_eq!(*fetcher.calls.lock().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn background_refresh_follows_max_age_and_stops_when_dropped() {
    let fetcher = Arc::new(CountingFetcher {
        body: jwks(&[&TestKey::es256("k1")]).to_string(),
        calls: Mutex::new(0),
    });
    let remote = RemoteKeys::with_fetcher(
        "http://issuer.invalid/jwks",
        JwksConfig::default(),
        fetcher.clone(),
    )
    .unwrap();
    let task = remote.spawn_refresh();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*fetcher.calls.lock().unwrap(), 1);
    tokio::time::sleep(Duration::from_secs(600)).await;
    tokio::task::yield_now().await;
    assert_eq!(*fetcher.calls.lock().unwrap(), 2);
    tokio::time::sleep(Duration::from_secs(600)).await;
    tokio::task::yield_now().await;
    assert_eq!(*fetcher.calls.lock().unwrap(), 3);
    drop(remote);
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert!(task.is_finished());
    assert_eq!(*fetcher.calls.lock().unwrap(), 3);
}

#[tokio::test]
async fn the_last_success_gauge_follows_real_fetches() {
    use metrics_util::MetricKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use nhi_guard_core::metrics::JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS;
    use std::time::{SystemTime, UNIX_EPOCH};

    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // A current-thread runtime: the manager records from this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = Issuer_::default();
    server.set("/jwks.json", jwks(&[&TestKey::es256("k1")]));
    server.with(|s| s.etag = Some("\"v1\"".into()));
    let base = start(&server).await;
    let host = base.trim_start_matches("http://").to_owned();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let clock = Arc::new(ManualClock::at(t0));
    let remote = RemoteKeys::new(&format!("{base}/jwks.json"), config(&clock)).unwrap();
    // Each debugging snapshot swaps the value out: 0 means "not set since".
    let last = || match nhi_guard_testkit::metrics::Snapshot::take(&snap).get(
        MetricKind::Gauge,
        JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS,
        &[("host", host.as_str())],
    ) {
        Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
        _ => None,
    };
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();

    remote.refresh().await.unwrap();
    assert_eq!(last(), Some(secs(t0)), "200 with a key set");
    clock.advance(Duration::from_secs(300));
    server.with(|s| s.down = true);
    remote.refresh().await.unwrap_err();
    assert_eq!(last(), Some(0.0), "a 503 sets nothing");
    clock.advance(Duration::from_secs(300));
    server.with(|s| s.down = false);
    remote.refresh().await.unwrap();
    assert_eq!(last(), Some(secs(t0) + 600.0), "304 confirms the set");
    assert_eq!(remote.stats().not_modified, 1);
}
