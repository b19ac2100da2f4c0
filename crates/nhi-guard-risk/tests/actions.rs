//! Every action of the risk layer as a client sees it (HTTP and gRPC), shadow mode,
//! sticky expiry and the operator's lift, driven through a test signal whose points
//! the test sets per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::context::Decision;
use nhi_guard_core::registry::ClientRecord;
use nhi_guard_core::{
    ClientAddr, CredentialFingerprint, CredentialInfo, Principal, ScopeSet, SecurityContext, Tier,
};
use nhi_guard_risk::store::RiskKey;
use nhi_guard_risk::{Mode, RiskLayer, Thresholds};
use tower::{Service, ServiceExt, service_fn};

mod dial;
use dial::Dial;

enum Cred {
    None,
    ApiKey,
    Jwt { issued_secs_ago: u64 },
    BoundJwt,
    Certificate,
}

struct Harness {
    clock: ManualClock,
    dial: Dial,
    layer: RiskLayer,
}

const T0: u64 = 1_800_000_000;

impl Harness {
    fn new(mode: Mode) -> Self {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(T0));
        let dial = Dial::default();
        let layer = RiskLayer::new()
            .signals(vec![Arc::new(dial.clone())])
            .clock(Arc::new(clock.clone()))
            .mode(mode);
        Self { clock, dial, layer }
    }

    fn request(&self, ip: &str, cred: Cred, grpc: bool) -> (Request<Full<Bytes>>, SecurityContext) {
        let mut b = Request::post("/svc/Method");
        if grpc {
            b = b.header("content-type", "application/grpc");
        }
        let mut req = b.body(Full::new(Bytes::new())).expect("request");
        let peer: SocketAddr = format!("{ip}:5000").parse().expect("addr");
        let ctx = SecurityContext::new(Some(ClientAddr::direct(peer)), &self.clock);
        let record = Arc::new(
            ClientRecord::builder(
                "app",
                "team@example.com",
                "tests",
                self.now() + Duration::from_secs(86_400),
            )
            .build()
            .expect("record"),
        );
        let info = match cred {
            Cred::None => None,
            Cred::ApiKey => Some(CredentialInfo::ApiKey {
                prefix: Arc::from("nhik"),
            }),
            Cred::Jwt { .. } => Some(CredentialInfo::Jwt {
                kid: None,
                alg: Arc::from("ES256"),
                jti: None,
                certificate_bound: false,
            }),
            Cred::BoundJwt => Some(CredentialInfo::Jwt {
                kid: None,
                alg: Arc::from("ES256"),
                jti: None,
                certificate_bound: true,
            }),
            Cred::Certificate => Some(CredentialInfo::Certificate {
                thumbprint: Arc::from("abc"),
                spiffe_id: None,
            }),
        };
        if let Some(info) = info {
            ctx.set_principal(Principal::new(
                record,
                info,
                ScopeSet::empty(),
                Tier::BUILT_IN_DEFAULT,
            ));
            let (iat, secret) = match cred {
                Cred::Jwt { issued_secs_ago } => (
                    Some(self.now() - Duration::from_secs(issued_secs_ago)),
                    format!("jwt-{issued_secs_ago}"),
                ),
                Cred::ApiKey => (None, "api-key".to_owned()),
                _ => (None, "bound".to_owned()),
            };
            ctx.update(|s| {
                s.credential_fingerprint = Some(CredentialFingerprint::of(secret.as_bytes()));
                s.credential_issued_at = iat;
            });
        }
        req.extensions_mut().insert(ctx.clone());
        (req, ctx)
    }

    fn now(&self) -> SystemTime {
        nhi_guard_core::Clock::now(&self.clock)
    }

    async fn send(
        &self,
        ip: &str,
        cred: Cred,
        grpc: bool,
    ) -> (Response<nhi_guard_core::GuardBody<Full<Bytes>>>, SecurityContext) {
        let (req, ctx) = self.request(ip, cred, grpc);
        let svc = self.layer.clone().layer_service();
        let res = svc.oneshot(req).await.expect("infallible");
        (res, ctx)
    }
}

type Handler = fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;
type Guarded = nhi_guard_risk::Risk<tower::util::ServiceFn<Handler>>;

