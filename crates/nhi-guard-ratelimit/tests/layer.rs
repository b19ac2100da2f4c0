//! RateLimitLayer end to end over `service_fn` handlers: statuses, headers parsed as
//! structured fields, problem bodies and the recorded security context.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::clock::{ManualClock, SharedClock};
use nhi_guard_core::context::{Control, Decision};
use nhi_guard_core::registry::{ClientRecord, InMemoryRegistry, Inventory};
use nhi_guard_core::{CredentialInfo, GuardBody, Principal, ScopeSet, SecurityContext, Tier};
use nhi_guard_ratelimit::store::{
    CheckMode, Quota, RateLimitCheck, RateLimitStore, StoreError, StoreErrorKind, StoreFuture,
};
use nhi_guard_ratelimit::{InMemoryRateLimitStore, Limit, RateLimitLayer, RequestCost};
use tower::{Layer, Service, ServiceExt, service_fn};

type Body = Full<Bytes>;

fn quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(per_second)
        .and_then(|q| q.with_burst(burst))
        .expect("quota")
}

fn clock() -> ManualClock {
    ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

fn ok_service()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) })
}

fn principal(id: &str, tier_name: &str, tier: Tier) -> Principal {
    let record = ClientRecord::builder(
        id,
        "team@example.com",
        "test client",
        SystemTime::now() + Duration::from_secs(86_400 * 365),
    )
    .tier(tier_name)
    .build()
    .expect("record");
    Principal::new(
        Arc::new(record),
        CredentialInfo::ApiKey {
            prefix: Arc::from("nhik"),
        },
        ScopeSet::default(),
        tier,
    )
}

struct Req {
    path: &'static str,
    peer: Option<&'static str>,
    principal: Option<Principal>,
    grpc: bool,
    cost: Option<u32>,
}

impl Req {
    fn to(path: &'static str) -> Self {
        Self {
            path,
            peer: None,
            principal: None,
            grpc: false,
            cost: None,
        }
    }
    fn from(mut self, peer: &'static str) -> Self {
        self.peer = Some(peer);
        self
    }
    fn by(mut self, p: &Principal) -> Self {
        self.principal = Some(p.clone());
        self
    }
    fn build(self) -> (Request<Body>, SecurityContext) {
        let mut req = Request::builder().uri(self.path);
        if self.grpc {
            req = req.header("content-type", "application/grpc");
        }
        let mut req = req.body(Body::default()).expect("request");
        if let Some(peer) = self.peer {
            let addr: SocketAddr = peer.parse().expect("addr");
            req.extensions_mut().insert(PeerAddr(addr));
        }
        if let Some(c) = self.cost {
            req.extensions_mut().insert(RequestCost(c));
        }
        let ctx = SecurityContext::get_or_insert(
            &mut req,
            &nhi_guard_core::ClientAddrResolver::new(),
            &nhi_guard_core::SystemClock,
        );
        if let Some(p) = self.principal {
            ctx.set_principal(p);
        }
        (req, ctx)
    }
}

async fn send<S>(svc: &mut S, r: Req) -> (Response<GuardBody<Body>>, SecurityContext)
where
    S: Service<Request<Body>, Response = Response<GuardBody<Body>>, Error = Infallible>,
{
    let (req, ctx) = r.build();
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("infallible");
    (res, ctx)
}

async fn body_json(res: Response<GuardBody<Body>>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}

/// One member of an RFC 8941 list: `"name";key=int;key=int`.
#[derive(Debug, PartialEq, Eq)]
struct Member {
    name: String,
    params: Vec<(String, u64)>,
}

impl Member {
    fn param(&self, key: &str) -> u64 {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key} in {self:?}"))
            .1
    }
}

