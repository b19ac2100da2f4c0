//! The audit writer's metrics, read from a global `DebuggingRecorder` (the writer
//! records from its own thread): records dropped under the `drop` overflow policy
//! and after shutdown, and the queue depth reported when the queue is full.
//! One test in its own binary: the recorder is process-wide.
#![allow(clippy::unwrap_used)]

mod support;

use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use nhi_guard_audit::{AuditLayer, AuditWriter, Overflow};
use nhi_guard_core::metrics::{AUDIT_DROPPED_TOTAL, AUDIT_QUEUE_DEPTH};
use nhi_guard_testkit::metrics::Snapshot;
use tower::{ServiceBuilder, ServiceExt};

use support::*;

async fn one(layer: AuditLayer) {
    let req = request("GET", "/orders").body(String::new()).unwrap();
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(handler::<String>)
        .oneshot(req)
        .await
        .unwrap();
}

#[tokio::test]
async fn drops_and_a_full_queue_are_reported() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().unwrap();

    let gate = Gate::closed();
    let (w, h, _lines) = gated(
        AuditWriter::builder()
            .capacity(4)
            .unwrap()
            .overflow(Overflow::Drop),
        gate.clone(),
    );
    let layer = AuditLayer::new(w);
    // The first record stalls the writer in the sink; 4 fill the queue, 7 are dropped.
    one(layer.clone()).await;
    tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_entered()
    })
    .await
    .unwrap();
    for _ in 0..11 {
        one(layer.clone()).await;
    }
    let seen = Snapshot::take(&snap);
    assert_eq!(seen.counter(AUDIT_DROPPED_TOTAL, &[("reason", "queue_full")]), 7);
    match seen.get(MetricKind::Gauge, AUDIT_QUEUE_DEPTH, &[]) {
        Some(DebugValue::Gauge(depth)) => assert_eq!(depth.into_inner(), 4.0),
        other => panic!("no queue depth: {other:?}"),
    }

    gate.open();
    let stats = h.shutdown().await.unwrap();
    assert_eq!((stats.written, stats.dropped), (5, 7));
    // A record offered after shutdown is lost, and counted as such.
    one(layer.clone()).await;
    let seen = Snapshot::take(&snap);
    assert_eq!(seen.counter(AUDIT_DROPPED_TOTAL, &[("reason", "shutdown")]), 1);
    assert_eq!(seen.counter(AUDIT_DROPPED_TOTAL, &[("reason", "queue_full")]), 0);
}
