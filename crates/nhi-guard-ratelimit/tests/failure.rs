//! The failure-only limit, outside a stand-in identity service that records what a
//! real identity layer records.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::context::{Control, Decision};
use nhi_guard_core::{CredentialFingerprint, Denial, SecurityContext};
use nhi_guard_ratelimit::store::Quota;
use nhi_guard_ratelimit::{AuthFailureLimitLayer, FAILURES_BY_ADDRESS, FAILURES_BY_CREDENTIAL};
use tower::{Layer, Service, ServiceExt, service_fn};

type Body = Full<Bytes>;

/// Accepts `Bearer good-*` tokens, refuses the others with 401 and records the
/// failure like the identity layer does.
fn identity(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let ctx = req
            .extensions()
            .get::<SecurityContext>()
            .cloned()
            .expect("context");
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_owned();
        async move {
            let mut res = Response::new(Body::from("ok"));
            if token.starts_with("good-") {
                ctx.allow();
            } else {
                let d = Denial::invalid_token(Control::Identity, "token_invalid", "bad token");
                ctx.update(|s| {
                    s.identity_failure = Some("token_invalid");
                    s.credential_fingerprint = Some(CredentialFingerprint::of(token.as_bytes()));
                });
                ctx.deny(&d);
                *res.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, Infallible>(res)
        }
    })
}

fn req(peer: &str, token: &str) -> Request<Body> {
    let mut r = Request::builder()
        .header("authorization", format!("Bearer {token}"))
        .body(Body::default())
        .expect("request");
    r.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().expect("addr")));
    r
}

fn layer(clock: &ManualClock) -> AuthFailureLimitLayer {
    // Three failures, then one more per minute.
    AuthFailureLimitLayer::new(Quota::per_minute(1).and_then(|q| q.with_burst(3)).expect("quota"))
        .clock(Arc::new(clock.clone()))
}

