//! One record per request, whatever happens inside: allowed, denied by each
//! control, handler error, panic, cancellation; the OCSF mapping; redaction;
//! sampling; overflow; flush on shutdown.
#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll};

use http::{Request, StatusCode};
use nhi_guard_audit::{AuditError, AuditLayer, AuditWriter, Overflow};
use nhi_guard_core::CredentialFingerprint;
use nhi_guard_core::address::PeerAddr;
use serde_json::Value;
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};

fn peer() -> PeerAddr {
    PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40_123)))
}

fn req(mode: &str) -> Request<String> {
    let mut r = request("GET", &format!("/orders/42?page=2&access_token={QUERY_SECRET}"))
        .header("authorization", format!("Bearer {VALID_TOKEN}"))
        .header("cookie", COOKIE)
        .header("user-agent", "inventory-sync/1.4")
        .header("x-test-mode", mode)
        .body(String::new())
        .unwrap();
    r.extensions_mut().insert(peer());
    r
}

async fn one(layer: AuditLayer, r: Request<String>) -> Result<http::Response<String>, HandlerFailed> {
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(handler::<String>)
        .oneshot(r)
        .await
}

/// Runs `r` through a fresh pipeline and returns the response and the one request
/// record.
async fn record_of(r: Request<String>) -> (Result<http::Response<String>, HandlerFailed>, Value) {
    let (w, h, lines) = memory(AuditWriter::builder());
    let res = one(AuditLayer::new(w), r).await;
    h.shutdown().await.unwrap();
    let mut reqs = lines.requests();
    assert_eq!(reqs.len(), 1, "exactly one record per request");
    (res, reqs.remove(0))
}

fn ext(v: &Value) -> &Value {
    &v["unmapped"]["nhi_guard"]
}

#[tokio::test]
async fn allowed_request_is_recorded_with_who_what_and_why() {
    let (res, v) = record_of(req("")).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    assert_eq!(v["class_uid"], 6003);
    assert_eq!(v["class_uid"], nhi_guard_audit::ocsf::CLASS_API_ACTIVITY);
    assert_eq!(v["class_name"], "API Activity");
    assert_eq!(v["category_uid"], 6);
    assert_eq!(v["category_uid"], nhi_guard_audit::ocsf::CATEGORY_APPLICATION);
    assert_eq!(v["category_name"], "Application Activity");
    let meta = &v["metadata"];
    assert_eq!(meta["product"]["name"], nhi_guard_audit::ocsf::PRODUCT_NAME);
    assert_eq!(
        meta["product"]["vendor_name"],
        nhi_guard_audit::ocsf::PRODUCT_NAME
    );
    assert_eq!(meta["product"]["version"], nhi_guard_audit::ocsf::PRODUCT_VERSION);
    // OCSF 1.3 API Activity includes no profile.
    assert!(meta.get("profiles").is_none());
    assert_eq!(meta["version"], nhi_guard_audit::ocsf::OCSF_VERSION);
    assert_eq!(meta["uid"], v["api"]["request"]["uid"]);
    assert_eq!(v["activity_id"], 2);
    assert_eq!(v["type_uid"], 600_302);
    assert_eq!(v["status_id"], 1);
    assert_eq!(v["severity_id"], 1);
    // Not in OCSF 1.3 API Activity (the Security Control profile's).
    assert!(v.get("action_id").is_none() && v.get("disposition_id").is_none());
    assert_eq!(v["api"]["operation"], "GET /orders/{id}");
    assert_eq!(v["http_request"]["url"]["path"], "/orders/{id}");
    assert!(v["http_request"]["url"].get("query_string").is_none());
    assert!(v["http_request"].get("http_headers").is_none());
    assert_eq!(v["api"]["response"]["code"], 200);
    assert_eq!(v["status_code"], "200");
    // Not in OCSF 1.3 API Activity.
    assert!(v.get("http_response").is_none());
    assert_eq!(v["src_endpoint"]["ip"], "192.0.2.7");
    assert_eq!(v["src_endpoint"]["port"], 40_123);
    assert_eq!(v["actor"]["user"]["uid"], "inventory-sync");
    assert_eq!(v["actor"]["user"]["type"], "service_account");
    assert_eq!(v["actor"]["idp"]["name"], "https://issuer.example.com");
    let fp = CredentialFingerprint::of(VALID_TOKEN.as_bytes()).to_string();
    assert_eq!(v["actor"]["user"]["credential_uid"], fp.as_str());
    assert_eq!(v["metadata"]["uid"], v["api"]["request"]["uid"]);
    assert_eq!(v["metadata"]["product"]["name"], "nhi-guard");
    let e = ext(&v);
    assert_eq!(e["decision"], "allowed");
    assert_eq!(e["completion"], "response");
    assert!(e.get("control").is_none());
    assert_eq!(e["client"]["owner"], "fulfilment-team@example.com");
    assert_eq!(e["client"]["tier"], "gold");
    assert_eq!(e["client"]["credential"]["type"], "jwt");
    assert_eq!(e["client"]["credential"]["kid"], "k1");
    assert_eq!(e["scopes"]["required"], serde_json::json!(["orders:read"]));
    assert_eq!(e["scopes"]["granted"], serde_json::json!(["orders:read"]));
    assert_eq!(e["scopes"]["missing"], serde_json::json!([]));
    assert_eq!(e["rate_limit"]["limited"], false);
    assert_eq!(e["rate_limit"]["remaining"], 19);
    assert_eq!(e["risk"]["score"], 10);
    assert_eq!(e["risk"]["signals"][0]["signal"], "new_network");
    assert_eq!(e["dropped_total"], 0);
}