/// Parses an RFC 8941 list whose members are sf-strings with integer parameters,
/// strictly: anything else fails the test.
fn parse_sf_list(field: &str) -> Vec<Member> {
    let b = field.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        assert_eq!(b.get(i), Some(&b'"'), "member must be an sf-string in {field}");
        i += 1;
        let mut name = String::new();
        loop {
            match b.get(i) {
                Some(b'\\') => {
                    name.push(char::from(b[i + 1]));
                    i += 2;
                }
                Some(b'"') => {
                    i += 1;
                    break;
                }
                Some(&c) if (0x20..0x7f).contains(&c) => {
                    name.push(char::from(c));
                    i += 1;
                }
                _ => panic!("bad sf-string in {field}"),
            }
        }
        let mut params = Vec::new();
        while b.get(i) == Some(&b';') {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(|c| c.is_ascii_lowercase() || *c == b'-') {
                i += 1;
            }
            let key = field[start..i].to_owned();
            assert_eq!(b.get(i), Some(&b'='), "parameter needs a value in {field}");
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let value = field[start..i].parse().expect("integer parameter");
            params.push((key, value));
        }
        out.push(Member { name, params });
        if i == b.len() {
            return out;
        }
        assert_eq!(&field[i..i + 2], ", ", "members separated by comma in {field}");
        i += 2;
    }
}

fn fields(res: &Response<GuardBody<Body>>) -> (Vec<Member>, Vec<Member>) {
    let get = |n: &str| {
        res.headers()
            .get(n)
            .unwrap_or_else(|| panic!("missing {n}"))
            .to_str()
            .expect("ascii")
            .to_owned()
    };
    (
        parse_sf_list(&get("ratelimit-policy")),
        parse_sf_list(&get("ratelimit")),
    )
}

#[tokio::test]
async fn burst_then_steady_rate_with_headers_and_problem_body() {
    let clock = clock();
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock.clone()))
        .limit(Limit::per_address("per-ip", quota(2, 3)))
        .expect("limit")
        .layer(ok_service());

    for remaining in [2, 1, 0] {
        let (res, ctx) = send(&mut svc, Req::to("/orders").from("203.0.113.9:5000")).await;
        assert_eq!(res.status(), 200);
        let (policy, state) = fields(&res);
        assert_eq!(
            policy,
            vec![Member {
                name: "per-ip".into(),
                params: vec![("q".into(), 3), ("w".into(), 2)]
            }]
        );
        assert_eq!(state[0].param("r"), remaining);
        let rl = ctx.read(|s| s.rate_limit.clone()).expect("recorded");
        assert_eq!(
            (rl.policy.as_ref(), rl.limited, rl.remaining),
            ("per-ip", false, remaining)
        );
        assert_eq!(ctx.decision(), Decision::Allowed);
    }

    let (res, ctx) = send(&mut svc, Req::to("/orders").from("203.0.113.9:5000")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // 500 ms until the next request may pass: Retry-After rounds up to 1 s.
    assert_eq!(res.headers()["retry-after"], "1");
    let (_, state) = fields(&res);
    assert_eq!((state[0].param("r"), state[0].param("t")), (0, 1));
    match ctx.decision() {
        Decision::Denied(d) => assert_eq!((d.control, d.reason), (Control::RateLimit, "rate_limited")),
        other => panic!("expected a denial, got {other:?}"),
    }
    assert!(ctx.read(|s| s.rate_limit.as_ref().is_some_and(|o| o.limited)));
    let body = body_json(res).await;
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["per-ip"]));
    assert_eq!(body["retry_after"], 1);

    // Another address is unaffected.
    let (res, _) = send(&mut svc, Req::to("/orders").from("198.51.100.7:5000")).await;
    assert_eq!(res.status(), 200);

    // 499 ms later: still refused. At 500 ms: exactly one passes.
    clock.advance(Duration::from_millis(499));
    let (res, _) = send(&mut svc, Req::to("/orders").from("203.0.113.9:5000")).await;
    assert_eq!(res.status(), 429);
    clock.advance(Duration::from_millis(1));
    let (res, _) = send(&mut svc, Req::to("/orders").from("203.0.113.9:5000")).await;
    assert_eq!(res.status(), 200);
    let (res, _) = send(&mut svc, Req::to("/orders").from("203.0.113.9:5000")).await;
    assert_eq!(res.status(), 429);

    // A steady 2 per second passes indefinitely.
    for _ in 0..20 {
        clock.advance(Duration::from_millis(500));
        let (res, _) = send(&mut svc, Req::to("/orders").from("203.0.113.9:5000")).await;
        assert_eq!(res.status(), 200);
    }
}

