//! The scope layer's metrics, read from a `DebuggingRecorder`: every decision
//! counted once, denials by reason, shadow denials apart from real ones.

mod common;

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use nhi_guard_core::Principal;
use nhi_guard_core::metrics::{DENIALS_TOTAL, REQUESTS_TOTAL, SHADOW_DENIALS_TOTAL};
use nhi_guard_scope::{Policy, Require, ScopeLayer};
use tower::{Layer, ServiceExt, service_fn};

use common::principal;

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

async fn status(layer: &ScopeLayer, method: Method, path: &str, who: Option<&Principal>) -> StatusCode {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .expect("request");
    if let Some(p) = who {
        req.extensions_mut().insert(p.clone());
    }
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    svc.oneshot(req).await.expect("infallible").status()
}

fn policy() -> Policy {
    Policy::builder()
        .get("/orders", Require::all_of("orders:read"))
        .post("/orders", Require::all_of("orders:write"))
        .public(Method::GET, "/health")
        .build()
        .expect("policy")
}

#[tokio::test]
async fn decisions_denials_and_shadow_denials_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // A current-thread runtime: the layers resolve their counters in this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let reader = principal("reader", "orders:read");
    let enforce = ScopeLayer::new(policy());
    let shadow = ScopeLayer::new(policy()).shadow(true);

    assert_eq!(
        status(&enforce, Method::GET, "/orders", Some(&reader)).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&enforce, Method::GET, "/health", None).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&enforce, Method::POST, "/orders", Some(&reader)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&enforce, Method::GET, "/orders", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&enforce, Method::GET, "/elsewhere", Some(&reader)).await,
        StatusCode::FORBIDDEN
    );
    // Shadow mode lets the refusal through and counts it apart.
    assert_eq!(
        status(&shadow, Method::POST, "/orders", Some(&reader)).await,
        StatusCode::OK
    );

    let seen = Seen::take(&snap);
    let requests = |decision| seen.counter(REQUESTS_TOTAL, &[("control", "scope"), ("decision", decision)]);
    assert_eq!(
        (requests("allow"), requests("deny"), requests("shadow_deny")),
        (2, 3, 1)
    );
    let denials = |name, reason| seen.counter(name, &[("control", "scope"), ("reason", reason)]);
    assert_eq!(denials(DENIALS_TOTAL, "insufficient_scope"), 1);
    assert_eq!(denials(DENIALS_TOTAL, "credential_missing"), 1);
    assert_eq!(denials(DENIALS_TOTAL, "route_not_in_policy"), 1);
    assert_eq!(denials(SHADOW_DENIALS_TOTAL, "insufficient_scope"), 1);
    assert!(
        !seen
            .label_values()
            .iter()
            .any(|v| v == "reader" || v.starts_with('/')),
        "a client id or a path in a label"
    );
}
