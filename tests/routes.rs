//! The one route table through the whole stack: `NhiGuardBuilder::routes` gives the
//! scope policy, the risk layer's routes and the rate limiter's groups, each
//! declared once on the same routes, and the request is matched once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use nhi_guard::NhiGuard;
use nhi_guard::core::address::PeerAddr;
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, SharedRegistry};
use nhi_guard::core::route::{Route, Routes};
use nhi_guard::core::{ScopeSet, SecurityContext};
use nhi_guard::identity::IdentityLayer;
use nhi_guard::ratelimit::store::Quota;
use nhi_guard::ratelimit::{Limit, RateGroup, RateLimitLayer};
use nhi_guard::risk::{RiskLayer, RouteRisk};
use nhi_guard::scope::Require;
use tower::{ServiceExt, service_fn};

const KEY: &str = "nhik_routes_test_key_00001";

fn registry() -> SharedRegistry {
    let record = ClientRecord::builder(
        "routes-test",
        "qa@example.com",
        "Route table tests",
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .scopes(ScopeSet::parse("items:read exports:read").expect("scopes"))
    .api_key(KEY)
    .build()
    .expect("client");
    Arc::new(InMemoryRegistry::new(
        Inventory::builder().client(record).build().expect("inventory"),
    ))
}

fn routes() -> Routes {
    Routes::builder()
        .route(Route::get("/health").with(Require::public()))
        .route(
            Route::get("/items/{id}")
                .with(Require::all_of("items:read"))
                .with(RouteRisk::new().group("items")),
        )
        .route(
            Route::get("/exports/{day}")
                .with(Require::all_of("exports:read"))
                .with(RateGroup::new("exports")),
        )
        .route(
            Route::get("/exports/{day}/{part}")
                .with(Require::all_of("exports:read"))
                .with(RateGroup::new("exports")),
        )
        // Declared for risk only: scope has no requirement for it, so it is denied.
        .route(Route::get("/internal/{x}").with(RouteRisk::new()))
        .build()
        .expect("routes")
}

/// What the handler saw: the route template the context holds.
async fn call(guard: &nhi_guard::NhiGuardLayer, method: Method, path: &str) -> (StatusCode, String) {
    let app = tower::Layer::layer(
        guard,
        service_fn(|req: Request<Full<bytes::Bytes>>| async move {
            let route = req
                .extensions()
                .get::<SecurityContext>()
                .and_then(SecurityContext::route)
                .map(|r| r.to_string())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(route))
        }),
    );
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", KEY)
        .body(Full::default())
        .expect("request");
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.1:4000".parse::<SocketAddr>().expect("addr")));
    let res = app.oneshot(req).await.expect("infallible");
    let status = res.status();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn one_table_gives_every_control_its_attributes() {
    let registry = registry();
    // The registry is given once: the identity builder gets the stack's.
    let guard = NhiGuard::builder(registry)
        .identity(nhi_guard::identity::IdentityLayerBuilder::new())
        .risk(RiskLayer::new())
        .rate_limit(
            RateLimitLayer::new()
                .limit(
                    Limit::per_client_route("per-client-route")
                        .route_quota("exports", Quota::per_minute(2).expect("quota")),
                )
                .expect("limit"),
        )
        .routes(routes())
        .build()
        .expect("stack");

    // Scope from the table's Require; the template travels in the context.
    assert_eq!(
        call(&guard, Method::GET, "/items/7").await,
        (StatusCode::OK, "/items/{id}".into())
    );
    assert_eq!(call(&guard, Method::HEAD, "/items/7").await.0, StatusCode::OK);
    assert_eq!(call(&guard, Method::GET, "/health").await.0, StatusCode::OK);
    // A route without a Require, and a path outside the table: denied.
    assert_eq!(
        call(&guard, Method::GET, "/internal/1").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&guard, Method::GET, "/nowhere").await.0,
        StatusCode::FORBIDDEN
    );
    // The two export routes share the `exports` group: two requests in all.
    assert_eq!(
        call(&guard, Method::GET, "/exports/2026-12-01").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&guard, Method::GET, "/exports/2026-12-02/1").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&guard, Method::GET, "/exports/2026-12-03").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The item routes are their own group, at the client's tier.
    assert_eq!(call(&guard, Method::GET, "/items/8").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_layer_keeps_routes_of_its_own_and_bad_attributes_fail_the_build() {
    let registry = registry();
    // The risk layer's own routes stay; the table still makes the scope policy.
    let own = RiskLayer::new()
        .route(nhi_guard::risk::Route::new("GET", "/items/{id}").expect("route"))
        .expect("route");
    let guard = NhiGuard::builder(registry.clone())
        .identity(IdentityLayer::builder(registry.clone()))
        .risk(own)
        .routes(routes())
        .build()
        .expect("stack");
    assert_eq!(call(&guard, Method::GET, "/items/7").await.0, StatusCode::OK);
    // A risk attribute naming a capture the pattern lacks is the stack's error.
    let bad = Routes::builder()
        .route(Route::get("/a/{id}").with(RouteRisk::new().resource("sku")))
        .build()
        .expect("table");
    let err = NhiGuard::builder(registry.clone())
        .identity(IdentityLayer::builder(registry))
        .risk(RiskLayer::new())
        .routes(bad)
        .build()
        .expect_err("no capture sku");
    assert_eq!((err.control(), err.field()), ("risk", "route[/a/{id}].resource"));
}

#[test]
fn an_identity_layer_alone_needs_a_registry() {
    let err = nhi_guard::identity::IdentityLayerBuilder::new()
        .build()
        .expect_err("no registry");
    assert_eq!((err.control(), err.field()), ("identity", "registry"));
    assert_eq!(err.kind(), nhi_guard::core::config::ConfigErrorKind::Missing);
    assert!(
        nhi_guard::identity::IdentityLayerBuilder::new()
            .registry(registry())
            .build()
            .is_ok()
    );
}
