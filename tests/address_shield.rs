//! The per-address limit in front of identity through the whole stack
//! (`NhiGuard::builder`): a governed client is limited by its tier, however many of
//! its calls share one address (a NAT'd fleet, a batch host, a sidecar), while
//! anonymous floods and guessed credentials from that address are still refused,
//! and the limits in front of identity read the API-key header identity reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use nhi_guard::core::address::PeerAddr;
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, Tier};
use nhi_guard::identity::IdentityLayer;
use nhi_guard::ratelimit::store::Quota;
use nhi_guard::ratelimit::{AuthFailureLimitLayer, Limit, RateLimitLayer};
use nhi_guard::scope::{Policy, Require, ScopeLayer};
use nhi_guard::{NhiGuard, ScopeSet};
use tower::ServiceExt;

const FLEET_KEY: &str = "nhik_fleet_7d1f3a9c2b5e";
const HEADER: &str = "x-partner-key";

fn app(clock: &ManualClock) -> Router {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let registry = Arc::new(InMemoryRegistry::new(
        Inventory::builder()
            .tier(
                "bulk",
                Tier {
                    per_second: 1000,
                    burst: 2000,
                },
            )
            .client(
                ClientRecord::builder(
                    "warehouse-fleet",
                    "fulfilment@example.com",
                    "Pods behind one NAT address",
                    now.max(SystemTime::now()) + Duration::from_secs(86_400 * 365),
                )
                .scopes(ScopeSet::parse("orders:read").expect("scopes"))
                .tier("bulk")
                .api_key(FLEET_KEY)
                .build()
                .expect("client"),
            )
            .build()
            .expect("inventory"),
    ));
    let quota = |per_second: u32, burst: u32| {
        Quota::per_second(per_second)
            .and_then(|q| q.with_burst(burst))
            .expect("quota")
    };
    let guard = NhiGuard::builder(registry.clone())
        .clock(Arc::new(clock.clone()))
        .address_rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_address("per-address", quota(100, 200)).exempt_verified())
                .expect("limit"),
        )
        .auth_failure_limit(AuthFailureLimitLayer::new(
            Quota::per_minute(6)
                .and_then(|q| q.with_burst(10))
                .expect("quota"),
        ))
        .identity(IdentityLayer::builder(registry.clone()).api_key_header(HEADER))
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client"))
                .expect("limit"),
        )
        .scope(ScopeLayer::new(
            Policy::builder()
                .get("/orders", Require::all_of("orders:read"))
                .build()
                .expect("policy"),
        ))
        .build()
        .expect("stack");
    Router::new()
        .route("/orders", get(|| async { "[]" }))
        .layer(guard)
        .with_state(())
}

struct Reply {
    status: StatusCode,
    body: serde_json::Value,
}

async fn call(app: &Router, peer: &str, key: Option<&str>) -> Reply {
    let mut req = Request::get("/orders");
    if let Some(key) = key {
        req = req.header(HEADER, key);
    }
    let mut req = req.body(axum::body::Body::empty()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().expect("peer")));
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

#[tokio::test]
async fn a_verified_fleet_behind_one_address_is_limited_by_its_tier_only() {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let app = app(&clock);
    let nat = "198.51.100.7:40000";
    // 900 requests a second for three seconds: nine times the address quota,
    // inside the fleet's tier (1000/s).
    for i in 0..2700 {
        clock.advance(Duration::from_micros(1111));
        let r = call(&app, nat, Some(FLEET_KEY)).await;
        assert_eq!(r.status, StatusCode::OK, "fleet request {i}: {}", r.body);
    }
    // Past its tier, the client's own limit refuses it, not the address's.
    let mut refused = None;
    for i in 0..3000 {
        let r = call(&app, nat, Some(FLEET_KEY)).await;
        if r.status != StatusCode::OK {
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            refused = Some((i, r.body));
            break;
        }
    }
    let (i, body) = refused.expect("the tier refuses at last");
    assert!(
        i >= 1900,
        "the tier's burst of 2000 was mostly left: refused after {i}"
    );
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["per-client"]),
        "{body}"
    );
}

#[tokio::test]
async fn anonymous_floods_and_guessed_keys_from_that_address_are_still_refused() {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let app = app(&clock);
    let nat = "198.51.100.7:40000";
    // The fleet's own traffic spends nothing of the address quota ...
    for _ in 0..500 {
        assert_eq!(call(&app, nat, Some(FLEET_KEY)).await.status, StatusCode::OK);
    }
    // ... so anonymous calls get the whole burst of 200 (401: no credential), then
    // the flood shield refuses them before identity.
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..250 {
        *statuses
            .entry(call(&app, nat, None).await.status.as_u16())
            .or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 200), (429, 50)].into_iter().collect());
    // The fleet is not refused while its address is over the quota.
    for _ in 0..100 {
        assert_eq!(call(&app, nat, Some(FLEET_KEY)).await.status, StatusCode::OK);
    }

    // One guessed key from many addresses: the failure limit, reading the header
    // identity reads, refuses it before identity after its burst of 10.
    let mut refused_at = None;
    for i in 0..12 {
        let r = call(&app, &format!("203.0.113.{}:1", i + 1), Some("nhik_guessed")).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.body["reason"], "too_many_failed_authentications", "{}", r.body);
            refused_at.get_or_insert(i);
        } else {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        }
    }
    assert_eq!(refused_at, Some(10));
}