#[tokio::test]
async fn retry_after_is_never_early() {
    let clock = clock();
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock.clone()))
        .limit(Limit::per_address("per-ip", quota(3, 1)))
        .expect("limit")
        .layer(ok_service());
    let addr = "192.0.2.1:1";
    for step_ms in [0u64, 7, 13, 101, 250, 333] {
        clock.advance(Duration::from_millis(step_ms));
        let (res, _) = send(&mut svc, Req::to("/").from(addr)).await;
        if res.status() == 429 {
            let secs: u64 = res.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("int");
            clock.advance(Duration::from_secs(secs));
            let (again, _) = send(&mut svc, Req::to("/").from(addr)).await;
            assert_eq!(again.status(), 200, "a client that waited Retry-After must pass");
        }
    }
}

#[tokio::test]
async fn tiers_decide_per_client_quotas() {
    let clock = clock();
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock.clone()))
        .limit(Limit::per_client("per-client"))
        .expect("limit")
        .layer(ok_service());
    let gold = principal(
        "gold-client",
        "gold",
        Tier {
            per_second: 100,
            burst: 5,
        },
    );
    let bronze = principal(
        "bronze-client",
        "bronze",
        Tier {
            per_second: 1,
            burst: 2,
        },
    );
    let mut passed = [0, 0];
    for _ in 0..10 {
        for (i, p) in [&gold, &bronze].into_iter().enumerate() {
            let (res, _) = send(&mut svc, Req::to("/").by(p)).await;
            passed[i] += usize::from(res.status() == 200);
        }
    }
    assert_eq!(passed, [5, 2]);
    // Requests without a verified principal are not limited by a per-client limit.
    let (res, ctx) = send(&mut svc, Req::to("/")).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("ratelimit").is_none());
    assert_eq!(ctx.decision(), Decision::Allowed);
}

#[tokio::test]
async fn registry_tiers_apply_live_and_principal_extension_is_read() {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
    let inventory = |burst| {
        Inventory::builder()
            .tier("standard", Tier { per_second: 1, burst })
            .client(
                ClientRecord::builder("svc", "o@example.com", "p", expires)
                    .tier("standard")
                    .build()
                    .expect("record"),
            )
            .build()
            .expect("inventory")
    };
    let registry = Arc::new(InMemoryRegistry::new(inventory(1)));
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .registry(registry.clone())
        .limit(Limit::per_client("per-client"))
        .expect("limit")
        .layer(ok_service());
    // The principal claims a generous tier, but the registry says 1.
    let p = principal(
        "svc",
        "standard",
        Tier {
            per_second: 1000,
            burst: 1000,
        },
    );
    let req = |p: &Principal| {
        let mut r = Request::new(Body::default());
        r.extensions_mut().insert(p.clone());
        r
    };
    let res = svc.ready().await.expect("ready").call(req(&p)).await.expect("ok");
    assert_eq!(res.status(), 200);
    let res = svc.ready().await.expect("ready").call(req(&p)).await.expect("ok");
    assert_eq!(res.status(), 429);
    registry.replace(inventory(3)).expect("no requirement registered");
    for _ in 0..2 {
        let res = svc.ready().await.expect("ready").call(req(&p)).await.expect("ok");
        assert_eq!(res.status(), 200);
    }
    let res = svc.ready().await.expect("ready").call(req(&p)).await.expect("ok");
    assert_eq!(res.status(), 429);
}