#[tokio::test]
async fn failures_from_one_address_block_it_and_successes_never_count() {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&clock).layer(identity(calls.clone()));

    // Good traffic never spends the failure quota.
    for i in 0..50 {
        let res = svc
            .clone()
            .oneshot(req("192.0.2.1:1", &format!("good-{i}")))
            .await
            .expect("ok");
        assert_eq!(res.status(), 200);
    }
    // Three different bad tokens: each reaches identity and gets its 401.
    for i in 0..3 {
        let res = svc
            .clone()
            .oneshot(req("192.0.2.1:1", &format!("stuffed-{i}")))
            .await
            .expect("ok");
        assert_eq!(res.status(), 401);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 53);
    // Now the address is blocked, whatever it presents, before identity runs.
    let mut blocked = req("192.0.2.1:1", "good-again");
    let ctx = SecurityContext::get_or_insert(
        &mut blocked,
        &nhi_guard_core::ClientAddrResolver::new(),
        &nhi_guard_core::SystemClock,
    );
    let res = svc.clone().oneshot(blocked).await.expect("ok");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(Ordering::SeqCst), 53, "identity never saw it");
    assert_eq!(res.headers()["retry-after"], "60");
    assert_eq!(
        res.headers()["ratelimit-policy"],
        format!("\"{FAILURES_BY_ADDRESS}\";q=3;w=180").as_str()
    );
    match ctx.decision() {
        Decision::Denied(d) => {
            assert_eq!(
                (d.control, d.reason),
                (Control::RateLimit, "too_many_failed_authentications")
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.expect("body").to_bytes()).expect("json");
    assert_eq!(
        body["violated-policies"],
        serde_json::json!([FAILURES_BY_ADDRESS])
    );

    // Other addresses are unaffected.
    let res = svc
        .clone()
        .oneshot(req("192.0.2.2:1", "good-x"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);

    // After 60 s one more attempt is allowed; a good one passes and spends nothing.
    clock.advance(Duration::from_secs(59));
    let res = svc
        .clone()
        .oneshot(req("192.0.2.1:1", "good-early"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 429);
    clock.advance(Duration::from_secs(1));
    let res = svc
        .clone()
        .oneshot(req("192.0.2.1:1", "good-y"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
    let res = svc
        .clone()
        .oneshot(req("192.0.2.1:1", "good-z"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
    let res = svc.clone().oneshot(req("192.0.2.1:1", "bad")).await.expect("ok");
    assert_eq!(res.status(), 401);
    let res = svc
        .clone()
        .oneshot(req("192.0.2.1:1", "good-w"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 429);
}

#[tokio::test]
async fn one_credential_tried_from_many_addresses_is_blocked_by_fingerprint() {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&clock).by_address(false).layer(identity(calls.clone()));
    for i in 0..3 {
        let res = svc
            .clone()
            .oneshot(req(&format!("198.51.100.{i}:1"), "leaked"))
            .await
            .expect("ok");
        assert_eq!(res.status(), 401);
    }
    let res = svc
        .clone()
        .oneshot(req("198.51.100.99:1", "leaked"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers()["ratelimit-policy"],
        format!("\"{FAILURES_BY_CREDENTIAL}\";q=3;w=180").as_str()
    );
    // Other credentials from those addresses still reach identity.
    let res = svc
        .clone()
        .oneshot(req("198.51.100.0:1", "good-1"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// Refuses every key in `x-partner-key` and records the failure under the key's
/// fingerprint, as identity configured with `api_key_header("x-partner-key")` does.
fn partner_key_identity(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let ctx = req
            .extensions()
            .get::<SecurityContext>()
            .cloned()
            .expect("context");
        let key = req.headers().get("x-partner-key").map(|v| v.as_bytes().to_vec());
        async move {
            let d = Denial::invalid_token(Control::Identity, "api_key_unknown", "unknown key");
            ctx.update(|s| {
                s.identity_failure = Some("api_key_unknown");
                s.credential_fingerprint = key.as_deref().map(CredentialFingerprint::of);
            });
            ctx.deny(&d);
            let mut res = Response::new(Body::from("no"));
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            Ok::<_, Infallible>(res)
        }
    })
}

#[tokio::test]
async fn keys_in_the_configured_api_key_header_are_blocked_before_identity() {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let send = |svc: &_, peer: String| {
        let mut r = Request::builder()
            .header("x-partner-key", "nhik_guessed")
            .body(Body::default())
            .expect("request");
        r.extensions_mut()
            .insert(PeerAddr(peer.parse::<SocketAddr>().expect("addr")));
        tower::util::Oneshot::new(Clone::clone(svc), r)
    };
    for (configured, expected) in [(true, 429), (false, 401)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut limit = layer(&clock).by_address(false);
        if configured {
            limit = limit.api_key_header(http::HeaderName::from_static("x-partner-key"));
        }
        let svc = limit.layer(partner_key_identity(calls.clone()));
        for i in 0..3 {
            let res = send(&svc, format!("198.51.100.{i}:1")).await.expect("ok");
            assert_eq!(res.status(), 401);
        }
        // A fourth address with the same key: refused before identity only when
        // the limit reads the header identity reads.
        let res = send(&svc, "198.51.100.99:1".into()).await.expect("ok");
        assert_eq!(res.status(), expected, "configured: {configured}");
        assert_eq!(calls.load(Ordering::SeqCst), if configured { 3 } else { 4 });
    }
}

#[tokio::test]
async fn shadow_mode_only_records() {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&clock).shadow(true).layer(identity(calls.clone()));
    for _ in 0..3 {
        svc.clone().oneshot(req("192.0.2.1:1", "bad")).await.expect("ok");
    }
    let mut r = req("192.0.2.1:1", "good-1");
    let ctx = SecurityContext::get_or_insert(
        &mut r,
        &nhi_guard_core::ClientAddrResolver::new(),
        &nhi_guard_core::SystemClock,
    );
    let res = svc.clone().oneshot(r).await.expect("ok");
    assert_eq!(res.status(), 200);
    let shadow = ctx.read(|s| s.shadow_denials.clone());
    assert_eq!(shadow.len(), 1);
    assert_eq!(shadow[0].reason, "too_many_failed_authentications");
}

#[tokio::test]
async fn failures_from_rotating_ipv6_addresses_count_against_their_64() {
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer(&clock).by_credential(false).layer(identity(calls.clone()));
    // A new address of the same /64 for every guess.
    for i in 1..=3 {
        let res = svc
            .clone()
            .oneshot(req(&format!("[2001:db8:77:1::{i}]:1"), &format!("guess-{i}")))
            .await
            .expect("ok");
        assert_eq!(res.status(), 401);
    }
    let res = svc
        .clone()
        .oneshot(req("[2001:db8:77:1:ffff::9]:1", "guess-4"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 429, "the /64 spent its failures");
    // The neighbouring /64 is another key.
    let res = svc
        .clone()
        .oneshot(req("[2001:db8:77:2::1]:1", "good-1"))
        .await
        .expect("ok");
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}
