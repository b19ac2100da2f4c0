//! Against a real `redis-server` started by the test on a free loopback port.
//! Skipped (with a message) when the binary is missing, unless `CI=true`.

mod support;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use nhi_guard_core::Principal;
use nhi_guard_core::address::PeerAddr;
use nhi_guard_ratelimit::store::{FailurePolicy, Quota, RateLimitStore};
use nhi_guard_ratelimit::{InMemoryRateLimitStore, Limit, RateLimitLayer};
use nhi_guard_redis::RedisStore;
use nhi_guard_redis::testing::RedisServer as Server;
use support::principal;
use tower::{Layer, Service, ServiceExt, service_fn};

fn ok_service()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn request(p: &Principal, path: &str) -> Request<()> {
    let mut r = Request::builder().uri(path).body(()).expect("request");
    r.extensions_mut().insert(p.clone());
    r.extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 4000))));
    r
}

fn layer(store: Arc<dyn RateLimitStore>) -> RateLimitLayer {
    RateLimitLayer::new()
        .shared_store(store)
        .route_group("search", "/search")
        .expect("group")
        .limit(
            Limit::per_client("per-client")
                .quota(Quota::per_minute(1).expect("q").with_burst(10).expect("q")),
        )
        .expect("limit")
        .limit(
            Limit::per_client_route("per-client-route")
                .quota(Quota::per_minute(1).expect("q").with_burst(100).expect("q"))
                .route_quota(
                    "search",
                    Quota::per_minute(1).expect("q").with_burst(3).expect("q"),
                ),
        )
        .expect("limit")
}

async fn status<S>(svc: &S, req: Request<()>) -> (StatusCode, Option<String>)
where
    S: Service<Request<()>, Response = Response<nhi_guard_core::GuardBody<()>>, Error = Infallible> + Clone,
{
    let res = svc.clone().oneshot(req).await.expect("infallible");
    let state = res
        .headers()
        .get("ratelimit")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (res.status(), state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_one_redis_admit_no_more_than_the_quota() {
    let Some(server) = Server::start() else { return };
    let a = RedisStore::builder(server.url())
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect a");
    let b = RedisStore::builder(server.url())
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect b");
    let replica_a = layer(Arc::new(a.clone())).layer(ok_service());
    let replica_b = layer(Arc::new(b)).layer(ok_service());

    // 50 concurrent requests for one client, spread over both replicas: the
    // per-client burst is 10.
    let p = principal("shared-client");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let svc = if i % 2 == 0 {
                replica_a.clone()
            } else {
                replica_b.clone()
            };
            let req = request(&p, "/orders");
            tokio::spawn(async move { svc.oneshot(req).await.expect("ok").status() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let s = t.await.expect("task");
        assert!(s == 200 || s == 429, "{s}");
        ok += usize::from(s == 200);
    }
    assert_eq!(ok, 10);

    // A refusal by the per-route limit spends nothing on the per-client limit.
    let q = principal("route-client");
    for i in 0..3 {
        let svc = if i % 2 == 0 { &replica_a } else { &replica_b };
        assert_eq!(status(svc, request(&q, "/search")).await.0, 200);
    }
    for _ in 0..5 {
        let (s, state) = status(&replica_b, request(&q, "/search")).await;
        assert_eq!(s, 429);
        assert_eq!(
            state.as_deref(),
            Some(r#""per-client";r=7;t=180, "per-client-route";r=0;t=60"#)
        );
    }
    for _ in 0..7 {
        assert_eq!(status(&replica_a, request(&q, "/orders")).await.0, 200);
    }
    assert_eq!(status(&replica_a, request(&q, "/orders")).await.0, 429);

    // Keys carry a TTL no longer than the time to recover the full burst.
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("conn");
    let key = "nhi:rl:{route-client}:per-client:";
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 0 && ttl <= 600_001, "ttl {ttl}");
    assert_eq!(a.failures(), 0);
}

async fn until_status<S>(svc: &S, p: &Principal, want: StatusCode) -> bool
where
    S: Service<Request<()>, Response = Response<nhi_guard_core::GuardBody<()>>, Error = Infallible> + Clone,
{
    // Reconnection takes real time: poll, without asserting on how long it takes.
    for _ in 0..200 {
        if status(svc, request(p, "/orders")).await.0 == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policies_when_redis_dies_and_recovery_when_it_returns() {
    let Some(mut server) = Server::start() else { return };
    let build = |policy: FailurePolicy| {
        let mut b = RedisStore::builder(server.url())
            .timeout(Duration::from_millis(300))
            .retry_after_failure(Duration::from_millis(20))
            .failure_policy(policy);
        if policy == FailurePolicy::FallbackLocal {
            b = b.fallback_store(Arc::new(InMemoryRateLimitStore::new()));
        }
        b
    };
    let open = layer(Arc::new(
        build(FailurePolicy::FailOpen).connect().await.expect("open"),
    ))
    .layer(ok_service());
    let closed_store = build(FailurePolicy::FailClosed).connect().await.expect("closed");
    let closed = layer(Arc::new(closed_store.clone())).layer(ok_service());
    let fallback = layer(Arc::new(
        build(FailurePolicy::FallbackLocal)
            .connect()
            .await
            .expect("fallback"),
    ))
    .layer(ok_service());

    // Up: all three enforce the shared quota (10 per client).
    let p = principal("before");
    for svc in [&open, &closed, &fallback] {
        let _ = status(svc, request(&p, "/orders")).await;
    }
    for _ in 0..7 {
        assert_eq!(status(&closed, request(&p, "/orders")).await.0, 200);
    }
    for svc in [&open, &closed, &fallback] {
        assert_eq!(status(svc, request(&p, "/orders")).await.0, 429);
    }

    server.kill();

    // Fail-open: everything passes, even beyond the quota.
    let q = principal("during");
    for _ in 0..15 {
        assert_eq!(status(&open, request(&q, "/orders")).await.0, 200);
    }
    // Fail-closed: 503.
    assert_eq!(
        status(&closed, request(&q, "/orders")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(closed_store.failures() > 0);
    // Fallback: the local store enforces the same quota on this replica.
    for i in 0..12 {
        let (s, _) = status(&fallback, request(&q, "/orders")).await;
        assert_eq!(s == 200, i < 10, "request {i}: {s}");
    }

    // Back on the same port (empty: no persistence): every policy recovers
    // without a restart of the service.
    server.restart();
    let r = principal("after");
    assert!(
        until_status(&closed, &r, StatusCode::OK).await,
        "fail-closed store never recovered"
    );
    for _ in 0..9 {
        assert_eq!(status(&closed, request(&r, "/orders")).await.0, 200);
    }
    // The open and fallback replicas see the same Redis state again.
    assert!(
        until_status(&open, &r, StatusCode::TOO_MANY_REQUESTS).await,
        "fail-open store never recovered"
    );
    assert!(
        until_status(&fallback, &r, StatusCode::TOO_MANY_REQUESTS).await,
        "fallback store never recovered"
    );
}

#[tokio::test]
async fn unreachable_at_start_builds_lazily_and_fails_by_policy() {
    // A port nothing listens on: no redis-server needed.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    assert_eq!(
        RedisStore::builder(url.clone())
            .connect()
            .await
            .expect_err("nothing listens")
            .field(),
        "url"
    );
    let store = RedisStore::builder(url)
        .timeout(Duration::from_millis(200))
        .build_lazy()
        .expect("lazy");
    let svc = layer(Arc::new(store)).layer(ok_service());
    assert_eq!(
        status(&svc, request(&principal("x"), "/")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}