#[tokio::test]
async fn identity_denials_are_recorded_with_the_fingerprint_only() {
    // Missing credential.
    let mut r = request("POST", "/orders")
        .header("x-test-mode", "")
        .body(String::new())
        .unwrap();
    r.extensions_mut().insert(peer());
    let (res, v) = record_of(r).await;
    assert_eq!(res.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(v["activity_id"], 1);
    assert_eq!(v["type_uid"], 600_301);
    assert_eq!(v["status_id"], 2);
    assert_eq!(v["severity_id"], 3);
    assert_eq!(v["status_code"], "401");
    assert_eq!(v["status_detail"], "credential_missing");
    assert_eq!(ext(&v)["decision"], "denied");
    assert_eq!(ext(&v)["control"], "identity");
    assert_eq!(ext(&v)["reason"], "credential_missing");
    assert_eq!(ext(&v)["denied_status"], 401);
    assert_eq!(v["actor"]["user"]["name"], "anonymous");

    // A bad token: no principal, but its fingerprint and the failure reason.
    let mut r = req("");
    r.headers_mut()
        .insert("authorization", format!("Bearer {BAD_TOKEN}").parse().unwrap());
    let (res, v) = record_of(r).await;
    assert_eq!(res.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ext(&v)["reason"], "token_invalid");
    assert_eq!(ext(&v)["identity_failure"], "token_invalid");
    assert!(ext(&v).get("client").is_none());
    let fp = CredentialFingerprint::of(BAD_TOKEN.as_bytes()).to_string();
    assert_eq!(v["actor"]["user"]["credential_uid"], fp.as_str());
    // OCSF's caption of type_id 0; the credential's kind is kept beside it.
    assert_eq!(v["actor"]["user"]["type"], "Unknown");
    assert_eq!(v["actor"]["user"]["type_id"], 0);
    assert_eq!(ext(&v)["credential_kind"], "service_account");
}

#[tokio::test]
async fn api_key_principal_shows_the_public_prefix_and_fingerprint() {
    let mut r = request("DELETE", "/orders/7")
        .header("x-api-key", API_KEY)
        .body(String::new())
        .unwrap();
    r.extensions_mut().insert(peer());
    let (res, v) = record_of(r).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    assert_eq!(v["activity_id"], 4);
    assert_eq!(ext(&v)["client"]["credential"]["type"], "api_key");
    assert_eq!(ext(&v)["client"]["credential"]["prefix"], "nhik_liv");
    let fp = CredentialFingerprint::of(API_KEY.as_bytes()).to_string();
    assert_eq!(v["actor"]["user"]["credential_uid"], fp.as_str());
}

#[tokio::test]
async fn workload_certificate_principal_shows_thumbprint_and_spiffe_id() {
    let r = request("PATCH", "/orders/7")
        .header("x-test-cert", "1")
        .body(String::new())
        .unwrap();
    let (res, v) = record_of(r).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    assert_eq!(v["activity_id"], 3);
    assert_eq!(v["actor"]["user"]["type"], "workload_certificate");
    let cred = &ext(&v)["client"]["credential"];
    assert_eq!(cred["type"], "certificate");
    assert_eq!(cred["thumbprint"], "q3R0aHVtYnByaW50");
    assert_eq!(cred["spiffe_id"], "spiffe://example.org/ns/prod/sa/sync");
    // No peer recorded by the server: a named unknown, never an empty endpoint.
    assert_eq!(v["src_endpoint"], serde_json::json!({ "name": "unknown" }));
    // The route template as the resource; no service name, no destination.
    assert_eq!(
        v["resources"],
        serde_json::json!([{ "name": "/orders/{id}", "type": "route" }])
    );
    assert!(v.get("dst_endpoint").is_none());
}

#[tokio::test]
async fn scope_rate_limit_and_risk_denials_name_their_control() {
    let (res, v) = record_of(req("scope")).await;
    assert_eq!(res.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(ext(&v)["control"], "scope");
    assert_eq!(ext(&v)["reason"], "insufficient_scope");
    assert_eq!(ext(&v)["scopes"]["missing"], serde_json::json!(["orders:write"]));
    assert_eq!(ext(&v)["scopes"]["rule"], "/orders/{id}");

    let (res, v) = record_of(req("rate")).await;
    assert_eq!(res.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ext(&v)["control"], "rate_limit");
    assert_eq!(ext(&v)["rate_limit"]["limited"], true);
    assert_eq!(ext(&v)["rate_limit"]["policy"], "per-client");
    assert_eq!(v["api"]["response"]["code"], 429);

    let (res, v) = record_of(req("risk")).await;
    assert_eq!(res.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(ext(&v)["control"], "risk");
    assert_eq!(ext(&v)["reason"], "risk_blocked");
    assert_eq!(ext(&v)["risk"]["score"], 85);
    assert_eq!(ext(&v)["risk"]["action"], "block");
}

#[tokio::test]
async fn shadow_denials_are_recorded_on_allowed_requests() {
    let (res, v) = record_of(req("shadow")).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    assert_eq!(ext(&v)["decision"], "allowed");
    assert_eq!(ext(&v)["shadow_denials"][0]["control"], "risk");
    assert_eq!(ext(&v)["shadow_denials"][0]["reason"], "risk_blocked");
}

#[tokio::test]
async fn a_denial_found_only_on_the_response_is_the_decision() {
    // A control that put its typed denial on the response without recording it.
    let (w, h, lines) = memory(AuditWriter::builder());
    let svc = ServiceBuilder::new()
        .layer(AuditLayer::new(w))
        .service_fn(|_r: Request<String>| async {
            let d = nhi_guard_core::Denial::forbidden(
                nhi_guard_core::context::Control::Custom("geo"),
                "geo_blocked",
                "no",
            );
            let mut res = http::Response::new(String::new());
            *res.status_mut() = StatusCode::FORBIDDEN;
            res.extensions_mut().insert(d);
            Ok::<_, HandlerFailed>(res)
        });
    svc.oneshot(request("GET", "/x").body(String::new()).unwrap())
        .await
        .unwrap();
    h.shutdown().await.unwrap();
    let v = &lines.requests()[0];
    assert_eq!(ext(v)["decision"], "denied");
    assert_eq!(ext(v)["control"], "geo");
    assert_eq!(ext(v)["reason"], "geo_blocked");
}

#[tokio::test]
async fn handler_error_is_recorded_as_a_failure_without_response() {
    let (res, v) = record_of(req("error")).await;
    assert!(res.is_err());
    assert_eq!(ext(&v)["completion"], "handler_error");
    assert_eq!(v["status_id"], 2);
    assert_eq!(v["status_detail"], "handler_error");
    assert!(v["api"]["response"].get("code").is_none());
    // The context was created, so the pending decision is "none".
    assert_eq!(ext(&v)["decision"], "none");
}

#[tokio::test]
async fn panicking_inner_future_is_recorded() {
    let (w, h, lines) = memory(AuditWriter::builder());
    let layer = AuditLayer::new(w);
    let joined = tokio::spawn(one(layer, req("panic"))).await;
    assert!(joined.unwrap_err().is_panic());
    h.shutdown().await.unwrap();
    let reqs = lines.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(ext(&reqs[0])["completion"], "panicked");
    assert_eq!(reqs[0]["severity_id"], 4);
    assert_eq!(reqs[0]["status_id"], 2);
    assert_eq!(reqs[0]["http_request"]["url"]["path"], "/orders/{id}");
}

#[tokio::test]
async fn panic_in_the_inner_call_is_recorded() {
    let (w, h, lines) = memory(AuditWriter::builder());
    #[derive(Clone)]
    struct PanicsInCall;
    impl Service<Request<String>> for PanicsInCall {
        type Response = http::Response<String>;
        type Error = HandlerFailed;
        type Future = std::future::Ready<Result<http::Response<String>, HandlerFailed>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerFailed>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<String>) -> Self::Future {
            panic!("call panicked on purpose")
        }
    }
    let mut svc = AuditLayer::new(w).layer_on(PanicsInCall);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(request("PUT", "/orders/1").body(String::new()).unwrap()));
    }));
    assert!(caught.is_err());
    h.shutdown().await.unwrap();
    let reqs = lines.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(ext(&reqs[0])["completion"], "panicked");
    assert_eq!(reqs[0]["activity_id"], 3);
}