#[tokio::test]
async fn route_groups_from_a_shared_route_table() {
    use nhi_guard_core::route::{Route, Routes};
    use nhi_guard_ratelimit::RateGroup;
    let routes = Routes::builder()
        .route(Route::get("/exports/{day}").with(RateGroup::new("exports")))
        .route(Route::post("/exports").with(RateGroup::new("exports")))
        .route(Route::get("/orders/{id}"))
        .build()
        .expect("valid");
    let layer = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .routes(&routes)
        .expect("routes")
        .limit(Limit::per_client_route("per-client-route").route_quota("exports", quota(1, 1)))
        .expect("limit");
    let mut svc = layer.clone().layer(ok_service());
    let p = principal(
        "svc",
        "default",
        Tier {
            per_second: 10,
            burst: 2,
        },
    );
    // Two routes of one group share the key and the group's quota.
    let (res, _) = send(&mut svc, Req::to("/exports/2026-01-01").by(&p)).await;
    assert_eq!(res.status(), 200);
    let (req, _) = Req::to("/exports").by(&p).build();
    let (mut parts, body) = req.into_parts();
    parts.method = http::Method::POST;
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(Request::from_parts(parts, body))
        .await
        .expect("ok");
    assert_eq!(res.status(), 429);
    // A route without a group is its own, named by its template: every order id
    // shares one key at the tier's burst of 2.
    for (i, id) in ["/orders/1", "/orders/2", "/orders/3"].into_iter().enumerate() {
        let (res, _) = send(&mut svc, Req::to(id).by(&p)).await;
        assert_eq!(res.status() == 200, i < 2, "request {i}");
    }
    // The key does not depend on what another table matched first: the context
    // says `/{*any}`, the layer still finds `/orders/{id}` in its own table.
    let other = Routes::builder()
        .route(Route::any("/{*any}"))
        .build()
        .expect("valid");
    let (req, ctx) = Req::to("/orders/4").by(&p).build();
    other.resolve(req.method(), req.uri().path(), req.extensions());
    assert_eq!(ctx.route().as_deref(), Some("/{*any}"));
    let res = svc.ready().await.expect("ready").call(req).await.expect("ok");
    assert_eq!(res.status(), 429, "same key as /orders/1..3");
    // Groups come from one table or from prefixes, not both.
    let e = layer.route_group("x", "/x").expect_err("both");
    assert_eq!(e.kind(), nhi_guard_core::config::ConfigErrorKind::Conflict);
    let e = RateLimitLayer::new()
        .route_group("x", "/x")
        .expect("prefix")
        .routes(&routes)
        .expect_err("both");
    assert_eq!(e.kind(), nhi_guard_core::config::ConfigErrorKind::Conflict);
}

#[tokio::test]
async fn per_route_groups_and_overrides() {
    let clock = clock();
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock.clone()))
        .route_group("exports", "/exports")
        .expect("group")
        .route_group("orders", "/orders/")
        .expect("group")
        .limit(Limit::per_client_route("per-client-route").route_quota("exports", quota(1, 1)))
        .expect("limit")
        .layer(ok_service());
    let p = principal(
        "svc",
        "default",
        Tier {
            per_second: 10,
            burst: 3,
        },
    );
    // exports: 1 request; path parameters share the group's key.
    let (res, _) = send(&mut svc, Req::to("/exports/2026-01").by(&p)).await;
    assert_eq!(res.status(), 200);
    let (res, _) = send(&mut svc, Req::to("/exports/2026-02").by(&p)).await;
    assert_eq!(res.status(), 429);
    // /exportsfoo is not in the group: a segment boundary is required.
    let (res, _) = send(&mut svc, Req::to("/exportsfoo").by(&p)).await;
    assert_eq!(res.status(), 200);
    // orders: the tier's 3, independent of exports.
    for i in 0..4 {
        let (res, _) = send(&mut svc, Req::to("/orders/42").by(&p)).await;
        assert_eq!(res.status() == 200, i < 3, "request {i}");
    }
    let (res, _) = send(&mut svc, Req::to("/exports").by(&p)).await;
    let (policy, _) = fields(&res);
    assert_eq!((policy[0].param("q"), policy[0].param("w")), (1, 1));
}

