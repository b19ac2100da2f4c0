//! The facade's service is one named type, `NhiGuardService<S>`, whichever
//! controls are on: a control that is off is its pass-through service, which hands
//! every request on without deciding or recording anything.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nhi_guard::core::address::PeerAddr;
use nhi_guard::core::context::ContextState;
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, SharedRegistry};
use nhi_guard::core::{ScopeSet, SecurityContext};
use nhi_guard::identity::IdentityLayerBuilder;
use nhi_guard::ratelimit::store::Quota;
use nhi_guard::ratelimit::{AuthFailureLimitLayer, Limit, RateLimitLayer};
use nhi_guard::{NhiGuard, NhiGuardBody, NhiGuardLayer, NhiGuardService};
use tower::{Layer, ServiceExt, service_fn};

const KEY: &str = "nhik_service_test_key_0001";

fn registry() -> SharedRegistry {
    let record = ClientRecord::builder(
        "service-test",
        "qa@example.com",
        "Facade service tests",
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .scopes(ScopeSet::parse("items:read").expect("scopes"))
    .api_key(KEY)
    .build()
    .expect("client");
    Arc::new(InMemoryRegistry::new(
        Inventory::builder().client(record).build().expect("inventory"),
    ))
}

type Seen = Arc<Mutex<Vec<ContextState>>>;

/// The stack around a handler that keeps what the context held when it ran; the
/// service's type is named, not inferred.
fn service(
    guard: NhiGuardLayer,
    seen: Seen,
) -> NhiGuardService<
    impl tower::Service<
        Request<Full<bytes::Bytes>>,
        Response = Response<Full<bytes::Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
> {
    guard.layer(service_fn(move |req: Request<Full<bytes::Bytes>>| {
        let seen = seen.clone();
        async move {
            if let Some(ctx) = req.extensions().get::<SecurityContext>() {
                seen.lock().expect("lock").push(ctx.snapshot());
            }
            Ok::<_, Infallible>(Response::new(Full::from("handled")))
        }
    }))
}

async fn call<S>(svc: &NhiGuardService<S>, key: Option<&str>) -> (StatusCode, String)
where
    NhiGuardService<S>: tower::Service<
            Request<Full<bytes::Bytes>>,
            Response = Response<NhiGuardBody<Full<bytes::Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let mut req = Request::get("/items/1");
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let mut req = req.body(Full::default()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.9:4000".parse::<SocketAddr>().expect("addr")));
    let res = svc.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn controls_that_are_off_pass_requests_through() {
    let registry = registry();
    let guard = NhiGuard::builder(registry)
        .identity(IdentityLayerBuilder::new())
        .build()
        .expect("stack");
    let seen = Seen::default();
    let svc = service(guard, seen.clone());

    assert_eq!(call(&svc, Some(KEY)).await, (StatusCode::OK, "handled".into()));
    {
        let seen = seen.lock().expect("lock");
        let state = seen.last().expect("the handler ran");
        assert_eq!(
            state.principal.as_ref().map(|p| p.client_id().as_str()),
            Some("service-test")
        );
        // Scope, rate limit and risk are off: nothing decided, nothing recorded.
        assert!(state.scopes.is_none(), "{:?}", state.scopes);
        assert!(state.rate_limit.is_none(), "{:?}", state.rate_limit);
        assert!(state.risk.is_none(), "{:?}", state.risk);
        assert!(state.route.is_none(), "no table matched: {:?}", state.route);
    }
    // Identity alone decides: no credential and a wrong one are refused...
    assert_eq!(call(&svc, None).await.0, StatusCode::UNAUTHORIZED);
    // ...as often as they come: with the failure limit off nothing turns into 429.
    for _ in 0..30 {
        assert_eq!(
            call(&svc, Some("nhik_wrong_key_000000000001")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(call(&svc, Some(KEY)).await.0, StatusCode::OK);
    assert_eq!(
        seen.lock().expect("lock").len(),
        2,
        "refusals never reach the handler"
    );
}

#[tokio::test]
async fn the_same_type_whichever_controls_are_on() {
    let registry = registry();
    let guard = NhiGuard::builder(registry)
        .identity(IdentityLayerBuilder::new())
        .auth_failure_limit(
            AuthFailureLimitLayer::new(Quota::per_minute(3).expect("quota")).by_credential(false),
        )
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client").quota(Quota::per_minute(2).expect("quota")))
                .expect("limit"),
        )
        .build()
        .expect("stack");
    let seen = Seen::default();
    // The same function (and so the same service type) as with identity alone.
    let svc = service(guard, seen.clone());

    assert_eq!(call(&svc, Some(KEY)).await.0, StatusCode::OK);
    assert!(
        seen.lock().expect("lock")[0].rate_limit.is_some(),
        "the limit ran"
    );
    assert_eq!(call(&svc, Some(KEY)).await.0, StatusCode::OK);
    assert_eq!(call(&svc, Some(KEY)).await.0, StatusCode::TOO_MANY_REQUESTS);
    // The failure limit is on: the address is blocked after three failures.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call(&svc, Some("nhik_wrong_key_000000000001")).await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}
