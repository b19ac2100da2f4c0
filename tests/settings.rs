//! The settings every layer takes (clock, client-address resolver, renderer) in
//! the whole stack: `NhiGuard::builder` fills only what a layer left unset, so a
//! realm or renderer given to one layer stays with it, a resolver (trusted
//! proxies) given to one layer resolves the address for the whole stack, and two
//! different resolvers are a build error instead of one silently ignored.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use nhi_guard::NhiGuard;
use nhi_guard::core::address::{ClientAddrResolver, PeerAddr};
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, SharedRegistry};
use nhi_guard::core::{ScopeSet, SecurityContext};
use nhi_guard::identity::IdentityLayer;
use nhi_guard::ratelimit::{Limit, RateLimitLayer};
use nhi_guard::scope::{Policy, Require, ScopeLayer};
use tower::{ServiceExt, service_fn};

const KEY: &str = "nhik_settings_test_key_0001";

fn registry() -> SharedRegistry {
    let record = ClientRecord::builder(
        "settings-test",
        "qa@example.com",
        "Layer settings tests",
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .scopes(ScopeSet::parse("orders:read").expect("scopes"))
    .api_key(KEY)
    .build()
    .expect("client");
    Arc::new(InMemoryRegistry::new(
        Inventory::builder().client(record).build().expect("inventory"),
    ))
}

fn policy() -> Policy {
    Policy::builder()
        .get("/orders", Require::all_of("orders:read"))
        .build()
        .expect("policy")
}

fn trusting(net: &str) -> ClientAddrResolver {
    ClientAddrResolver::new().trust_proxy(net.parse().expect("CIDR"))
}

/// `GET /orders` from peer 10.1.2.3 with `headers`, through `guard` around a
/// handler that answers with the client address the stack resolved.
async fn call(guard: &nhi_guard::NhiGuardLayer, headers: &[(&str, &str)]) -> Response<String> {
    let app = tower::Layer::layer(
        guard,
        service_fn(|req: Request<Full<bytes::Bytes>>| async move {
            let addr = req
                .extensions()
                .get::<SecurityContext>()
                .and_then(SecurityContext::client_addr)
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            Ok::<_, Infallible>(Response::new(addr))
        }),
    );
    let mut req = Request::get("/orders");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(Full::default()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr("10.1.2.3:4000".parse::<SocketAddr>().expect("addr")));
    let res = app.oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .expect("body")
        .to_bytes();
    Response::from_parts(parts, String::from_utf8_lossy(&bytes).into_owned())
}

fn challenge(res: &Response<String>) -> &str {
    res.headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_realm_given_to_one_layer_stays_with_it() {
    let inventory = registry();
    let guard = NhiGuard::builder(inventory.clone())
        .realm("stack")
        .identity(IdentityLayer::builder(inventory))
        .scope(ScopeLayer::new(policy()).realm("orders-api"))
        .build()
        .expect("stack");
    // No credential: the scope layer answers, with its own realm.
    let res = call(&guard, &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&res).contains("realm=\"orders-api\""),
        "{}",
        challenge(&res)
    );
    // A wrong key: identity answers, with the stack's realm.
    let res = call(&guard, &[("x-api-key", "nhik_wrong")]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&res).contains("realm=\"stack\""), "{}", challenge(&res));
}

#[tokio::test]
async fn a_resolver_given_to_one_layer_resolves_for_the_whole_stack() {
    let inventory = registry();
    let guard = NhiGuard::builder(inventory.clone())
        .identity(IdentityLayer::builder(inventory))
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client"))
                .expect("limit")
                .client_addr_resolver(trusting("10.0.0.0/8")),
        )
        .scope(ScopeLayer::new(policy()))
        .build()
        .expect("stack");
    // The context is created by identity, the outermost layer here: it resolves
    // the address with the resolver given to the rate limit.
    let res = call(&guard, &[("x-api-key", KEY), ("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "203.0.113.7");

    // The same resolver given twice is one resolver.
    let inventory = registry();
    let twice = NhiGuard::builder(inventory.clone())
        .client_addr_resolver(trusting("10.0.0.0/8"))
        .identity(IdentityLayer::builder(inventory))
        .scope(ScopeLayer::new(policy()).client_addr_resolver(trusting("10.0.0.0/8")))
        .build();
    assert!(twice.is_ok(), "{:?}", twice.err());
}

#[test]
fn two_different_resolvers_are_a_build_error() {
    let inventory = registry();
    let err = NhiGuard::builder(inventory.clone())
        .client_addr_resolver(trusting("10.0.0.0/8"))
        .identity(IdentityLayer::builder(inventory))
        .scope(ScopeLayer::new(policy()).client_addr_resolver(trusting("192.168.0.0/16")))
        .build()
        .expect_err("two resolvers");
    assert_eq!((err.control(), err.field()), ("scope", "client_addr_resolver"));
    assert!(err.to_string().contains("the stack"), "{err}");
}