#[tokio::test]
async fn several_limits_all_must_pass_and_refusals_spend_nothing() {
    let clock = clock();
    let store = Arc::new(InMemoryRateLimitStore::new());
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock.clone()))
        .in_memory_store(store.clone())
        .route_group("search", "/search")
        .expect("group")
        .limit(Limit::per_client("per-client").quota(quota(1, 10)))
        .expect("limit")
        .limit(Limit::per_client_route("per-client-route").route_quota("search", quota(1, 2)))
        .expect("limit")
        .layer(ok_service());
    let p = principal(
        "svc",
        "default",
        Tier {
            per_second: 1,
            burst: 100,
        },
    );
    for i in 0..20 {
        let (res, ctx) = send(&mut svc, Req::to("/search").by(&p)).await;
        assert_eq!(res.status() == 200, i < 2, "request {i}");
        if i >= 2 {
            let (policy, state) = fields(&res);
            let names: Vec<_> = policy.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, ["per-client", "per-client-route"]);
            // The per-client limit still shows 8 left: refusals spent nothing.
            assert_eq!(state[0].param("r"), 8);
            let body = body_json(res).await;
            assert_eq!(body["violated-policies"], serde_json::json!(["per-client-route"]));
            assert_eq!(
                ctx.read(|s| s.rate_limit.clone()).expect("rl").policy.as_ref(),
                "per-client-route"
            );
        }
    }
    // The other 8 of per-client are there for other routes.
    for i in 0..9 {
        let (res, _) = send(&mut svc, Req::to("/orders").by(&p)).await;
        assert_eq!(res.status() == 200, i < 8, "request {i}");
    }
}

#[tokio::test]
async fn request_cost_spends_several_units() {
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .limit(Limit::per_address("per-ip", quota(1, 10)).cost(2))
        .expect("limit")
        .layer(ok_service());
    let mut bulk = Req::to("/bulk").from("192.0.2.5:1");
    bulk.cost = Some(7);
    let (res, _) = send(&mut svc, bulk).await;
    assert_eq!(res.status(), 200);
    assert_eq!(fields(&res).1[0].param("r"), 3);
    // The limit's own cost (2) applies otherwise.
    let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.5:1")).await;
    assert_eq!(fields(&res).1[0].param("r"), 1);
    let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.5:1")).await;
    assert_eq!(res.status(), 429);
}

#[tokio::test]
async fn grpc_requests_get_resource_exhausted() {
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .limit(Limit::per_address("per-ip", quota(1, 1)))
        .expect("limit")
        .layer(ok_service());
    let mut r = Req::to("/pkg.Svc/Call").from("192.0.2.5:1");
    r.grpc = true;
    let (res, _) = send(&mut svc, r).await;
    assert_eq!(res.status(), 200);
    let mut r = Req::to("/pkg.Svc/Call").from("192.0.2.5:1");
    r.grpc = true;
    let (res, _) = send(&mut svc, r).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert!(res.headers().contains_key("ratelimit"));
}