trait LayerOn {
    fn layer_on<S>(self, s: S) -> nhi_guard_audit::Audit<S>;
}
impl LayerOn for AuditLayer {
    fn layer_on<S>(self, s: S) -> nhi_guard_audit::Audit<S> {
        tower::Layer::layer(&self, s)
    }
}

#[tokio::test]
async fn cancelled_response_future_is_recorded() {
    let (w, h, lines) = memory(AuditWriter::builder());
    let mut svc = ServiceBuilder::new()
        .layer(AuditLayer::new(w))
        .service_fn(handler::<String>);
    {
        let fut = svc.call(req("hang"));
        let mut fut = pin!(fut);
        let waker = futures_util::task::noop_waker();
        assert!(fut.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        // Dropped here: the client went away.
    }
    h.shutdown().await.unwrap();
    let reqs = lines.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(ext(&reqs[0])["completion"], "cancelled");
    assert_eq!(reqs[0]["status_detail"], "cancelled");
    assert!(reqs[0]["api"]["response"].get("code").is_none());
}

#[tokio::test]
async fn route_query_and_headers_follow_the_allow_lists() {
    let (w, h, lines) = memory(AuditWriter::builder());
    let layer = AuditLayer::new(w)
        .allow_query_param("page")
        .unwrap()
        .allow_header("user-agent")
        .unwrap();
    one(layer, req("")).await.unwrap();
    // No route known, no raw path fallback: no path at all.
    let (w2, h2, lines2) = memory(AuditWriter::builder());
    one(AuditLayer::new(w2), req("no-route")).await.unwrap();
    let (w3, h3, lines3) = memory(AuditWriter::builder());
    one(AuditLayer::new(w3).raw_path_fallback(true), req("no-route"))
        .await
        .unwrap();
    h.shutdown().await.unwrap();
    h2.shutdown().await.unwrap();
    h3.shutdown().await.unwrap();

    let v = &lines.requests()[0];
    assert_eq!(v["http_request"]["url"]["query_string"], "page=2");
    assert_eq!(
        v["http_request"]["http_headers"],
        serde_json::json!([{"name": "user-agent", "value": "inventory-sync/1.4"}])
    );
    let v = &lines2.requests()[0];
    // OCSF's URL needs a path: no URL at all.
    assert!(v["http_request"].get("url").is_none());
    assert_eq!(v["api"]["operation"], "GET");
    let v = &lines3.requests()[0];
    assert_eq!(v["http_request"]["url"]["path"], "/orders/42");
}

#[tokio::test]
async fn allow_listed_user_agent_and_forwarding_chain_fill_the_fields_siems_map() {
    let (w, h, lines) = memory(AuditWriter::builder());
    let layer = AuditLayer::new(w)
        .service_name("orders-api")
        .allow_header("user-agent")
        .unwrap()
        .allow_header("x-forwarded-for")
        .unwrap();
    let mut r = req("");
    r.headers_mut().insert(
        "x-forwarded-for",
        "203.0.113.7, not-an-ip, 10.0.0.2".parse().unwrap(),
    );
    one(layer, r).await.unwrap();
    // Not allow-listed: not captured, so not mapped either.
    let (w2, h2, lines2) = memory(AuditWriter::builder());
    let mut r = req("");
    r.headers_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    one(AuditLayer::new(w2), r).await.unwrap();
    h.shutdown().await.unwrap();
    h2.shutdown().await.unwrap();

    let v = &lines.requests()[0];
    assert_eq!(v["http_request"]["user_agent"], "inventory-sync/1.4");
    assert_eq!(
        v["http_request"]["x_forwarded_for"],
        serde_json::json!(["203.0.113.7", "10.0.0.2"])
    );
    assert_eq!(v["dst_endpoint"], serde_json::json!({ "svc_name": "orders-api" }));
    let v = &lines2.requests()[0];
    assert!(v["http_request"].get("user_agent").is_none());
    assert!(v["http_request"].get("x_forwarded_for").is_none());
}

#[tokio::test]
async fn redaction_scan_finds_no_secret_anywhere() {
    // Secrets in every place a request can carry them; the sink checks each record
    // (as it does in every test) and so does this test, over the raw lines.
    let (w, h, lines) = memory(AuditWriter::builder());
    let layer = AuditLayer::new(w)
        .allow_query_param("page")
        .unwrap()
        .allow_header("user-agent")
        .unwrap()
        .raw_path_fallback(true);
    for mode in ["", "scope", "rate", "risk", "error", "shadow", "no-route"] {
        let mut r = req(mode);
        r.headers_mut().insert("x-api-key", API_KEY.parse().unwrap());
        r.headers_mut()
            .insert("proxy-authorization", BASIC.parse().unwrap());
        let _ = one(layer.clone(), r).await;
    }
    let mut r = req("");
    r.headers_mut()
        .insert("authorization", format!("Bearer {BAD_TOKEN}").parse().unwrap());
    let _ = one(layer.clone(), r).await;
    h.shutdown().await.unwrap();
    let text = lines.text();
    assert_eq!(lines.requests().len(), 8);
    for line in &text {
        for s in SECRETS {
            assert!(!line.contains(s), "{s} leaked");
        }
    }
    // The fingerprint is there instead.
    let fp = CredentialFingerprint::of(VALID_TOKEN.as_bytes()).to_string();
    assert!(text.iter().any(|l| l.contains(&fp)));
}

#[tokio::test]
async fn sampling_never_drops_denials_and_counts_what_it_leaves_out() {
    let (w, h, lines) = memory(AuditWriter::builder());
    let layer = AuditLayer::new(w).sample_allowed(0.0).unwrap();
    for _ in 0..10 {
        one(layer.clone(), req("")).await.unwrap();
    }
    for mode in ["scope", "rate", "risk", "error", "shadow"] {
        let _ = one(layer.clone(), req(mode)).await;
    }
    let stats = h.shutdown().await.unwrap();
    assert_eq!(stats.sampled_out, 10);
    let reqs = lines.requests();
    assert_eq!(reqs.len(), 5);
    let last = lines.all().pop().unwrap();
    assert_eq!(last["unmapped"]["chain"]["sampled_out_total"], 10);
}

#[tokio::test]
async fn drop_policy_counts_exactly_what_it_drops_and_reports_it() {
    let gate = Gate::closed();
    let (w, h, lines) = gated(
        AuditWriter::builder()
            .capacity(4)
            .unwrap()
            .overflow(Overflow::Drop),
        gate.clone(),
    );
    let layer = AuditLayer::new(w);
    // The first record stalls the writer in the sink...
    one(layer.clone(), req("")).await.unwrap();
    tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_entered()
    })
    .await
    .unwrap();
    // ...4 fill the queue, 7 more are dropped; no request waits.
    for _ in 0..11 {
        one(layer.clone(), req("")).await.unwrap();
    }
    assert_eq!(h.stats().dropped, 7);
    gate.open();
    let stats = h.shutdown().await.unwrap();
    assert_eq!((stats.enqueued, stats.written, stats.dropped), (5, 5, 7));
    let reqs = lines.requests();
    assert_eq!(reqs.len(), 5);
    // The records written after the drops report them, and so does the checkpoint.
    assert_eq!(reqs[0]["unmapped"]["nhi_guard"]["dropped_total"], 0);
    assert_eq!(reqs[4]["unmapped"]["nhi_guard"]["dropped_total"], 7);
    assert_eq!(
        lines.all().pop().unwrap()["unmapped"]["chain"]["dropped_total"],
        7
    );
}