fn ok_handler(_req: Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

trait LayerService {
    fn layer_service(self) -> Guarded;
}

impl LayerService for RiskLayer {
    fn layer_service(self) -> Guarded {
        tower::Layer::layer(&self, service_fn(ok_handler as Handler))
    }
}

async fn body_json(res: Response<nhi_guard_core::GuardBody<Full<Bytes>>>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}

fn header<'a, B>(res: &'a Response<B>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn allow_records_a_zero_score() {
    let h = Harness::new(Mode::Enforce);
    let (res, ctx) = h.send("127.0.0.1", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    let risk = ctx.read(|s| s.risk.clone()).expect("assessment");
    assert_eq!((risk.score, &*risk.action, risk.signals.len()), (0, "allow", 0));
    assert_eq!(ctx.decision(), Decision::Allowed);
    h.dial.set(30);
    let (res, ctx) = h.send("127.0.0.1", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    let risk = ctx.read(|s| s.risk.clone()).expect("assessment");
    assert_eq!((risk.score, &*risk.action), (30, "allow"));
    assert_eq!(risk.signals[0].signal, "dial");
    assert!(
        risk.signals[0].reason.contains("addr:127.0.0.1"),
        "{}",
        risk.signals[0].reason
    );
}

#[tokio::test]
async fn throttle_over_http_then_the_cut_allowance_then_expiry() {
    let h = Harness::new(Mode::Enforce);
    h.dial.set(45);
    let (res, ctx) = h.send("127.0.0.2", Cred::ApiKey, false).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "10");
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    match ctx.decision() {
        Decision::Denied(d) => assert_eq!((d.control.as_str(), d.reason), ("risk", "abnormal_usage")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ctx.read(|s| s.risk.as_ref().map(|r| r.action.to_string())),
        Some("throttle".into())
    );
    let body = body_json(res).await;
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["abnormal-usage-detected"])
    );
    assert_eq!(body["status"], 429);

    // The score drops, but the throttle is sticky: one request per 10 s.
    h.dial.set(0);
    let (res, _) = h.send("127.0.0.2", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 429);
    h.clock.advance(Duration::from_secs(10));
    let (res, _) = h.send("127.0.0.2", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200, "within the cut allowance");
    let (res, ctx) = h.send("127.0.0.2", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        ctx.read(|s| s.risk.as_ref().map(|r| r.signals[0].signal)),
        Some("sticky")
    );
    // Another address is not affected.
    assert_eq!(h.send("127.0.0.3", Cred::ApiKey, false).await.0.status(), 200);
    // After the 5-minute cool-down the key is free again.
    h.clock.advance(Duration::from_secs(300));
    for _ in 0..5 {
        assert_eq!(h.send("127.0.0.2", Cred::ApiKey, false).await.0.status(), 200);
    }
    assert!(h.layer.operator().active().is_empty());
}

#[tokio::test]
async fn throttle_over_grpc_is_resource_exhausted() {
    let h = Harness::new(Mode::Enforce);
    h.dial.set(45);
    let (res, _) = h.send("127.0.0.2", Cred::ApiKey, true).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "grpc-status"), "8");
    assert_eq!(header(&res, "content-type"), "application/grpc");
    assert!(header(&res, "grpc-message").contains("abnormal usage"));
}

