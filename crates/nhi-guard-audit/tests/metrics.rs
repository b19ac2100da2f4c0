//! The audit writer's metrics, read from a global `DebuggingRecorder` (the writer
//! records from its own thread): records dropped under the `drop` overflow policy
//! and after shutdown, and the queue depth reported when the queue is full.
//! One test in its own binary: the recorder is process-wide.
#![allow(clippy::unwrap_used)]

mod support;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use nhi_guard_audit::{AuditLayer, AuditWriter, Overflow};
use nhi_guard_core::metrics::{AUDIT_DROPPED_TOTAL, AUDIT_QUEUE_DEPTH};
use tower::{ServiceBuilder, ServiceExt};

use support::*;

/// One snapshot of a `DebuggingRecorder` (taking one resets its counters).
struct Seen(Vec<(CompositeKey, DebugValue)>);

// Not every test file reads every kind of value.
#[allow(dead_code)]
impl Seen {
    fn take(snap: &Snapshotter) -> Self {
        Self(
            snap.snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| (k, v))
                .collect(),
        )
    }

    fn get(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(k, _)| {
                k.kind() == kind
                    && k.key().name() == name
                    && k.key().labels().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(n, v)| k.key().labels().any(|l| l.key() == *n && l.value() == *v))
            })
            .map(|(_, v)| v)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    /// Every label value recorded, for leak checks.
    fn label_values(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|(k, _)| k.key().labels().map(|l| l.value().to_owned()).collect::<Vec<_>>())
            .collect()
    }
}

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
    let seen = Seen::take(&snap);
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
    let seen = Seen::take(&snap);
    assert_eq!(seen.counter(AUDIT_DROPPED_TOTAL, &[("reason", "shutdown")]), 1);
    assert_eq!(seen.counter(AUDIT_DROPPED_TOTAL, &[("reason", "queue_full")]), 0);
}