#[tokio::test]
async fn backpressure_policy_makes_the_response_wait_and_loses_nothing() {
    let gate = Gate::closed();
    let (w, h, lines) = gated(AuditWriter::builder().capacity(2).unwrap(), gate.clone());
    let layer = AuditLayer::new(w);
    one(layer.clone(), req("")).await.unwrap();
    tokio::task::spawn_blocking({
        let gate = gate.clone();
        move || gate.wait_entered()
    })
    .await
    .unwrap();
    one(layer.clone(), req("")).await.unwrap();
    one(layer.clone(), req("")).await.unwrap();
    // The queue is full: the next response waits for room.
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(handler::<String>);
    let mut waiting = Box::pin(svc.oneshot(req("")));
    let waker = futures_util::task::noop_waker();
    assert!(
        waiting
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert!(
        waiting
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    // A cancelled request while the queue is full: its record is handed to a task.
    let svc2 = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(handler::<String>);
    {
        let mut cancelled = Box::pin(svc2.oneshot(req("hang")));
        assert!(
            cancelled
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
    }
    assert_eq!(h.stats().dropped, 0);
    gate.open();
    assert_eq!(waiting.await.unwrap().status(), StatusCode::OK);
    // Let the task holding the cancelled request's record get its room.
    while h.stats().enqueued < 5 {
        tokio::task::yield_now().await;
    }
    let stats = h.shutdown().await.unwrap();
    assert_eq!(
        (stats.written, stats.dropped, stats.lost_after_shutdown),
        (5, 0, 0)
    );
    let reqs = lines.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(
        reqs.iter()
            .filter(|r| r["unmapped"]["nhi_guard"]["completion"] == "cancelled")
            .count(),
        1
    );
}

#[tokio::test]
async fn shutdown_returns_only_when_the_file_has_every_record() {
    let dir = tmp_dir("shutdown");
    let path = dir.join("audit.jsonl");
    let file = nhi_guard_audit::JsonLinesFile::open(&path).unwrap();
    let (w, h) = AuditWriter::builder()
        .capacity(1024)
        .unwrap()
        .checkpoint_every(100)
        .unwrap()
        .spawn(file)
        .unwrap();
    let layer = AuditLayer::new(w);
    for i in 0..500 {
        let mode = if i % 10 == 0 { "scope" } else { "" };
        one(layer.clone(), req(mode)).await.unwrap();
    }
    let stats = h.shutdown().await.unwrap();
    assert_eq!(stats.written, 500);
    // Read right away: everything is there, and sealed.
    let records = scan_file(&path);
    assert_eq!(records.iter().filter(|r| r["class_uid"] == 6003).count(), 500);
    let report = nhi_guard_audit::verify_file(&path).unwrap();
    assert!(report.is_sealed(), "{report}");
    assert_eq!(report.requests, 500);
    assert_eq!(report.checkpoints, 6); // 5 periodic + the final one
    // After shutdown: counted, not silently lost; a second shutdown says so.
    one(layer.clone(), req("")).await.unwrap();
    assert_eq!(h.stats().lost_after_shutdown, 1);
    assert_eq!(h.shutdown().await, Err(AuditError::WriterGone));
    assert_eq!(h.flush().await, Err(AuditError::WriterGone));
}

#[tokio::test]
async fn flush_and_checkpoint_on_demand() {
    let (w, h, lines) = memory(AuditWriter::builder());
    let layer = AuditLayer::new(w);
    one(layer.clone(), req("")).await.unwrap();
    let stats = h.flush().await.unwrap();
    assert_eq!(stats.written, 1);
    assert_eq!(lines.requests().len(), 1);
    let stats = h.checkpoint().await.unwrap();
    assert_eq!(stats.checkpoints, 1);
    let last = lines.all().pop().unwrap();
    assert_eq!(last["unmapped"]["chain"]["kind"], "checkpoint");
    assert_eq!(last["unmapped"]["chain"]["final"], false);
    assert_eq!(last["unmapped"]["chain"]["requests"], 1);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn channel_and_tracing_sinks_deliver_every_record() {
    let (sink, mut rx) = nhi_guard_audit::ChannelSink::new(16).unwrap();
    let (w, h) = AuditWriter::builder().spawn(sink).unwrap();
    one(AuditLayer::new(w), req("scope")).await.unwrap();
    h.shutdown().await.unwrap();
    let mut kinds = Vec::new();
    while let Some(e) = rx.recv().await {
        support::check_line(&e.json);
        kinds.push((e.kind.as_str(), e.seq, e.request_id.is_some()));
    }
    assert_eq!(
        kinds,
        vec![
            ("chain_start", 0, false),
            ("request", 1, true),
            ("checkpoint", 2, false)
        ]
    );

    // Tracing: stable field names on the event.
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>);
    struct Visit<'a>(&'a mut Vec<(String, String)>);
    impl tracing::field::Visit for Visit<'_> {
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            self.0.push((f.name().to_owned(), format!("{v:?}")));
        }
        fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
            self.0.push((f.name().to_owned(), v.to_owned()));
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Fields {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if e.metadata().target() == "nhi_guard::audit" {
                let mut out = Vec::new();
                e.record(&mut Visit(&mut out));
                self.0.lock().unwrap().extend(out);
            }
        }
    }
    let fields = Fields::default();
    let subscriber = tracing_subscriber::registry().with(fields.clone());
    let dispatch = tracing::Dispatch::new(subscriber);
    // The writer thread emits: make the subscriber global for it.
    let _ = tracing::dispatcher::set_global_default(dispatch);
    let (w, h) = AuditWriter::builder()
        .spawn(nhi_guard_audit::TracingSink::new())
        .unwrap();
    one(AuditLayer::new(w), req("rate")).await.unwrap();
    h.shutdown().await.unwrap();
    let got = fields.0.lock().unwrap().clone();
    let get = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("decision").as_deref(), Some("denied"));
    assert_eq!(get("control").as_deref(), Some("rate_limit"));
    assert_eq!(get("reason").as_deref(), Some("rate_limited"));
    assert_eq!(get("status").as_deref(), Some("429"));
    assert_eq!(get("route").as_deref(), Some("/orders/{id}"));
    assert_eq!(get("client_id").as_deref(), Some("inventory-sync"));
    assert!(get("ocsf").is_some());
    for (_, v) in &got {
        assert_no_secret(v);
    }
}