#[tokio::test]
async fn step_up_challenge_and_what_answers_it() {
    let h = Harness::new(Mode::Enforce);
    h.dial.set(65);
    // A bearer token issued an hour ago: RFC 9470 challenge.
    let (res, ctx) = h
        .send(
            "127.0.0.4",
            Cred::Jwt {
                issued_secs_ago: 3600,
            },
            false,
        )
        .await;
    assert_eq!(res.status(), 401);
    let challenge = header(&res, "www-authenticate");
    assert!(
        challenge.starts_with(r#"Bearer realm="api", error="insufficient_user_authentication""#),
        "{challenge}"
    );
    assert!(challenge.ends_with("max_age=300"), "{challenge}");
    assert_eq!(
        ctx.read(|s| s.risk.as_ref().map(|r| r.action.to_string())),
        Some("step_up".into())
    );
    let body = body_json(res).await;
    assert_eq!(
        (body["reason"].as_str(), body["max_age"].as_u64()),
        (Some("step_up_required"), Some(300))
    );

    // The same stale token keeps being challenged even when the score drops.
    h.dial.set(0);
    let (res, _) = h
        .send(
            "127.0.0.4",
            Cred::Jwt {
                issued_secs_ago: 3600,
            },
            true,
        )
        .await;
    assert_eq!((res.status().as_u16(), header(&res, "grpc-status")), (200, "16"));
    assert!(header(&res, "www-authenticate").contains("max_age=300"));

    // A token issued a minute ago answers it; so do sender-constrained credentials.
    h.dial.set(65);
    assert_eq!(
        h.send("127.0.0.4", Cred::Jwt { issued_secs_ago: 60 }, false)
            .await
            .0
            .status(),
        200
    );
    assert_eq!(h.send("127.0.0.5", Cred::BoundJwt, false).await.0.status(), 200);
    assert_eq!(
        h.send("127.0.0.6", Cred::Certificate, false).await.0.status(),
        200
    );
    // An API key cannot be refreshed: the step-up becomes a block.
    let (res, ctx) = h.send("127.0.0.7", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        ctx.read(|s| s.risk.as_ref().map(|r| r.action.to_string())),
        Some("block".into())
    );
}

#[tokio::test]
async fn block_over_http_and_grpc_is_sticky_until_it_lapses() {
    let h = Harness::new(Mode::Enforce);
    h.dial.set(85);
    let (res, ctx) = h.send("127.0.0.8", Cred::None, false).await;
    assert_eq!(res.status(), 403);
    assert_eq!(header(&res, "retry-after"), "900");
    assert!(header(&res, "www-authenticate").is_empty());
    match ctx.decision() {
        Decision::Denied(d) => assert_eq!(d.reason, "risk_blocked"),
        other => panic!("{other:?}"),
    }
    let body = body_json(res).await;
    assert_eq!(body["type"], "urn:nhi-guard:problem:risk-blocked");
    assert!(body["request_id"].is_string());

    h.dial.set(0);
    h.clock.advance(Duration::from_secs(600));
    let (res, ctx) = h.send("127.0.0.8", Cred::ApiKey, true).await;
    assert_eq!((res.status().as_u16(), header(&res, "grpc-status")), (200, "7"));
    assert_eq!(header(&res, "retry-after"), "300");
    let hit = ctx.read(|s| s.risk.clone()).expect("assessment");
    assert_eq!((&*hit.action, hit.score), ("block", 85));
    assert!(hit.signals[0].reason.contains("addr:127.0.0.8"));

    h.clock.advance(Duration::from_secs(300));
    assert_eq!(h.send("127.0.0.8", Cred::ApiKey, false).await.0.status(), 200);
}

#[tokio::test]
async fn a_block_on_an_ipv6_client_holds_for_its_whole_64() {
    let h = Harness::new(Mode::Enforce);
    h.dial.set(85);
    assert_eq!(
        h.send("[2001:db8:5:1::1]", Cred::None, false).await.0.status(),
        403
    );
    h.dial.set(0);
    // Another address of the same /64: the same key, still blocked.
    let (res, ctx) = h.send("[2001:db8:5:1:abcd::2]", Cred::None, false).await;
    assert_eq!(res.status(), 403);
    let hit = ctx.read(|s| s.risk.clone()).expect("assessment");
    assert!(
        hit.signals[0].reason.contains("addr:2001:db8:5:1::"),
        "{}",
        hit.signals[0].reason
    );
    let keys: Vec<String> = h
        .layer
        .operator()
        .active()
        .iter()
        .map(|d| d.key.to_string())
        .collect();
    assert_eq!(keys, ["addr:2001:db8:5:1::"]);
    // The next /64 is not.
    assert_eq!(
        h.send("[2001:db8:5:2::1]", Cred::None, false).await.0.status(),
        200
    );
}

#[tokio::test]
async fn operator_lists_and_lifts_blocks() {
    let h = Harness::new(Mode::Enforce);
    h.dial.set(90);
    assert_eq!(h.send("127.0.0.9", Cred::ApiKey, false).await.0.status(), 403);
    assert_eq!(h.send("127.0.0.10", Cred::ApiKey, false).await.0.status(), 403);
    h.dial.set(0);
    let op = h.layer.operator();
    let active = op.active();
    let keys: Vec<String> = active.iter().map(|d| d.key.to_string()).collect();
    assert_eq!(keys, ["addr:127.0.0.9", "addr:127.0.0.10"]);
    assert_eq!(active[0].score, 90);
    assert_eq!(&*active[0].reason, "dial");
    assert!(op.lift(&RiskKey::parse("addr:127.0.0.9").expect("key")));
    assert!(
        !op.lift(&RiskKey::parse("addr:127.0.0.9").expect("key")),
        "already lifted"
    );
    assert_eq!(h.send("127.0.0.9", Cred::ApiKey, false).await.0.status(), 200);
    assert_eq!(h.send("127.0.0.10", Cred::ApiKey, false).await.0.status(), 403);
    assert_eq!(
        op.lift_everywhere(&RiskKey::parse("addr:127.0.0.10").expect("key"))
            .await
            .ok(),
        Some(true)
    );
    assert_eq!(h.send("127.0.0.10", Cred::ApiKey, false).await.0.status(), 200);
    assert!(op.active().is_empty());
}

#[tokio::test]
async fn shadow_mode_scores_and_records_but_never_refuses() {
    let h = Harness::new(Mode::Shadow);
    h.dial.set(95);
    let (res, ctx) = h.send("127.0.0.11", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    let state = ctx.snapshot();
    assert_eq!(state.decision, Decision::Allowed);
    assert_eq!(
        state.risk.as_ref().map(|r| (r.score, r.action.to_string())),
        Some((95, "block".into()))
    );
    assert_eq!(state.shadow_denials.len(), 1);
    assert_eq!(state.shadow_denials[0].reason, "risk_blocked");
    // The sticky decision is recorded too, and the next request is a shadow denial.
    assert_eq!(h.layer.operator().active().len(), 1);
    h.dial.set(0);
    let (res, ctx) = h.send("127.0.0.11", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.read(|s| s.shadow_denials.len()), 1);
}

#[tokio::test]
async fn off_mode_passes_everything_untouched() {
    let h = Harness::new(Mode::Off);
    h.dial.set(100);
    let (res, ctx) = h.send("127.0.0.12", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    assert!(ctx.read(|s| s.risk.is_none()));
}

#[tokio::test]
async fn route_sensitivity_and_tier_multiplier_weigh_the_score() {
    let h = Harness::new(Mode::Enforce);
    let layer = h
        .layer
        .clone()
        .route(
            nhi_guard_risk::Route::new("POST", "/svc/Method")
                .expect("route")
                .sensitivity(2.0)
                .expect("weight"),
        )
        .expect("route")
        .tier_multiplier("default", 0.5)
        .expect("tier");
    h.dial.set(30);
    let (req, ctx) = h.request("127.0.0.13", Cred::ApiKey, false);
    let mut svc = layer.layer_service();
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("infallible");
    assert_eq!(res.status(), 200);
    // 30 points × 2.0 route × 0.5 tier.
    assert_eq!(ctx.read(|s| s.risk.as_ref().map(|r| r.score)), Some(30));
    assert_eq!(ctx.route().as_deref(), Some("/svc/Method"));
}

#[test]
fn invalid_configuration_names_the_field() {
    let mut t = Thresholds::default();
    t.throttle = 50;
    t.step_up = 40;
    assert_eq!(
        RiskLayer::new().thresholds(t).expect_err("order").field(),
        "thresholds.step_up"
    );
    let mut t = Thresholds::default();
    t.block = 101;
    assert_eq!(
        RiskLayer::new().thresholds(t).expect_err("range").field(),
        "thresholds.block"
    );
    assert_eq!(
        RiskLayer::new()
            .tier_multiplier("free", -1.0)
            .expect_err("neg")
            .field(),
        "tier_multiplier[free]"
    );
    assert_eq!(
        RiskLayer::new()
            .throttle_interval(Duration::ZERO)
            .expect_err("zero")
            .field(),
        "throttle_interval"
    );
    assert!(
        RiskLayer::new()
            .step_up_max_age(Duration::from_millis(10))
            .is_err()
    );
    assert_eq!(Mode::parse("Shadow"), Some(Mode::Shadow));
    assert_eq!(Mode::parse("loud"), None);
}

#[tokio::test]
async fn repeat_offenders_are_blocked_longer_and_start_with_points() {
    let h = Harness::new(Mode::Enforce);
    h.dial.set(85);
    let (res, _) = h.send("127.0.0.20", Cred::ApiKey, false).await;
    assert_eq!((res.status().as_u16(), header(&res, "retry-after")), (403, "900"));
    h.dial.set(0);
    h.clock.advance(Duration::from_secs(900));
    let (res, ctx) = h.send("127.0.0.20", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    let risk = ctx.read(|s| s.risk.clone()).expect("assessment");
    assert_eq!((risk.score, risk.signals[0].signal), (20, "repeat_offender"));
    // The second block in a day lasts twice as long.
    h.dial.set(85);
    let (res, _) = h.send("127.0.0.20", Cred::ApiKey, false).await;
    assert_eq!(
        (res.status().as_u16(), header(&res, "retry-after")),
        (403, "1800")
    );
    // An operator's lift forgives the strikes too.
    assert!(
        h.layer
            .operator()
            .lift(&RiskKey::parse("addr:127.0.0.20").expect("key"))
    );
    h.dial.set(0);
    let (res, ctx) = h.send("127.0.0.20", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.read(|s| s.risk.as_ref().map(|r| r.score)), Some(0));
}

/// A shared store that is down.
#[derive(Debug)]
struct Down;

impl nhi_guard_risk::store::RiskStore for Down {
    fn increment(
        &self,
        _: Arc<str>,
        _: Duration,
        _: SystemTime,
    ) -> nhi_guard_risk::store::RiskStoreFuture<u64> {
        Box::pin(std::future::ready(Err(down())))
    }
    fn add_distinct(
        &self,
        _: Arc<str>,
        _: Arc<[u8]>,
        _: Duration,
        _: SystemTime,
    ) -> nhi_guard_risk::store::RiskStoreFuture<u64> {
        Box::pin(std::future::ready(Err(down())))
    }
    fn put(
        &self,
        _: nhi_guard_risk::store::StickyDecision,
        _: SystemTime,
    ) -> nhi_guard_risk::store::RiskStoreFuture<()> {
        Box::pin(std::future::ready(Err(down())))
    }
    fn find(
        &self,
        _: Arc<[RiskKey]>,
        _: SystemTime,
    ) -> nhi_guard_risk::store::RiskStoreFuture<Option<nhi_guard_risk::store::StickyDecision>> {
        Box::pin(std::future::ready(Err(down())))
    }
    fn list(
        &self,
        _: SystemTime,
    ) -> nhi_guard_risk::store::RiskStoreFuture<Vec<nhi_guard_risk::store::StickyDecision>> {
        Box::pin(std::future::ready(Err(down())))
    }
    fn lift(&self, _: RiskKey) -> nhi_guard_risk::store::RiskStoreFuture<bool> {
        Box::pin(std::future::ready(Err(down())))
    }
}

fn down() -> nhi_guard_risk::store::RiskStoreError {
    nhi_guard_risk::store::RiskStoreError::new("connection refused")
}

#[tokio::test]
async fn a_failing_shared_store_fails_open_by_default_and_closed_when_told() {
    let mut h = Harness::new(Mode::Enforce);
    h.layer = h.layer.clone().shared_store(Arc::new(Down));
    let (res, _) = h.send("127.0.0.30", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 200);
    // Blocks still happen, kept on this replica.
    h.dial.set(85);
    assert_eq!(h.send("127.0.0.30", Cred::ApiKey, false).await.0.status(), 403);
    h.dial.set(0);
    assert_eq!(h.send("127.0.0.30", Cred::ApiKey, false).await.0.status(), 403);
    assert_eq!(h.layer.operator().active().len(), 1);
    assert!(h.layer.operator().active_shared().await.is_err());

    h.layer = h.layer.clone().shared_store_fail_closed(true);
    let (res, ctx) = h.send("127.0.0.31", Cred::ApiKey, false).await;
    assert_eq!(res.status(), 503);
    assert_eq!(header(&res, "retry-after"), "1");
    match ctx.decision() {
        Decision::Denied(d) => assert_eq!(d.reason, "risk_store_unavailable"),
        other => panic!("{other:?}"),
    }
    let (res, _) = h.send("127.0.0.31", Cred::ApiKey, true).await;
    assert_eq!(header(&res, "grpc-status"), "14");
}

#[tokio::test]
async fn memory_store_implements_the_shared_store_contract() {
    use nhi_guard_risk::store::{RiskStore, StickyAction, StickyDecision};
    let store = nhi_guard_risk::InMemoryRiskStore::new(1000, Duration::from_secs(3600));
    let now = UNIX_EPOCH + Duration::from_secs(T0);
    let w = Duration::from_secs(60);
    let name: Arc<str> = Arc::from("fail:addr:127.0.0.1");
    assert_eq!(store.increment(name.clone(), w, now).await.ok(), Some(1));
    assert_eq!(store.increment(name.clone(), w, now).await.ok(), Some(2));
    assert_eq!(store.increment(name.clone(), w, now + w).await.ok(), Some(1));
    let d: Arc<str> = Arc::from("creds");
    for i in 0..4u8 {
        store
            .add_distinct(d.clone(), Arc::from(&[i][..]), w, now)
            .await
            .expect("add");
    }
    assert_eq!(
        store.add_distinct(d, Arc::from(&[0u8][..]), w, now).await.ok(),
        Some(4)
    );
    let key = RiskKey::parse("client:app").expect("key");
    let block = StickyDecision {
        key: key.clone(),
        action: StickyAction::Block,
        until: now + Duration::from_secs(60),
        score: 90,
        reason: Arc::from("test"),
    };
    store.put(block.clone(), now).await.expect("put");
    // A weaker decision does not replace it.
    let mut weaker = block.clone();
    weaker.action = StickyAction::Throttle;
    weaker.until = now + Duration::from_secs(600);
    store.put(weaker, now).await.expect("put");
    let found = store.find(Arc::from(vec![key.clone()]), now).await.expect("find");
    assert_eq!(found.as_ref(), Some(&block));
    assert_eq!(store.list(now).await.expect("list"), vec![block]);
    assert!(store.lift(key.clone()).await.expect("lift"));
    assert_eq!(store.find(Arc::from(vec![key]), now).await.expect("find"), None);
}

#[tokio::test]
async fn edge_and_inner_halves_spend_a_throttle_allowance_once() {
    let h = Harness::new(Mode::Enforce);
    let stack = |layer: &RiskLayer| {
        tower::Layer::layer(
            &layer.edge(),
            tower::Layer::layer(layer, service_fn(ok_handler as Handler)),
        )
    };
    h.dial.set(45);
    let (req, _) = h.request("127.0.0.40", Cred::ApiKey, false);
    let res = stack(&h.layer).oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), 429, "throttle starts");
    h.dial.set(0);
    h.clock.advance(Duration::from_secs(10));
    let (req, ctx) = h.request("127.0.0.40", Cred::ApiKey, false);
    let res = stack(&h.layer).oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), 200, "{:?}", ctx.read(|s| s.risk.clone()));
    let (req, _) = h.request("127.0.0.40", Cred::ApiKey, false);
    let res = stack(&h.layer).oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), 429, "the next one is over the allowance");
}

#[tokio::test]
async fn a_step_up_on_a_network_is_decided_after_identity_not_at_the_edge() {
    let h = Harness::new(Mode::Enforce);
    let stack = |layer: &RiskLayer| {
        tower::Layer::layer(
            &layer.edge(),
            tower::Layer::layer(layer, service_fn(ok_handler as Handler)),
        )
    };
    h.dial.set(65);
    let (req, _) = h.request(
        "127.0.0.41",
        Cred::Jwt {
            issued_secs_ago: 3600,
        },
        false,
    );
    let res = stack(&h.layer).oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), 401);
    h.dial.set(0);
    // A fresh token from the same address passes both halves; a stale one does not.
    let (req, _) = h.request("127.0.0.41", Cred::Jwt { issued_secs_ago: 30 }, false);
    assert_eq!(
        stack(&h.layer).oneshot(req).await.expect("infallible").status(),
        200
    );
    let (req, _) = h.request(
        "127.0.0.41",
        Cred::Jwt {
            issued_secs_ago: 3600,
        },
        false,
    );
    assert_eq!(
        stack(&h.layer).oneshot(req).await.expect("infallible").status(),
        401
    );
}
