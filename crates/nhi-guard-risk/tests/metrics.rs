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
use nhi_guard_core::metrics::{DENIALS_TOTAL, REQUESTS_TOTAL, RISK_SCORE, SHADOW_DENIALS_TOTAL};
use nhi_guard_core::registry::ClientRecord;
use nhi_guard_core::{ClientAddr, CredentialInfo, Principal, ScopeSet, SecurityContext, Tier};
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