#[tokio::test]
async fn record_times_come_from_the_configured_clocks() {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use nhi_guard_core::clock::ManualClock;

    let at = UNIX_EPOCH + Duration::from_millis(1_790_000_000_123);
    let clock = ManualClock::at(at);
    let (w, h, lines) = memory(AuditWriter::builder().clock(Arc::new(clock.clone())));
    let layer = AuditLayer::new(w).clock(Arc::new(clock.clone()));
    one(layer.clone(), req("")).await.unwrap();
    clock.advance(Duration::from_secs(90));
    one(layer, req("")).await.unwrap();
    h.shutdown().await.unwrap();
    let all = lines.all();
    let times: Vec<u64> = all.iter().map(|v| v["time"].as_u64().unwrap()).collect();
    // chain start, request, request (90 s later), final checkpoint
    assert_eq!(
        times,
        vec![
            1_790_000_000_123,
            1_790_000_000_123,
            1_790_000_090_123,
            1_790_000_090_123
        ]
    );
}

#[tokio::test]
async fn a_quiet_log_gets_a_checkpoint_when_the_interval_passes() {
    use std::sync::Arc;
    use std::time::Duration;

    use nhi_guard_core::clock::ManualClock;

    let clock = ManualClock::now();
    let (w, h, lines) = memory(
        AuditWriter::builder()
            .clock(Arc::new(clock.clone()))
            .checkpoint_interval(Duration::from_secs(60))
            .unwrap(),
    );
    let checkpoints = |lines: &Lines| {
        lines
            .all()
            .iter()
            .filter(|v| v["unmapped"]["chain"]["kind"] == "checkpoint")
            .count()
    };
    let layer = AuditLayer::new(w);
    one(layer.clone(), req("")).await.unwrap();
    h.flush().await.unwrap();
    clock.advance(Duration::from_secs(59));
    h.flush().await.unwrap();
    assert_eq!(checkpoints(&lines), 0);
    clock.advance(Duration::from_secs(1));
    h.flush().await.unwrap();
    assert_eq!(checkpoints(&lines), 1);
    // Nothing new since: no further checkpoint however long it stays quiet.
    clock.advance(Duration::from_secs(600));
    h.flush().await.unwrap();
    assert_eq!(checkpoints(&lines), 1);
    let last = lines.all().pop().unwrap();
    assert_eq!(last["unmapped"]["chain"]["requests"], 1);
    assert_eq!(last["unmapped"]["chain"]["final"], false);
    h.shutdown().await.unwrap();
    assert_eq!(
        AuditWriter::builder()
            .checkpoint_interval(Duration::ZERO)
            .unwrap_err()
            .field(),
        "checkpoint_interval"
    );
}