#[tokio::test]
async fn shadow_mode_lets_requests_through_and_records() {
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .shadow(true)
        .limit(Limit::per_address("per-ip", quota(1, 1)))
        .expect("limit")
        .layer(ok_service());
    let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.5:1")).await;
    assert_eq!(res.status(), 200);
    let (res, ctx) = send(&mut svc, Req::to("/").from("192.0.2.5:1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(fields(&res).1[0].param("r"), 0);
    assert_eq!(ctx.decision(), Decision::Allowed);
    let shadow = ctx.read(|s| s.shadow_denials.clone());
    assert_eq!(shadow.len(), 1);
    assert_eq!(
        (shadow[0].control, shadow[0].status),
        (Control::RateLimit, StatusCode::TOO_MANY_REQUESTS)
    );
}

#[tokio::test]
async fn headers_on_allowed_can_be_turned_off_and_custom_keys_work() {
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .headers_on_allowed(false)
        .limit(Limit::custom("per-tenant", quota(1, 1), |parts, _ctx| {
            parts
                .headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }))
        .expect("limit")
        .layer(ok_service());
    let req = |tenant: &str| {
        Request::builder()
            .header("x-tenant", tenant)
            .body(Body::default())
            .expect("req")
    };
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req("a"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("ratelimit").is_none());
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req("a"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 429);
    assert!(
        res.headers().get("ratelimit").is_some(),
        "429 always carries the fields"
    );
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req("b"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
    // No tenant header: the limit does not apply.
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(Request::new(Body::default()))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
}

#[test]
fn invalid_configuration_fails_at_build_time_naming_the_field() {
    let q = quota(1, 1);
    let e = RateLimitLayer::new()
        .limit(Limit::per_address("dup", q))
        .and_then(|l| l.limit(Limit::per_address("dup", q)))
        .expect_err("invalid configuration");
    assert_eq!(e.field(), "limit.name");
    let e = RateLimitLayer::new()
        .limit(Limit::per_address("x", q).cost(0))
        .expect_err("invalid configuration");
    assert_eq!(e.field(), "limit.cost");
    let e = RateLimitLayer::new()
        .limit(Limit::per_address("bad\nname", q))
        .expect_err("invalid configuration");
    assert_eq!(e.field(), "limit.name");
    let e = RateLimitLayer::new()
        .route_group("g", "nope")
        .expect_err("invalid configuration");
    assert_eq!(e.field(), "route_group.path_prefix");
    let mut layer = Ok(RateLimitLayer::new());
    for i in 0..9 {
        layer = layer.and_then(|l| l.limit(Limit::per_address(&format!("l{i}"), q)));
    }
    assert_eq!(layer.expect_err("invalid configuration").field(), "limits");
}

#[test]
fn concurrent_requests_through_the_layer_admit_exactly_the_burst() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .expect("runtime");
    let svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .limit(Limit::per_address("per-ip", quota(1, 250)))
        .expect("limit")
        .layer(ok_service());
    let passed = rt.block_on(async move {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let (req, _) = Req::to("/").from("192.0.2.9:1").build();
                    svc.oneshot(req).await.expect("ok").status() == 200
                })
            })
            .collect();
        let mut passed = 0;
        for t in tasks {
            passed += usize::from(t.await.expect("task"));
        }
        passed
    });
    assert_eq!(passed, 250);
}

/// A shared store that is down.
#[derive(Debug)]
struct DownStore;

impl RateLimitStore for DownStore {
    fn check(&self, _checks: Arc<[RateLimitCheck]>, _mode: CheckMode) -> StoreFuture {
        Box::pin(async { Err(StoreError::new(StoreErrorKind::Unavailable, "down")) })
    }
}

