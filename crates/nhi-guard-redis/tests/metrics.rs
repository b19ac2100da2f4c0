//! The Redis stores' metrics when Redis is unreachable. Rate limit: a loopback port
//! nobody listens on (no server needed); each failed check counts a store error,
//! each request decided without Redis counts a fallback by policy. Risk: a real
//! server that goes away after the store connected; each failed operation counts a
//! store error.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use nhi_guard_core::metrics::{STORE_ERRORS_TOTAL, STORE_FALLBACKS_TOTAL};
use nhi_guard_ratelimit::store::{CheckMode, FailurePolicy, Quota, RateLimitCheck, RateLimitStore};
use nhi_guard_redis::RedisStore;
use nhi_guard_redis::risk::RedisRiskStore;
use nhi_guard_redis::testing::RedisServer;
use nhi_guard_risk::store::{RiskKey, RiskStore};
use nhi_guard_testkit::metrics::Snapshot;

fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("redis://127.0.0.1:{port}")
}

fn checks() -> Arc<[RateLimitCheck]> {
    Arc::from(vec![RateLimitCheck {
        policy: Arc::from("per-client"),
        key: b"client-a"[..].into(),
        qualifier: b""[..].into(),
        quota: Quota::per_second(10).expect("quota"),
        cost: 1,
    }])
}

#[tokio::test]
async fn unreachable_redis_counts_errors_and_fallbacks_by_policy() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // A current-thread runtime: the store's futures record in this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let store = |policy| {
        RedisStore::builder(closed_port_url())
            .failure_policy(policy)
            .timeout(Duration::from_millis(200))
            .retry_after_failure(Duration::from_secs(3600))
            .build_lazy()
            .expect("store")
    };
    let open = store(FailurePolicy::FailOpen);
    let closed = store(FailurePolicy::FailClosed);

    // The first check tries Redis and fails; the second, within the pause after a
    // failure, does not try again: a fallback without a new error.
    for _ in 0..2 {
        let decisions = open
            .check(checks(), CheckMode::Consume)
            .await
            .expect("fails open");
        assert!(decisions.iter().all(|d| d.allowed));
    }
    closed
        .check(checks(), CheckMode::Consume)
        .await
        .expect_err("fails closed");

    let seen = Snapshot::take(&snap);
    assert_eq!(
        seen.counter(
            STORE_ERRORS_TOTAL,
            &[("store", "rate_limit"), ("backend", "redis")]
        ),
        2
    );
    let fallbacks = |policy| {
        seen.counter(
            STORE_FALLBACKS_TOTAL,
            &[("store", "rate_limit"), ("policy", policy)],
        )
    };
    assert_eq!((fallbacks("fail_open"), fallbacks("fail_closed")), (2, 1));
    assert!(
        !seen
            .label_values()
            .iter()
            .any(|v| v.contains("client-a") || v.contains("127.0.0.1")),
        "a key or an address in a label"
    );
}

#[tokio::test]
async fn risk_store_counts_each_failed_operation() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let store = RedisRiskStore::connect(&server.url(), "metrics-test", Duration::from_millis(300))
        .await
        .expect("connects");
    let now = std::time::SystemTime::now();
    let window = Duration::from_secs(60);
    assert_eq!(
        store
            .increment(Arc::from("c"), window, now)
            .await
            .expect("counts"),
        1
    );
    let errors = |snap: &metrics_util::debugging::Snapshotter| {
        Snapshot::take(snap).counter(STORE_ERRORS_TOTAL, &[("store", "risk"), ("backend", "redis")])
    };
    assert_eq!(errors(&snap), 0, "a working store counts no error");

    server.kill();
    store
        .increment(Arc::from("c"), window, now)
        .await
        .expect_err("server gone");
    store
        .find(Arc::from(vec![RiskKey::Client("svc".into())]), now)
        .await
        .expect_err("server gone");
    assert_eq!(errors(&snap), 2);
}
