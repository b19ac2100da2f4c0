//! The identity layer's metrics: decisions and denial reasons, and the JWKS
//! manager's fetch outcomes and key count, read from a `DebuggingRecorder`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Uri};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use nhi_guard_core::metrics::{
    DENIALS_TOTAL, ISSUER_METADATA_FETCHES_TOTAL, JWKS_FETCHES_TOTAL, JWKS_KEYS, REQUESTS_TOTAL,
};
use nhi_guard_identity::jwks::{FetchError, FetchFuture, FetchResponse, JwksFetcher};
use nhi_guard_identity::{IdentityLayer, JwksConfig, RemoteKeys};
use nhi_guard_testkit::metrics::Snapshot;
use tower::{Layer, ServiceExt, service_fn};

#[tokio::test]
async fn decisions_and_denial_reasons_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // A current-thread runtime: the layer resolves its counters in this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let svc = IdentityLayer::builder(registry())
        .build()
        .unwrap()
        .layer(service_fn(echo));
    let send = |key: Option<&str>| {
        let mut req = Request::get("/orders");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let svc = svc.clone();
        let req = req.body(String::new()).unwrap();
        async move { svc.oneshot(req).await.unwrap().status() }
    };
    assert_eq!(send(Some("nhik_test_5e3b1f0a9c")).await, StatusCode::OK);
    assert_eq!(send(Some("nhik_test_5e3b1f0a9c")).await, StatusCode::OK);
    assert_eq!(send(None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(Some("nhik_test_0000000000")).await, StatusCode::UNAUTHORIZED);

    let seen = Snapshot::take(&snap);
    let requests =
        |decision| seen.counter(REQUESTS_TOTAL, &[("control", "identity"), ("decision", decision)]);
    assert_eq!(
        (requests("allow"), requests("deny"), requests("shadow_deny")),
        (2, 2, 0)
    );
    let denials = |reason| seen.counter(DENIALS_TOTAL, &[("control", "identity"), ("reason", reason)]);
    assert_eq!(
        (denials("credential_missing"), denials("api_key_unknown")),
        (1, 1)
    );
    let labels = seen.label_values();
    assert!(
        !labels
            .iter()
            .any(|v| v.contains("nhik_") || v.contains("svc-key")),
        "a credential or client id in a label: {labels:?}"
    );
}

/// Answers each fetch with the next scripted response.
#[derive(Debug, Default)]
struct Scripted(Mutex<VecDeque<Result<FetchResponse, FetchError>>>);

impl JwksFetcher for Scripted {
    fn fetch<'a>(&'a self, _url: &'a Uri, _etag: Option<&'a str>) -> FetchFuture<'a> {
        let next = self
            .0
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Err(FetchError("script exhausted".into())));
        Box::pin(async move { next })
    }
}

#[tokio::test]
async fn discovery_fetches_are_counted_by_host_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let issuer = "http://issuer.test:8443/tenant";
    let fetcher = Scripted::default();
    {
        let mut script = fetcher.0.lock().unwrap();
        // RFC 8414's location is not served; OpenID Connect's is.
        script.push_back(Err(FetchError("404 Not Found".into())));
        script.push_back(Ok(FetchResponse::Document {
            body: Bytes::from(
                serde_json::json!({
                    "issuer": issuer,
                    "jwks_uri": "http://keys.test:9443/jwks.json"
                })
                .to_string(),
            ),
            etag: None,
            max_age: None,
        }));
    }
    let keys = RemoteKeys::discover_with_fetcher(issuer, JwksConfig::default(), Arc::new(fetcher))
        .await
        .unwrap();
    assert_eq!(keys.url().to_string(), "http://keys.test:9443/jwks.json");

    let seen = Snapshot::take(&snap);
    let fetches = |outcome| {
        seen.counter(
            ISSUER_METADATA_FETCHES_TOTAL,
            &[("host", "issuer.test:8443"), ("outcome", outcome)],
        )
    };
    assert_eq!((fetches("ok"), fetches("error")), (1, 1));
    assert!(
        !seen.label_values().iter().any(|v| v.contains("tenant")),
        "a path in a label"
    );
}

