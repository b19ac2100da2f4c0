//! The shared security context travels through a stack of independent layers: the
//! outermost creates it, inner ones find and record into the same one, and the
//! outer layer reads the final state after the inner service returned, also when
//! an inner layer rejected the request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use nhi_guard::core::address::{ClientAddrResolver, PeerAddr};
use nhi_guard::core::body::GuardBody;
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::context::{ContextState, Decision, RequestId};
use nhi_guard::core::denial::{DefaultRenderer, Protocol, respond};
use nhi_guard::core::future::ResponseFuture;
use nhi_guard::core::{
    ClientRecord, Control, CredentialInfo, Denial, Principal, ScopeSet, SecurityContext, Tier,
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Body = Full<bytes::Bytes>;

/// Outermost: creates the context and, after the inner service returned, copies
/// the final state out for the test to inspect.
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<(RequestId, ContextState)>>>,
    clock: ManualClock,
}

impl<S> Layer<S> for Recorder {
    type Service = RecorderService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecorderService {
            inner,
            cfg: self.clone(),
        }
    }
}

#[derive(Clone)]
struct RecorderService<S> {
    inner: S,
    cfg: Recorder,
}

impl<S, B> Service<Request<Body>> for RecorderService<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<B>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &self.cfg.clock);
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let seen = self.cfg.seen.clone();
        Box::pin(async move {
            let res = inner.call(req).await?;
            seen.lock()
                .expect("lock")
                .push((ctx.request_id(), ctx.snapshot()));
            Ok(res)
        })
    }
}

/// Middle: authenticates everyone as `svc-a` and records the principal.
#[derive(Clone)]
struct FakeIdentity(Principal);

impl<S> Layer<S> for FakeIdentity {
    type Service = FakeIdentityService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FakeIdentityService {
            inner,
            principal: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct FakeIdentityService<S> {
    inner: S,
    principal: Principal,
}

impl<S: Service<Request<Body>>> Service<Request<Body>> for FakeIdentityService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &ManualClock::now());
        ctx.set_principal(self.principal.clone());
        self.inner.call(req)
    }
}

/// Inner: requires `orders:write` and rejects with a typed denial otherwise.
#[derive(Clone)]
struct RequireWrite;

impl<S> Layer<S> for RequireWrite {
    type Service = RequireWriteService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireWriteService { inner }
    }
}

#[derive(Clone)]
struct RequireWriteService<S> {
    inner: S,
}

impl<S, B> Service<Request<Body>> for RequireWriteService<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    type Response = Response<GuardBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &ManualClock::now());
        let required = ScopeSet::parse("orders:write").expect("scopes");
        let granted = ctx.principal().map(|p| p.scopes().clone()).unwrap_or_default();
        if required.is_subset(&granted) {
            ctx.allow();
            return ResponseFuture::inner(self.inner.call(req));
        }
        let missing = required.difference(&granted);
        let denial =
            Denial::insufficient_scope(Control::Scope, required, missing).with_request_id(ctx.request_id());
        ctx.deny(&denial);
        ResponseFuture::rejected(respond(
            &DefaultRenderer::new(),
            denial,
            Protocol::of(req.headers()),
        ))
    }
}

fn principal(scopes: &str) -> Principal {
    let record = Arc::new(
        ClientRecord::builder(
            "svc-a",
            "team-a@example.com",
            "tests",
            UNIX_EPOCH + Duration::from_secs(4_000_000_000),
        )
        .scopes(ScopeSet::parse("orders:read orders:write").expect("scopes"))
        .build()
        .expect("record"),
    );
    Principal::with_credential_scopes(
        record,
        CredentialInfo::ApiKey {
            prefix: Arc::from("nhik"),
        },
        &ScopeSet::parse(scopes).expect("scopes"),
        Tier::BUILT_IN_DEFAULT,
    )
}

async fn run(scopes: &str, content_type: Option<&str>) -> (Response<bytes::Bytes>, RequestId, ContextState) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        seen: seen.clone(),
        clock: ManualClock::at(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
    };
    let handler = tower::service_fn(|req: Request<Body>| async move {
        // The handler sees the same context too.
        let ctx = SecurityContext::from_extensions(req.extensions())
            .expect("context")
            .clone();
        let who = ctx
            .principal()
            .map(|p| p.client_id().to_string())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from(who))))
    });
    let svc = ServiceBuilder::new()
        .layer(recorder)
        .layer(FakeIdentity(principal(scopes)))
        .layer(RequireWrite)
        .service(handler);
    let mut req = Request::builder().method("POST").uri("/orders");
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let mut req = req.body(Full::default()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.7:5000".parse::<SocketAddr>().expect("addr")));
    let res = svc.oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let (id, state) = seen.lock().expect("lock").pop().expect("one record");
    (Response::from_parts(parts, bytes), id, state)
}

#[tokio::test]
async fn allowed_request_carries_one_context_through_three_layers() {
    let (res, _id, state) = run("orders:read orders:write", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "svc-a");
    assert_eq!(state.decision, Decision::Allowed);
    let p = state.principal.expect("principal recorded by the middle layer");
    assert_eq!(p.client_id().as_str(), "svc-a");
}

#[tokio::test]
async fn outer_layer_reads_the_inner_rejection() {
    let (res, id, state) = run("orders:read admin", None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // The typed denial is on the response, the short form in the context.
    let denial = res.extensions().get::<Denial>().expect("typed denial");
    assert_eq!(denial.reason(), "insufficient_scope");
    match state.decision {
        Decision::Denied(d) => {
            assert_eq!(d.control, Control::Scope);
            assert_eq!(d.reason, "insufficient_scope");
            assert_eq!(d.status, StatusCode::FORBIDDEN);
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // Effective scopes were intersected with the ceiling: `admin` is gone.
    let p = state.principal.expect("principal");
    assert_eq!(p.scopes().to_string(), "orders:read");
    let body: serde_json::Value = serde_json::from_slice(res.body()).expect("problem json");
    assert_eq!(body["missing_scopes"], serde_json::json!(["orders:write"]));
    assert_eq!(body["request_id"], id.to_string());
}

#[tokio::test]
async fn grpc_requests_get_a_grpc_status() {
    let (res, _id, _state) = run("orders:read", Some("application/grpc")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "7");
    assert!(res.body().is_empty());
}

#[tokio::test]
async fn context_records_the_resolved_address_and_arrival_time() {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.9:1234".parse::<SocketAddr>().expect("addr")));
    let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(42));
    let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &clock);
    assert_eq!(ctx.client_addr().expect("addr").ip().to_string(), "127.0.0.9");
    assert_eq!(ctx.received_at(), UNIX_EPOCH + Duration::from_secs(42));
}