#[tokio::test]
async fn shared_store_path_decides_like_the_local_one_and_fails_closed_with_503() {
    let clock = clock();
    let shared: Arc<dyn RateLimitStore> =
        Arc::new(InMemoryRateLimitStore::new().with_clock(Arc::new(clock.clone()) as SharedClock));
    let mut svc = RateLimitLayer::new()
        .shared_store(shared)
        .limit(Limit::per_address("per-ip", quota(1, 2)))
        .expect("limit")
        .layer(ok_service());
    for expected in [200, 200, 429] {
        let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.5:1")).await;
        assert_eq!(res.status(), expected);
    }
    clock.advance(Duration::from_secs(1));
    let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.5:1")).await;
    assert_eq!(res.status(), 200);

    let mut down = RateLimitLayer::new()
        .shared_store(Arc::new(DownStore))
        .limit(Limit::per_address("per-ip", quota(1, 2)))
        .expect("limit")
        .layer(ok_service());
    let (res, ctx) = send(&mut down, Req::to("/").from("192.0.2.5:1")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    match ctx.decision() {
        Decision::Denied(d) => assert_eq!(d.reason, "rate_limit_unavailable"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn nested_layers_merge_their_fields() {
    let inner = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .limit(Limit::per_client("per-client"))
        .expect("limit");
    let outer = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .limit(Limit::per_address("per-ip", quota(100, 100)))
        .expect("limit");
    let svc = outer.layer(inner.layer(ok_service()));
    let p = principal(
        "svc",
        "default",
        Tier {
            per_second: 10,
            burst: 20,
        },
    );
    let (req, _) = Req::to("/").from("192.0.2.5:1").by(&p).build();
    let res = svc.oneshot(req).await.expect("ok");
    let header = |n: &str| parse_sf_list(res.headers()[n].to_str().expect("ascii"));
    let (policy, state) = (header("ratelimit-policy"), header("ratelimit"));
    let names: Vec<_> = policy.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["per-client", "per-ip"]);
    assert_eq!((state[0].param("r"), state[1].param("r")), (19, 99));
}

#[tokio::test(start_paused = true)]
async fn follows_paused_tokio_time() {
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(nhi_guard_core::clock::TokioClock::new()))
        .limit(Limit::per_address("per-ip", quota(4, 2)))
        .expect("limit")
        .layer(ok_service());
    let statuses = |svc: &mut _| {
        let svc: &mut nhi_guard_ratelimit::RateLimitService<_> = svc;
        let (req, _) = Req::to("/").from("192.0.2.5:1").build();
        let mut svc = svc.clone();
        async move {
            svc.ready()
                .await
                .expect("ready")
                .call(req)
                .await
                .expect("ok")
                .status()
        }
    };
    assert_eq!(statuses(&mut svc).await, 200);
    assert_eq!(statuses(&mut svc).await, 200);
    assert_eq!(statuses(&mut svc).await, 429);
    tokio::time::advance(Duration::from_millis(249)).await;
    assert_eq!(statuses(&mut svc).await, 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(statuses(&mut svc).await, 200);
    assert_eq!(statuses(&mut svc).await, 429);
}

/// Stands in for identity behind an address limit: a `good` key (in `header`)
/// verifies as client `fleet`, any other key is refused with 401, and a request
/// without a key passes as anonymous.
fn verifying_identity(
    header: &'static str,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(move |req: Request<Body>| {
        let ctx = req
            .extensions()
            .get::<SecurityContext>()
            .cloned()
            .expect("context");
        let key = req.headers().get(header).map(|v| v.as_bytes().to_vec());
        async move {
            let mut res = Response::new(Body::from("ok"));
            match key.as_deref() {
                Some(b"good") => ctx.set_principal(principal(
                    "fleet",
                    "bulk",
                    Tier {
                        per_second: 1000,
                        burst: 2000,
                    },
                )),
                Some(_) => *res.status_mut() = StatusCode::UNAUTHORIZED,
                None => {}
            }
            Ok::<_, Infallible>(res)
        }
    })
}

async fn from_address<S>(svc: &mut S, key: Option<(&str, &str)>) -> StatusCode
where
    S: Service<Request<Body>, Response = Response<GuardBody<Body>>, Error = Infallible>,
{
    let mut req = Request::builder().uri("/orders");
    if let Some((name, value)) = key {
        req = req.header(name, value);
    }
    let mut req = req.body(Body::default()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr("203.0.113.50:4000".parse().expect("addr")));
    svc.ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("infallible")
        .status()
}

#[tokio::test]
async fn an_exempting_address_limit_never_refuses_a_verified_client() {
    let clock = clock();
    let local = RateLimitLayer::new();
    let shared = RateLimitLayer::new().shared_store(Arc::new(
        InMemoryRateLimitStore::new().with_clock(Arc::new(clock.clone()) as SharedClock),
    ));
    for (backend, layer) in [("local", local), ("shared", shared)] {
        let mut svc = layer
            .clock(Arc::new(clock.clone()))
            .limit(Limit::per_address("per-address", quota(1, 5)).exempt_verified())
            .expect("limit")
            .layer(verifying_identity("x-api-key"));
        // A NAT'd fleet far above the address quota: never refused, never counted.
        for i in 0..50 {
            let s = from_address(&mut svc, Some(("x-api-key", "good"))).await;
            assert_eq!(s, StatusCode::OK, "{backend}: verified request {i}");
        }
        // So anonymous traffic from that address still has its whole burst ...
        for i in 0..3 {
            assert_eq!(
                from_address(&mut svc, None).await,
                StatusCode::OK,
                "{backend}: anonymous {i}"
            );
        }
        // ... and bad credentials count against it once identity refused them,
        // without being refused by the address limit themselves.
        for i in 0..4 {
            let s = from_address(&mut svc, Some(("x-api-key", "guess"))).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{backend}: bad key {i}");
        }
        // Burst of 5 spent (3 anonymous + 2 failures; the rest found it spent):
        // anonymous requests are refused on arrival, verified ones still pass.
        assert_eq!(
            from_address(&mut svc, None).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{backend}"
        );
        assert_eq!(
            from_address(&mut svc, Some(("x-api-key", "good"))).await,
            StatusCode::OK,
            "{backend}"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            from_address(&mut svc, None).await,
            StatusCode::OK,
            "{backend}: recovered"
        );
        assert_eq!(
            from_address(&mut svc, None).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{backend}"
        );
        clock.advance(Duration::from_secs(10));
    }
}

#[tokio::test]
async fn an_exempting_address_limit_reads_the_configured_api_key_header() {
    let clock = clock();
    let build = |header: Option<&'static str>| {
        let mut layer = RateLimitLayer::new()
            .clock(Arc::new(clock.clone()))
            .limit(Limit::per_address("per-address", quota(1, 2)).exempt_verified())
            .expect("limit");
        if let Some(h) = header {
            layer = layer.api_key_header(http::HeaderName::from_static(h));
        }
        layer.layer(verifying_identity("x-partner-key"))
    };
    // Configured like identity: the fleet's keys are credentials.
    let mut svc = build(Some("x-partner-key"));
    for _ in 0..10 {
        assert_eq!(
            from_address(&mut svc, Some(("x-partner-key", "good"))).await,
            StatusCode::OK
        );
    }
    // Left at `x-api-key`, the same requests look anonymous and are refused.
    let mut svc = build(None);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            from_address(&mut svc, Some(("x-partner-key", "good")))
                .await
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
}

