//! The scope layer over plain HTTP services and axum routers: what a client sees
//! (status, headers, body) and what the security context records.

mod common;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use nhi_guard_core::address::ClientAddrResolver;
use nhi_guard_core::clock::SystemClock;
use nhi_guard_core::context::{Decision, ScopeOutcome};
use nhi_guard_core::{ClientId, Control, Denial, Principal, ScopeSet, SecurityContext};
use nhi_guard_scope::usage::InMemoryUsageStore;
use nhi_guard_scope::{Fallback, PathCheck, Policy, Require, ScopeLayer};
use serde_json::Value;
use tower::util::MapRequestLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

use common::{identify, principal};

fn set(s: &str) -> ScopeSet {
    ScopeSet::parse(s).expect("scopes")
}

fn orders_policy() -> Policy {
    Policy::builder()
        .get("/orders/{id}", Require::all_of("orders:read"))
        .get("/orders/export", Require::all_of("orders:read orders:export"))
        .post("/orders", Require::all_of("orders:write"))
        .any("/orders/*", Require::all_of("orders:admin"))
        .put(
            "/stock/{sku}",
            Require::all_of("inventory:read").and_any_of("inventory:write inventory:admin"),
        )
        .get("/reports/{name}", Require::any_of("reports:read admin"))
        .get("/whoami", Require::authenticated())
        .public(Method::GET, "/health")
        .build()
        .expect("policy")
}

/// Sends `req` through `layer` in front of a handler that answers 200 "ok", and
/// returns the response, its body and the request's context.
async fn send(layer: &ScopeLayer, mut req: Request<()>) -> (Response<()>, Value, SecurityContext) {
    let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &SystemClock);
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"\"ok\""),
        )))
    }));
    let res = svc.oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json body")
    };
    (Response::from_parts(parts, ()), json, ctx)
}

fn req(method: Method, path: &str, who: Option<&Principal>) -> Request<()> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .expect("request");
    if let Some(p) = who {
        req.extensions_mut().insert(p.clone());
    }
    req
}

fn www_authenticate(res: &Response<()>) -> &str {
    res.headers()
        .get("www-authenticate")
        .expect("challenge")
        .to_str()
        .expect("ascii")
}

#[tokio::test]
async fn allowed_requests_record_route_outcome_and_decision() {
    let layer = ScopeLayer::new(orders_policy());
    let p = principal("inventory-sync", "orders:read orders:write");
    let (res, body, ctx) = send(&layer, req(Method::GET, "/orders/42?x=1", Some(&p))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body, "ok");
    let s = ctx.snapshot();
    assert_eq!(s.route.as_deref(), Some("/orders/{id}"));
    assert_eq!(
        s.scopes,
        Some(ScopeOutcome {
            rule: Some("GET /orders/{id}".into()),
            required: set("orders:read"),
            granted: set("orders:read orders:write"),
            missing: ScopeSet::empty(),
        })
    );
    assert_eq!(s.decision, Decision::Allowed);
}

