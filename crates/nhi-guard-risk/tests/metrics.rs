//! The risk layer's metrics, read from a `DebuggingRecorder`: decisions, the block
//! by reason, shadow refusals apart, the score histogram, and the edge half that
//! counts only what it refuses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::metrics::{
    DENIALS_TOTAL, REQUESTS_TOTAL, RISK_SCORE, RISK_SIGNALS_TOTAL, SHADOW_DENIALS_TOTAL,
};
use nhi_guard_core::registry::ClientRecord;
use nhi_guard_core::{ClientAddr, CredentialInfo, Principal, ScopeSet, SecurityContext, Tier};
use nhi_guard_risk::store::{RiskKey, StickyAction};
use nhi_guard_risk::{Mode, RiskLayer};
use nhi_guard_testkit::metrics::Snapshot;
use tower::{Layer, ServiceExt, service_fn};

mod dial;
use dial::Dial;

/// A request from `ip` by an API-key client (which cannot answer a step-up).
fn request(clock: &ManualClock, ip: &str) -> Request<()> {
    let mut req = Request::get("/orders").body(()).expect("request");
    let peer: SocketAddr = format!("{ip}:5000").parse().expect("addr");
    let ctx = SecurityContext::new(Some(ClientAddr::direct(peer)), clock);
    let record = ClientRecord::builder(
        "app",
        "team@example.com",
        "tests",
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .build()
    .expect("record");
    ctx.set_principal(Principal::new(
        Arc::new(record),
        CredentialInfo::ApiKey {
            prefix: Arc::from("nhik"),
        },
        ScopeSet::empty(),
        Tier::BUILT_IN_DEFAULT,
    ));
    req.extensions_mut().insert(ctx);
    req
}

/// The status `$layer` answers `$req` with, in front of a handler answering 200.
macro_rules! status {
    ($layer:expr, $req:expr) => {
        $layer
            .layer(service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(()))
            }))
            .oneshot($req)
            .await
            .expect("infallible")
            .status()
    };
}

#[tokio::test]
async fn decisions_scores_and_refusals_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // A current-thread runtime: the layers resolve their counters in this thread.
    let _local = metrics::set_default_local_recorder(&recorder);
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let dial = Dial::default();
    let layer = |mode| {
        RiskLayer::new()
            .signals(vec![Arc::new(dial.clone())])
            .clock(Arc::new(clock.clone()))
            .mode(mode)
    };
    let (enforce, shadow) = (layer(Mode::Enforce), layer(Mode::Shadow));

    // Nothing fires: allowed with score 0. The edge half lets it through uncounted.
    assert_eq!(status!(enforce, request(&clock, "192.0.2.1")), StatusCode::OK);
    assert_eq!(
        status!(enforce.edge(), request(&clock, "192.0.2.1")),
        StatusCode::OK
    );
    // 100 points: blocked (an API key cannot step up); in shadow mode let through.
    dial.set(100);
    assert_eq!(
        status!(enforce, request(&clock, "192.0.2.2")),
        StatusCode::FORBIDDEN
    );
    assert_eq!(status!(shadow, request(&clock, "192.0.2.3")), StatusCode::OK);
    // The block sticks to the address: the edge half refuses it now.
    dial.set(0);
    assert_eq!(
        status!(enforce.edge(), request(&clock, "192.0.2.2")),
        StatusCode::FORBIDDEN
    );

    let seen = Snapshot::take(&snap);
    let requests = |decision| seen.counter(REQUESTS_TOTAL, &[("control", "risk"), ("decision", decision)]);
    assert_eq!(
        (requests("allow"), requests("deny"), requests("shadow_deny")),
        (1, 2, 1)
    );
    let denials = |name, reason| seen.counter(name, &[("control", "risk"), ("reason", reason)]);
    assert_eq!(denials(DENIALS_TOTAL, "risk_blocked"), 2);
    assert_eq!(denials(SHADOW_DENIALS_TOTAL, "risk_blocked"), 1);
    // Per signal: the dial fired on the enforced block and on the shadow one.
    assert_eq!(
        seen.counter(RISK_SIGNALS_TOTAL, &[("signal", "dial"), ("action", "block")]),
        2
    );
    assert_eq!(
        seen.counter(RISK_SIGNALS_TOTAL, &[("signal", "dial"), ("action", "allow")]),
        0
    );
    // The operator's explanation of the client's block: its signal and points.
    let explained = enforce.operator().explain_client("app");
    assert_eq!(explained.len(), 1, "{explained:?}");
    let d = &explained[0];
    assert_eq!(
        (d.action, d.enforced, d.score, &d.key),
        (
            StickyAction::Block,
            true,
            100,
            &RiskKey::address("192.0.2.2".parse().expect("ip"))
        )
    );
    assert_eq!(d.address, Some("192.0.2.2".parse().expect("ip")));
    assert_eq!(d.client.as_ref().map(|c| c.as_str()), Some("app"));
    assert_eq!(
        d.signals.iter().map(|h| (h.signal, h.points)).collect::<Vec<_>>(),
        [("dial", 100)]
    );
    assert!(d.signals[0].reason.contains("test dial"), "{:?}", d.signals);
    assert_eq!(enforce.operator().explain_client("someone-else"), []);
    assert_eq!(
        enforce
            .operator()
            .explain_key(&RiskKey::address("192.0.2.2".parse().expect("ip")))
            .len(),
        1
    );
    // Shadow mode explains what it would have done.
    let shadowed = shadow.operator().recent_decisions();
    assert_eq!(shadowed.len(), 1);
    assert!(!shadowed[0].enforced);
    // A log of 0 keeps nothing.
    let silent = layer(Mode::Enforce).decision_log(0);
    dial.set(100);
    assert_eq!(
        status!(silent, request(&clock, "192.0.2.9")),
        StatusCode::FORBIDDEN
    );
    assert_eq!(silent.operator().recent_decisions(), []);
    match seen.get(MetricKind::Histogram, RISK_SCORE, &[]) {
        Some(DebugValue::Histogram(v)) => {
            let mut scores: Vec<f64> = v.iter().map(|s| s.into_inner()).collect();
            scores.sort_by(f64::total_cmp);
            // The identified half scored three requests; the edge half scores none.
            assert_eq!(scores, [0.0, 100.0, 100.0]);
        }
        other => panic!("no score histogram: {other:?}"),
    }
}