#[tokio::test]
async fn jwks_fetches_are_counted_by_host_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (a, b) = (TestKey::rs256("a"), TestKey::es256("b"));
    let fetcher = Scripted::default();
    {
        let mut script = fetcher.0.lock().unwrap();
        script.push_back(Ok(FetchResponse::Document {
            body: Bytes::from(jwks(&[&a, &b]).to_string()),
            etag: Some("\"v1\"".into()),
            max_age: None,
        }));
        script.push_back(Ok(FetchResponse::NotModified { max_age: None }));
        script.push_back(Err(FetchError("connection refused".into())));
        script.push_back(Ok(FetchResponse::Document {
            body: Bytes::from_static(b"not json"),
            etag: None,
            max_age: None,
        }));
    }
    let keys = RemoteKeys::with_fetcher(
        "http://issuer.test:8443/tenant/jwks.json?token=s3cr3t",
        JwksConfig::default(),
        Arc::new(fetcher),
    )
    .unwrap();
    keys.refresh().await.unwrap();
    keys.refresh().await.unwrap();
    keys.refresh().await.unwrap_err();
    keys.refresh().await.unwrap_err();

    let seen = Snapshot::take(&snap);
    let host = ("host", "issuer.test:8443");
    let fetches = |outcome| seen.counter(JWKS_FETCHES_TOTAL, &[host, ("outcome", outcome)]);
    assert_eq!(
        (fetches("ok"), fetches("not_modified"), fetches("error")),
        (1, 1, 2)
    );
    match seen.get(MetricKind::Gauge, JWKS_KEYS, &[host]) {
        Some(DebugValue::Gauge(n)) => assert_eq!(n.into_inner(), 2.0),
        other => panic!("no key gauge: {other:?}"),
    }
    let labels = seen.label_values();
    assert!(
        !labels
            .iter()
            .any(|v| v.contains("s3cr3t") || v.contains("tenant")),
        "the JWKS path or query in a label: {labels:?}"
    );
}

#[tokio::test]
async fn the_last_successful_jwks_fetch_is_a_timestamp_gauge() {
    use nhi_guard_core::clock::ManualClock;
    use nhi_guard_core::metrics::JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS;
    use std::time::{Duration, SystemTime};

    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = Arc::new(ManualClock::at(t0));
    let a = TestKey::rs256("a");
    let fetcher = Scripted::default();
    {
        let mut script = fetcher.0.lock().unwrap();
        script.push_back(Ok(FetchResponse::Document {
            body: Bytes::from(jwks(&[&a]).to_string()),
            etag: Some("\"v1\"".into()),
            max_age: None,
        }));
        script.push_back(Ok(FetchResponse::NotModified { max_age: None }));
        script.push_back(Err(FetchError("connection refused".into())));
    }
    let keys = RemoteKeys::with_fetcher(
        "http://issuer.test:8443/jwks.json",
        JwksConfig {
            clock: clock.clone(),
            ..JwksConfig::default()
        },
        Arc::new(fetcher),
    )
    .unwrap();
    let host = [("host", "issuer.test:8443")];
    let last =
        || match Snapshot::take(&snap).get(MetricKind::Gauge, JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS, &host) {
            Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
            _ => None,
        };
    assert_eq!(last(), None, "no fetch yet");
    keys.refresh().await.unwrap();
    assert_eq!(last(), Some(1_800_000_000.0), "a fetched set");
    clock.advance(Duration::from_secs(300));
    keys.refresh().await.unwrap();
    assert_eq!(
        last(),
        Some(1_800_000_300.0),
        "a not-modified answer confirms the set"
    );
    clock.advance(Duration::from_secs(300));
    keys.refresh().await.unwrap_err();
    // A debugging snapshot swaps each value out (0 after it is read): a failed
    // fetch set nothing since, so the exporter keeps showing the last success.
    assert_eq!(last(), Some(0.0), "a failed fetch leaves it");
}