#[tokio::test]
async fn insufficient_scope_has_the_exact_rfc6750_challenge_and_names_missing_scopes() {
    let layer = ScopeLayer::new(orders_policy()).realm("orders-api");
    let p = principal("inventory-sync", "orders:read");
    let (res, body, ctx) = send(&layer, req(Method::GET, "/orders/export", Some(&p))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        www_authenticate(&res),
        r#"Bearer realm="orders-api", error="insufficient_scope", error_description="The access token lacks a required scope", scope="orders:export orders:read""#
    );
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(body["type"], "urn:nhi-guard:problem:insufficient-scope");
    assert_eq!(body["status"], 403);
    assert_eq!(
        body["required_scopes"],
        serde_json::json!(["orders:export", "orders:read"])
    );
    assert_eq!(body["missing_scopes"], serde_json::json!(["orders:export"]));
    assert_eq!(body["request_id"], ctx.request_id().to_string());
    let denial = res.extensions().get::<Denial>().expect("typed denial");
    assert_eq!(
        (denial.control(), denial.reason()),
        (Control::Scope, "insufficient_scope")
    );

    let s = ctx.snapshot();
    let outcome = s.scopes.expect("outcome");
    assert_eq!(outcome.missing, set("orders:export"));
    assert_eq!(outcome.granted, set("orders:read"));
    assert_eq!(outcome.rule.as_deref(), Some("GET /orders/export"));
    match s.decision {
        Decision::Denied(d) => assert_eq!(
            (d.control, d.reason, d.status.as_u16()),
            (Control::Scope, "insufficient_scope", 403)
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn most_specific_rule_decides() {
    let layer = ScopeLayer::new(orders_policy());
    let admin = principal("ops-console", "orders:admin");
    let reader = principal("inventory-sync", "orders:read");
    // `/orders/{id}` for GET, the wildcard for anything else below /orders.
    assert_eq!(
        send(&layer, req(Method::GET, "/orders/1", Some(&reader)))
            .await
            .0
            .status(),
        200
    );
    assert_eq!(
        send(&layer, req(Method::GET, "/orders/1", Some(&admin)))
            .await
            .0
            .status(),
        403
    );
    assert_eq!(
        send(&layer, req(Method::DELETE, "/orders/1", Some(&admin)))
            .await
            .0
            .status(),
        200
    );
    assert_eq!(
        send(&layer, req(Method::DELETE, "/orders/1", Some(&reader)))
            .await
            .0
            .status(),
        403
    );
    let (res, _, ctx) = send(&layer, req(Method::GET, "/orders/1/lines/2", Some(&admin))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.snapshot().route.as_deref(), Some("/orders/*"));
}

#[tokio::test]
async fn all_of_and_any_of() {
    let layer = ScopeLayer::new(orders_policy());
    let cases = [
        ("inventory:read inventory:write", Method::PUT, "/stock/a1", 200),
        ("inventory:read inventory:admin", Method::PUT, "/stock/a1", 200),
        ("inventory:read", Method::PUT, "/stock/a1", 403),
        ("inventory:write inventory:admin", Method::PUT, "/stock/a1", 403),
        ("reports:read", Method::GET, "/reports/q3", 200),
        ("admin", Method::GET, "/reports/q3", 200),
        ("orders:read", Method::GET, "/reports/q3", 403),
    ];
    for (scopes, method, path, status) in cases {
        let p = principal("c", scopes);
        let (res, body, _) = send(&layer, req(method.clone(), path, Some(&p))).await;
        assert_eq!(res.status(), status, "{scopes} {method} {path}");
        if status == 403 {
            assert_eq!(body["reason"], "insufficient_scope");
        }
    }
    // An unmet any_of lists all its alternatives as missing.
    let p = principal("c", "inventory:read");
    let (res, body, _) = send(&layer, req(Method::PUT, "/stock/a1", Some(&p))).await;
    assert_eq!(
        body["missing_scopes"],
        serde_json::json!(["inventory:admin", "inventory:write"])
    );
    assert!(www_authenticate(&res).ends_with(r#"scope="inventory:admin inventory:read inventory:write""#));
}

#[tokio::test]
async fn deny_by_default() {
    let layer = ScopeLayer::new(orders_policy());
    let p = principal("c", "orders:read orders:write orders:admin admin");
    let (res, body, ctx) = send(&layer, req(Method::GET, "/customers/1", Some(&p))).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get("www-authenticate").is_none());
    assert_eq!(body["reason"], "route_not_in_policy");
    assert!(ctx.snapshot().scopes.is_none());
    assert!(matches!(ctx.decision(), Decision::Denied(d) if d.reason == "route_not_in_policy"));

    // Without a principal it is 401, as for every protected route.
    let (res, body, _) = send(&layer, req(Method::GET, "/customers/1", None)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(www_authenticate(&res), r#"Bearer realm="api""#);
    assert_eq!(body["reason"], "credential_missing");
}

#[tokio::test]
async fn configurable_fallbacks() {
    let p = principal("c", "x");
    let authenticated = ScopeLayer::new(
        Policy::builder()
            .get("/a", Require::all_of("a"))
            .fallback(Fallback::Authenticated)
            .build()
            .expect("policy"),
    );
    assert_eq!(
        send(&authenticated, req(Method::GET, "/other", Some(&p)))
            .await
            .0
            .status(),
        200
    );
    assert_eq!(
        send(&authenticated, req(Method::GET, "/other", None))
            .await
            .0
            .status(),
        401
    );
    assert_eq!(
        send(&authenticated, req(Method::GET, "/a", Some(&p)))
            .await
            .0
            .status(),
        403
    );

    let allow = ScopeLayer::new(
        Policy::builder()
            .get("/a", Require::all_of("a"))
            .fallback(Fallback::Allow)
            .build()
            .expect("policy"),
    );
    let (res, _, ctx) = send(&allow, req(Method::GET, "/other", None)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.decision(), Decision::Allowed);
    assert_eq!(send(&allow, req(Method::GET, "/a", None)).await.0.status(), 401);
}

#[tokio::test]
async fn public_routes_and_authenticated_only() {
    let layer = ScopeLayer::new(orders_policy());
    let (res, _, ctx) = send(&layer, req(Method::GET, "/health", None)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.snapshot().route.as_deref(), Some("/health"));
    assert_eq!(ctx.decision(), Decision::Allowed);
    // Public for GET only.
    assert_eq!(
        send(&layer, req(Method::POST, "/health", None)).await.0.status(),
        401
    );
    // Authenticated-only: any principal, no principal is 401.
    let p = principal("c", "nothing");
    assert_eq!(
        send(&layer, req(Method::GET, "/whoami", Some(&p)))
            .await
            .0
            .status(),
        200
    );
    assert_eq!(
        send(&layer, req(Method::GET, "/whoami", None)).await.0.status(),
        401
    );
}

#[tokio::test]
async fn principal_may_come_from_the_context() {
    let layer = ScopeLayer::new(orders_policy());
    let mut r = req(Method::GET, "/orders/7", None);
    let ctx = SecurityContext::get_or_insert(&mut r, &ClientAddrResolver::new(), &SystemClock);
    ctx.set_principal(principal("c", "orders:read"));
    let (res, _, _) = send(&layer, r).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn grpc_requests_get_grpc_statuses() {
    let layer = ScopeLayer::new(
        Policy::builder()
            .grpc("/inventory.v1.Stock/Get", Require::all_of("inventory:read"))
            .build()
            .expect("policy"),
    );
    let grpc = |who: Option<&Principal>| {
        let mut r = req(Method::POST, "/inventory.v1.Stock/Get", who);
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().expect("hv"));
        r
    };
    let (res, body, _) = send(&layer, grpc(Some(&principal("c", "orders:read")))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "7");
    assert_eq!(body, Value::Null);
    let (res, _, _) = send(&layer, grpc(None)).await;
    assert_eq!(res.headers()["grpc-status"], "16");
    let (res, body, _) = send(&layer, grpc(Some(&principal("c", "inventory:read")))).await;
    assert!(res.headers().get("grpc-status").is_none());
    assert_eq!(body, "ok");
}

#[tokio::test]
async fn shadow_mode_records_and_lets_through() {
    let store = Arc::new(InMemoryUsageStore::new());
    let layer = ScopeLayer::new(orders_policy())
        .shadow(true)
        .usage_store(store.clone());
    let p = principal("inventory-sync", "orders:read");
    let (res, body, ctx) = send(&layer, req(Method::GET, "/orders/export", Some(&p))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body, "ok");
    let s = ctx.snapshot();
    assert_eq!(s.decision, Decision::Allowed);
    assert_eq!(s.shadow_denials.len(), 1);
    assert_eq!(
        (
            s.shadow_denials[0].control,
            s.shadow_denials[0].reason,
            s.shadow_denials[0].status.as_u16()
        ),
        (Control::Scope, "insufficient_scope", 403)
    );
    assert_eq!(s.scopes.expect("outcome").missing, set("orders:export"));
    let usage = store.usage_now(&ClientId::from("inventory-sync"));
    assert_eq!(usage.denied["orders:export"].count, 1);
    assert_eq!(usage.used["orders:read"].count, 1);

    // Unauthenticated and out-of-policy requests too.
    let (res, _, ctx) = send(&layer, req(Method::GET, "/nowhere", None)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.snapshot().shadow_denials[0].reason, "credential_missing");

    // Allowed requests record no shadow denial.
    let (_, _, ctx) = send(&layer, req(Method::GET, "/orders/1", Some(&p))).await;
    assert!(ctx.snapshot().shadow_denials.is_empty());
}

#[tokio::test]
async fn per_route_requirements_with_axum_route_layer() {
    let store = Arc::new(InMemoryUsageStore::new());
    let base = ScopeLayer::new(Policy::builder().build().expect("empty policy")).usage_store(store.clone());
    let admin = base.for_route(Require::all_of("admin")).expect("valid");
    let writes = ScopeLayer::require(Require::any_of("orders:write orders:admin").named("order-writes"))
        .expect("valid");

    let nested = Router::new()
        .route("/orders", post(|| async { "created" }))
        .route("/orders/{id}", post(|| async { "updated" }))
        .route_layer(writes);
    let app = Router::new()
        .route("/admin/stats", get(|| async { "stats" }).route_layer(admin))
        .route("/open", get(|| async { "open" }))
        .nest("/v1", nested)
        .layer(MapRequestLayer::new(identify));

    let call = |method: Method, path: &str, client: Option<&str>| {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(c) = client {
            b = b.header("x-test-client", c);
        }
        let app = app.clone();
        let req = b.body(axum::body::Body::empty()).expect("request");
        async move {
            let res = app.oneshot(req).await.expect("infallible");
            let status = res.status();
            let challenge = res
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            let body = res.into_body().collect().await.expect("body").to_bytes();
            (status, challenge, String::from_utf8_lossy(&body).into_owned())
        }
    };

    let (status, _, body) = call(Method::GET, "/admin/stats", Some("ops-console")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "stats"));
    let (status, challenge, body) = call(Method::GET, "/admin/stats", Some("inventory-sync")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        challenge.as_deref(),
        Some(
            r#"Bearer realm="api", error="insufficient_scope", error_description="The access token lacks a required scope", scope="admin""#
        )
    );
    assert!(body.contains(r#""missing_scopes":["admin"]"#), "{body}");
    assert_eq!(
        call(Method::GET, "/admin/stats", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Routes without a route layer are untouched.
    assert_eq!(call(Method::GET, "/open", None).await.0, StatusCode::OK);
    // The nested router's requirement applies to each of its routes.
    assert_eq!(
        call(Method::POST, "/v1/orders", Some("inventory-sync")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::POST, "/v1/orders/9", Some("inventory-sync")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::POST, "/v1/orders/9", Some("billing-export")).await.0,
        StatusCode::FORBIDDEN
    );
    // Unknown routes stay 404: a route layer only runs on matched routes.
    assert_eq!(
        call(Method::POST, "/v1/nothing", Some("billing-export")).await.0,
        StatusCode::NOT_FOUND
    );

    let usage = store.usage_now(&ClientId::from("inventory-sync"));
    assert_eq!(usage.denied["admin"].count, 1);
    assert_eq!(
        store.usage_now(&ClientId::from("ops-console")).used["admin"].count,
        1
    );
}

#[tokio::test]
async fn named_requirement_is_the_recorded_rule() {
    let layer = ScopeLayer::require(Require::all_of("a").named("alpha")).expect("valid");
    let (_, _, ctx) = send(&layer, req(Method::GET, "/x", Some(&principal("c", "a")))).await;
    let s = ctx.snapshot();
    assert_eq!(s.scopes.expect("outcome").rule.as_deref(), Some("alpha"));
    assert_eq!(s.route, None);
    assert!(ScopeLayer::require(Require::all_of("")).is_err());
}

#[tokio::test]
async fn poll_ready_passes_through_and_many_requests_reuse_one_service() {
    let layer = ScopeLayer::new(orders_policy());
    let mut svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    }));
    let p = principal("c", "orders:read");
    for i in 0..3 {
        let r = req(Method::GET, &format!("/orders/{i}"), Some(&p));
        let res = svc
            .ready()
            .await
            .expect("ready")
            .call(r)
            .await
            .expect("infallible");
        assert_eq!(res.status(), 200);
    }
}

/// Paths a server could read differently from the policy are refused before the
/// policy is consulted, with or without a principal, however many scopes it holds.
#[tokio::test]
async fn ambiguous_paths_are_refused_with_400_before_the_policy() {
    let layer = ScopeLayer::new(orders_policy()).realm("orders-api");
    let all = principal(
        "ops-console",
        "orders:read orders:write orders:admin orders:export reports:read admin",
    );
    let cases = [
        // Each of these matches a rule the principal passes when read raw.
        (
            "/orders/..%2Fexport",
            "The request path has an encoded slash ('%2F')",
        ),
        (
            "/orders/%2e%2E",
            "The request path percent-encodes a character that needs no encoding (such as '%2E'); send the character itself",
        ),
        (
            "/orders/1/../export",
            "The request path has a dot segment ('.' or '..'); send the path with dot segments removed",
        ),
        (
            "/orders/..;/export",
            "The request path has a dot segment ('.' or '..'); send the path with dot segments removed",
        ),
        ("/orders//export", "The request path has an empty segment ('//')"),
        ("//orders/1", "The request path has an empty segment ('//')"),
        (
            "/reports/a%5Cb",
            "The request path has an encoded backslash ('%5C')",
        ),
        (
            "/reports/%61",
            "The request path percent-encodes a character that needs no encoding (such as '%2E'); send the character itself",
        ),
        (
            "/reports/%zz",
            "The request path has a '%' that is not followed by two hex digits",
        ),
    ];
    for who in [Some(&all), None] {
        for (path, detail) in cases {
            let (res, body, ctx) = send(&layer, req(Method::GET, path, who)).await;
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            assert!(
                res.headers().get("www-authenticate").is_none(),
                "the credential is not at fault: {path}"
            );
            assert_eq!(body["type"], "urn:nhi-guard:problem:request-target-ambiguous");
            assert_eq!(body["title"], "Ambiguous request target");
            assert_eq!(body["status"], 400);
            assert_eq!(body["control"], "scope");
            assert_eq!(body["reason"], "request_target_ambiguous");
            assert_eq!(body["detail"], detail, "{path}");
            assert_eq!(body["request_id"], ctx.request_id().to_string());
            let denial = res.extensions().get::<Denial>().expect("typed denial");
            assert_eq!(
                (denial.control(), denial.reason()),
                (Control::Scope, nhi_guard_scope::service::REQUEST_TARGET_AMBIGUOUS)
            );
            let s = ctx.snapshot();
            match s.decision {
                Decision::Denied(d) => assert_eq!(
                    (d.control, d.reason, d.status.as_u16()),
                    (Control::Scope, "request_target_ambiguous", 400),
                    "{path}"
                ),
                other => panic!("{path}: unexpected {other:?}"),
            }
            assert!(s.route.is_none() && s.scopes.is_none(), "no rule judged {path}");
        }
    }

    // The same paths, normalised, are judged by the policy as usual.
    let (res, body, _) = send(&layer, req(Method::GET, "/orders/export", Some(&all))).await;
    assert_eq!((res.status(), body), (StatusCode::OK, Value::from("ok")));
}

#[tokio::test]
async fn ordinary_paths_pass_the_check() {
    let layer = ScopeLayer::new(orders_policy());
    let p = principal("c", "orders:read reports:read");
    for path in [
        "/orders/42",
        "/orders/42?next=/a/../b%2F",
        "/orders/sku-1.2_3~x",
        "/reports/q3%20summary",
        "/reports/caf%C3%A9",
        "/reports/.hidden",
        "/reports/a;v=1",
    ] {
        let (res, body, _) = send(&layer, req(Method::GET, path, Some(&p))).await;
        assert_eq!(
            (res.status(), body),
            (StatusCode::OK, Value::from("ok")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn ambiguous_grpc_paths_are_invalid_argument() {
    let layer = ScopeLayer::new(
        Policy::builder()
            .grpc_service("inventory.v1.Stock", Require::all_of("inventory:read"))
            .build()
            .expect("policy"),
    );
    let mut r = req(
        Method::POST,
        "/inventory.v1.Stock/%2e%2e",
        Some(&principal("c", "inventory:read")),
    );
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().expect("hv"));
    let (res, body, _) = send(&layer, r).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "3");
    assert_eq!(body, Value::Null);
}

#[tokio::test]
async fn the_path_check_can_be_relaxed_or_turned_off() {
    let p = principal("c", "orders:read reports:read");
    // Off: the policy judges the raw path, as before the check existed.
    let off = ScopeLayer::new(orders_policy()).path_check(PathCheck::Off);
    let (res, _, ctx) = send(&off, req(Method::GET, "/orders/..%2Fexport", Some(&p))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.snapshot().route.as_deref(), Some("/orders/{id}"));
    // Per-route layers take the setting of the layer they come from.
    let per_route = off.for_route(Require::all_of("orders:read")).expect("valid");
    let (res, _, _) = send(&per_route, req(Method::GET, "/x/%2e%2e", Some(&p))).await;
    assert_eq!(res.status(), 200);
    let strict = ScopeLayer::require(Require::all_of("orders:read")).expect("valid");
    let (res, _, _) = send(&strict, req(Method::GET, "/x/%2e%2e", Some(&p))).await;
    assert_eq!(res.status(), 400);

    // Encoded slashes allowed: they stay inside a segment for the policy; dot and
    // empty segments around them are still refused.
    let lenient = ScopeLayer::new(orders_policy()).path_check(PathCheck::AllowEncodedSlash);
    let (res, _, ctx) = send(&lenient, req(Method::GET, "/reports/2024%2Fq3", Some(&p))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ctx.snapshot().route.as_deref(), Some("/reports/{name}"));
    for path in ["/reports/..%2Fexport", "/reports/a%2F%2Fb", "/reports/%2e"] {
        let (res, body, _) = send(&lenient, req(Method::GET, path, Some(&p))).await;
        assert_eq!(res.status(), 400, "{path}");
        assert_eq!(body["reason"], "request_target_ambiguous");
    }
    assert!(format!("{lenient:?}").contains("AllowEncodedSlash"));
}

#[tokio::test]
async fn shadow_mode_records_an_ambiguous_path_and_judges_it_as_it_is() {
    let layer = ScopeLayer::new(orders_policy()).shadow(true);
    let p = principal("c", "orders:read");
    let (res, body, ctx) = send(&layer, req(Method::GET, "/orders/%2e%2E", Some(&p))).await;
    assert_eq!((res.status(), body), (StatusCode::OK, Value::from("ok")));
    let s = ctx.snapshot();
    assert_eq!(s.decision, Decision::Allowed);
    assert_eq!(s.shadow_denials.len(), 1);
    assert_eq!(
        (
            s.shadow_denials[0].control,
            s.shadow_denials[0].reason,
            s.shadow_denials[0].status.as_u16()
        ),
        (Control::Scope, "request_target_ambiguous", 400)
    );
    assert_eq!(s.route.as_deref(), Some("/orders/{id}"));
}
