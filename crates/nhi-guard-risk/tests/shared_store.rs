//! Two replicas of a service, each with its own risk layer, sharing one store:
//! authentication failures add up across replicas, a block made by one is enforced
//! by the other, and an operator's lift reaches both. Run against the in-process
//! `InMemoryRiskStore` always, and against a real `redis-server` started by the test
//! (skipped with a message when the binary is missing, unless `CI=true`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::denial::{DefaultRenderer, respond};
use nhi_guard_core::registry::ClientRecord;
use nhi_guard_core::{
    ClientAddrResolver, Control, CredentialFingerprint, CredentialInfo, Denial, GuardBody, Principal,
    ScopeSet, SecurityContext, Tier,
};
use nhi_guard_redis::testing::RedisServer;
use nhi_guard_risk::store::{RiskKey, RiskStore};
use nhi_guard_risk::{InMemoryRiskStore, RiskLayer, RiskOperator, SharedLimits};
use tower::{Layer, ServiceExt, service_fn};

type Res = Response<GuardBody<GuardBody<String>>>;

struct Replica {
    svc: tower::util::BoxCloneService<Request<()>, Res, Infallible>,
    operator: RiskOperator,
}

fn replica(store: Arc<dyn RiskStore>, clock: &ManualClock) -> Replica {
    let mut limits = SharedLimits::default();
    limits.address_failures = 6;
    let risk = RiskLayer::new()
        .clock(Arc::new(clock.clone()))
        .shared_store(store)
        .shared_limits(limits);
    let operator = risk.operator();
    let app = risk.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }));
    let clock2 = clock.clone();
    // A stand-in for the identity layer: key "good" is client "app"; anything else
    // is recorded as a failure and answered 401, as the real identity layer does.
    let identity = service_fn(move |mut req: Request<()>| {
        let app = app.clone();
        let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &clock2);
        let key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        async move {
            ctx.update(|s| s.credential_fingerprint = Some(CredentialFingerprint::of(key.as_bytes())));
            if key == "good" {
                let record = Arc::new(
                    ClientRecord::builder(
                        "app",
                        "t@example.com",
                        "test",
                        UNIX_EPOCH + Duration::from_secs(4_000_000_000),
                    )
                    .build()
                    .expect("record"),
                );
                let info = CredentialInfo::ApiKey {
                    prefix: Arc::from("go"),
                };
                ctx.set_principal(Principal::new(
                    record,
                    info,
                    ScopeSet::empty(),
                    Tier::BUILT_IN_DEFAULT,
                ));
                app.oneshot(req).await
            } else {
                ctx.update(|s| s.identity_failure = Some("unknown_api_key"));
                let d = Denial::invalid_token(Control::Identity, "unknown_api_key", "unknown key");
                ctx.deny(&d);
                Ok(respond(
                    &DefaultRenderer::new(),
                    d,
                    nhi_guard_core::Protocol::Http,
                ))
            }
        }
    });
    let svc = risk.edge().layer(identity);
    Replica {
        svc: tower::util::BoxCloneService::new(svc),
        operator,
    }
}

async fn send(r: &Replica, ip: &str, key: &str) -> StatusCode {
    let mut req = Request::get("/orders")
        .header("x-api-key", key)
        .body(())
        .expect("request");
    let peer: SocketAddr = format!("{ip}:4000").parse().expect("addr");
    req.extensions_mut().insert(PeerAddr(peer));
    r.svc.clone().oneshot(req).await.expect("infallible").status()
}

async fn replicas_share(store: Arc<dyn RiskStore>) {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let a = replica(store.clone(), &clock);
    let b = replica(store.clone(), &clock);

    // A stale key from one address, alternating replicas: three failures each,
    // under every local threshold, six together: the shared limit.
    for i in 0..6 {
        let r = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            send(r, "127.0.0.50", "stale").await,
            StatusCode::UNAUTHORIZED,
            "attempt {i}"
        );
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(send(&a, "127.0.0.50", "good").await, StatusCode::FORBIDDEN);
    assert_eq!(send(&b, "127.0.0.50", "good").await, StatusCode::FORBIDDEN);
    // Others are unaffected.
    assert_eq!(send(&a, "127.0.0.70", "good").await, StatusCode::OK);
    assert_eq!(send(&b, "127.0.0.70", "good").await, StatusCode::OK);

    // A spray seen only by replica A (throttled after three guesses, one guess per
    // 10 s allowed through): A blocks the address, and B enforces it.
    for i in 0..7 {
        let status = send(&a, "127.0.0.60", &format!("guess-{i}")).await;
        assert!(matches!(status.as_u16(), 401 | 403 | 429), "{status}");
        clock.advance(Duration::from_secs(10));
    }
    assert_eq!(send(&a, "127.0.0.60", "good").await, StatusCode::FORBIDDEN);
    assert_eq!(send(&b, "127.0.0.60", "good").await, StatusCode::FORBIDDEN);

    // Both replicas list the shared blocks; a lift from B reaches A.
    let listed: Vec<String> = a
        .operator
        .active_shared()
        .await
        .expect("list")
        .iter()
        .map(|d| d.key.to_string())
        .collect();
    assert!(listed.contains(&"addr:127.0.0.50".to_string()), "{listed:?}");
    assert!(listed.contains(&"addr:127.0.0.60".to_string()), "{listed:?}");
    let key = RiskKey::parse("addr:127.0.0.50").expect("key");
    assert!(b.operator.lift_everywhere(&key).await.expect("lift"));
    assert_eq!(send(&a, "127.0.0.50", "good").await, StatusCode::OK);
    assert_eq!(send(&b, "127.0.0.50", "good").await, StatusCode::OK);

    // Shared blocks lapse on their own.
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(send(&b, "127.0.0.60", "good").await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_an_in_process_store() {
    replicas_share(Arc::new(InMemoryRiskStore::new(
        10_000,
        Duration::from_secs(86_400),
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_redis_store() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let store = nhi_guard_redis::risk::RedisRiskStore::connect(&url, "risk-test", Duration::from_secs(2))
        .await
        .expect("connect");
    replicas_share(Arc::new(store)).await;
    drop(server);
}
