//! The rate-limit layer's metrics, read from a `DebuggingRecorder`: allowed and
//! refused requests, refusals by reason, shadow refusals apart, and a failing
//! shared store's 503 counted as a denial.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use metrics_util::debugging::DebuggingRecorder;
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::metrics::{DENIALS_TOTAL, REQUESTS_TOTAL, SHADOW_DENIALS_TOTAL};
use nhi_guard_ratelimit::store::{
    CheckMode, Quota, RateLimitCheck, RateLimitStore, StoreError, StoreErrorKind, StoreFuture,
};
use nhi_guard_ratelimit::{Limit, RateLimitLayer};
use nhi_guard_testkit::metrics::Snapshot;
use tower::{Layer, ServiceExt, service_fn};

#[derive(Debug)]
struct Down;

impl RateLimitStore for Down {
    fn check(&self, _checks: Arc<[RateLimitCheck]>, _mode: CheckMode) -> StoreFuture {
        Box::pin(async { Err(StoreError::new(StoreErrorKind::Unavailable, "down")) })
    }
}

async fn status(layer: &RateLimitLayer, peer: &str) -> StatusCode {
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let mut req = Request::get("/orders").body(()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().expect("peer")));
    svc.oneshot(req).await.expect("infallible").status()
}

#[tokio::test]
async fn allowed_refused_and_shadow_requests_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // A current-thread runtime: the layers resolve their counters in this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let clock = Arc::new(ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let quota = Quota::per_second(1).and_then(|q| q.with_burst(2)).expect("quota");
    let layer = |shadow| {
        RateLimitLayer::new()
            .clock(clock.clone())
            .shadow(shadow)
            .limit(Limit::per_address("per-address", quota))
            .expect("limit")
    };
    let (enforce, shadow) = (layer(false), layer(true));
    let failing = layer(false).shared_store(Arc::new(Down));

    // A burst of two, then refusals (the clock stands still).
    let mut seen_statuses = Vec::new();
    for _ in 0..4 {
        seen_statuses.push(status(&enforce, "192.0.2.1:1000").await);
    }
    assert_eq!(
        seen_statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    for _ in 0..3 {
        assert_eq!(status(&shadow, "192.0.2.2:1000").await, StatusCode::OK);
    }
    assert_eq!(
        status(&failing, "192.0.2.3:1000").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let seen = Snapshot::take(&snap);
    let requests = |decision| {
        seen.counter(
            REQUESTS_TOTAL,
            &[("control", "rate_limit"), ("decision", decision)],
        )
    };
    assert_eq!(
        (requests("allow"), requests("deny"), requests("shadow_deny")),
        (4, 3, 1)
    );
    let denials = |name, reason| seen.counter(name, &[("control", "rate_limit"), ("reason", reason)]);
    assert_eq!(denials(DENIALS_TOTAL, "rate_limited"), 2);
    assert_eq!(denials(DENIALS_TOTAL, "rate_limit_unavailable"), 1);
    assert_eq!(denials(SHADOW_DENIALS_TOTAL, "rate_limited"), 1);
    assert!(
        !seen.label_values().iter().any(|v| v.starts_with("192.0.2.")),
        "an address in a label"
    );
}
