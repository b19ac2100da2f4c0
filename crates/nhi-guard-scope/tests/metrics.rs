//! The scope layer's metrics, read from a `DebuggingRecorder`: every decision
//! counted once, denials by reason, shadow denials apart from real ones.

mod common;

use std::convert::Infallible;

use http::{Method, Request, Response, StatusCode};
use metrics_util::debugging::DebuggingRecorder;
use nhi_guard_core::Principal;
use nhi_guard_core::metrics::{DENIALS_TOTAL, REQUESTS_TOTAL, SHADOW_DENIALS_TOTAL};
use nhi_guard_scope::{Policy, Require, ScopeLayer};
use nhi_guard_testkit::metrics::Snapshot;
use tower::{Layer, ServiceExt, service_fn};

use common::principal;

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

    let seen = Snapshot::take(&snap);
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