#[tokio::test]
async fn inside_identity_an_exempting_limit_skips_verified_clients() {
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .limit(Limit::per_address("per-address", quota(1, 1)).exempt_verified())
        .expect("limit")
        .layer(ok_service());
    let p = principal(
        "fleet",
        "bulk",
        Tier {
            per_second: 1000,
            burst: 2000,
        },
    );
    for _ in 0..5 {
        let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.9:1").by(&p)).await;
        assert_eq!(res.status(), 200);
    }
    let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.9:1")).await;
    assert_eq!(res.status(), 200);
    let (res, _) = send(&mut svc, Req::to("/").from("192.0.2.9:1")).await;
    assert_eq!(res.status(), 429);
}

#[test]
fn only_address_limits_exempt_verified_clients() {
    let err = RateLimitLayer::new()
        .limit(Limit::per_client("per-client").exempt_verified())
        .expect_err("per-client");
    assert_eq!(err.field(), "limit.exempt_verified");
}

#[tokio::test]
async fn ipv6_clients_share_one_address_key_per_64() {
    let mut svc = RateLimitLayer::new()
        .clock(Arc::new(clock()))
        .limit(Limit::per_address("per-address", quota(1, 2)))
        .expect("limit")
        .layer(ok_service());
    // Rotating addresses inside one /64 resets nothing.
    let mut statuses = Vec::new();
    for peer in [
        "[2001:db8:1:2::1]:1",
        "[2001:db8:1:2::2]:1",
        "[2001:db8:1:2:ffff::3]:1",
    ] {
        let (res, _) = send(&mut svc, Req::to("/").from(peer)).await;
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    // The next /64 is another key.
    let (res, _) = send(&mut svc, Req::to("/").from("[2001:db8:1:3::1]:1")).await;
    assert_eq!(res.status(), 200);
}
