//! The whole stack on `GET /orders` with a valid RS256 access token, against the
//! bare axum handler in the same run, each control alone, and the peers on the same
//! request and token: `jwt-authorizer` for JWT, `tower_governor` for the limiter,
//! and a `tower-http` bearer check as the floor.
//!
//! Both tables (this one and loopback throughput with wrk, see `benches/throughput.rs`)
//! with one command:
//!
//! ```text
//! cargo bench --bench stack --bench throughput
//! cargo bench --bench stack -- --warm-up-time 1 --measurement-time 3   # quicker, this one only
//! NHI_GUARD_BENCH_METRICS=1 cargo bench --bench stack   # with a Prometheus recorder
//! ```
//!
//! Criterion prints its usual report per entry, then this bench prints a summary:
//! for each entry the per-request time criterion printed (`time`: its slope estimate)
//! and the median (point estimates read back from
//! `target/criterion/stack/<entry>/new/estimates.json`), the median's ratio to the
//! bare handler and the nanoseconds it adds to it. Every entry is asserted to
//! answer 200, so every figure is the allow path. An entry left out by a filter
//! (`cargo bench --bench stack -- identity`) shows as "not run".
//!
//! Four rows build the stack up through the facade one control at a time (identity +
//! scope, then the rate limit by client, by address, the failure limit; risk makes
//! it the full stack without audit), so consecutive rows give each control's cost
//! inside the stack, where the context is created once.
//!
//! The full stack is: audit (JSON Lines file with the hash chain) → rate limit by
//! address → failure-only limit → risk edge → identity (RS256, verified-token cache)
//! → risk (all default signals) → rate limit by client (inventory tier) → scope.
//! The quotas are never exhausted (one address, one client, 10^9/s).

// `ValidateRequestHeaderLayer::bearer` is deprecated upstream as too basic; it is here as the floor.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout, deprecated)]

mod common;

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::SystemTime;

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, StatusCode};
use nhi_guard::core::address::PeerAddr;
use nhi_guard::prelude::*;
use tower::{Service, ServiceExt};

use common::{AUD, ISS, app, identity, policy, quota, risk};

const GROUP: &str = "stack";
const BARE: &str = "bare handler";

fn request(auth: &HeaderValue) -> Request<Body> {
    let mut req = Request::get("/orders")
        .header("authorization", auth.clone())
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
    req
}

fn run<S>(rt: &tokio::runtime::Runtime, svc: &S, auth: &HeaderValue)
where
    S: Service<Request<Body>, Response = axum::response::Response, Error = Infallible> + Clone,
{
    let res = rt.block_on(svc.clone().oneshot(request(auth))).unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the benchmark must measure the allow path"
    );
    black_box(res);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    // NHI_GUARD_BENCH_METRICS=1: with a Prometheus recorder installed before the
    // stacks are built (the layers' counters and the risk histogram then record
    // for real), its upkeep run every second as a scraping gateway would.
    let _metrics = std::env::var_os("NHI_GUARD_BENCH_METRICS").map(|_| {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap();
        let upkeep = handle.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                upkeep.run_upkeep();
            }
        });
        handle
    });
    let registry = common::registry();
    let (auth, keys, jwks) = common::token_and_keys();
    // Removed at the end, and a killed run's directory at the next start: a full-stack
    // log reaches a gigabyte within a run.
    let dir = nhi_guard_testkit::temp::TempDir::per_process("nhi-guard-bench");

    let (full_audit, full_handle) = common::audit(&dir, "full.jsonl");
    let full = common::full_stack(&registry, &keys, Some(full_audit));
    let without_audit = common::full_stack(&registry, &keys, None);
    let (alone_audit, alone_handle) = common::audit(&dir, "alone.jsonl");
    let (nosync_audit, nosync_handle) =
        common::audit_with(&dir, "alone-nosync.jsonl", nhi_guard::audit::FsyncPolicy::Never);
    // The same public key (the JWKS text our `KeySet` was built from), issuer and
    // audience. jwt-authorizer verifies the signature on every request: it has no
    // verified-token cache.
    let jwt_peer = rt
        .block_on(
            jwt_authorizer::JwtAuthorizer::<jwt_authorizer::RegisteredClaims>::from_jwks_text(&jwks)
                .validation(jwt_authorizer::Validation::new().iss(&[ISS]).aud(&[AUD]))
                .layer(),
        )
        .unwrap();

    // The stack built up one control at a time through the facade (one shared
    // context, clock and address resolver), so each row adds one control's cost.
    let with_scope = || {
        NhiGuard::builder(registry.clone())
            .identity(identity(&registry, &keys))
            .scope(ScopeLayer::new(policy()))
    };
    let by_client = || {
        RateLimitLayer::new()
            .limit(Limit::per_client("per-client"))
            .unwrap()
    };
    let by_address = || {
        RateLimitLayer::new()
            .limit(Limit::per_address("per-address", quota()).exempt_verified())
            .unwrap()
    };
    let layered = |b: nhi_guard::NhiGuardBuilder| app().layer(b.build().unwrap());
    // Entries with an audit writer come last: its thread and the kernel's
    // writeback of the log keep working for a while after its entry ends.
    let services: Vec<(&str, axum::Router)> = vec![
        (BARE, app()),
        ("identity + scope", layered(with_scope())),
        (
            "+ rate limit by client",
            layered(with_scope().rate_limit(by_client())),
        ),
        (
            "+ rate limit by address",
            layered(
                with_scope()
                    .rate_limit(by_client())
                    .address_rate_limit(by_address()),
            ),
        ),
        (
            "+ failure limit",
            layered(
                with_scope()
                    .rate_limit(by_client())
                    .address_rate_limit(by_address())
                    .auth_failure_limit(nhi_guard::ratelimit::AuthFailureLimitLayer::new(quota())),
            ),
        ),
        ("full stack without audit", app().layer(without_audit)),
        (
            "identity alone (RS256, cached)",
            app().layer(identity(&registry, &keys).build().unwrap()),
        ),
        (
            "rate limit alone (per address)",
            app().layer(
                RateLimitLayer::new()
                    .limit(Limit::per_address("per-address", quota()).exempt_verified())
                    .unwrap(),
            ),
        ),
        ("risk alone (anonymous)", app().layer(risk())),
        (
            "floor: tower-http bearer check",
            app().layer(tower_http::validate_request::ValidateRequestHeaderLayer::bearer(
                auth.to_str().unwrap().trim_start_matches("Bearer "),
            )),
        ),
        (
            "peer: jwt-authorizer (RS256)",
            app().layer(
                tower::ServiceBuilder::new()
                    .layer(jwt_peer)
                    .map_response(JwtPeerResponse),
            ),
        ),
        (
            "peer: tower_governor (per IP)",
            app().layer(tower_governor::GovernorLayer::new(
                tower_governor::governor::GovernorConfigBuilder::default()
                    .per_nanosecond(1)
                    .burst_size(1_000_000_000)
                    .key_extractor(PeerAddrKey)
                    .finish()
                    .unwrap(),
            )),
        ),
        ("full stack", app().layer(full)),
        ("audit alone (file)", app().layer(alone_audit)),
        ("audit alone (file, no fsync)", app().layer(nosync_audit)),
    ];

    // Finished as `axum::serve` finishes a router before serving it: each route's
    // handler and layers are turned into a service once. A router called without
    // this rebuilds the handler's route, every layer included, on each request.
    let services: Vec<(&str, axum::Router)> = services
        .into_iter()
        .map(|(name, router)| (name, router.with_state(())))
        .collect();
    let started = SystemTime::now();
    let mut group = c.benchmark_group(GROUP);
    for (name, svc) in &services {
        run(&rt, svc, &auth);
        group.bench_function(*name, |b| b.iter(|| run(&rt, svc, &auth)));
    }
    group.finish();
    let names: Vec<&str> = services.iter().map(|(name, _)| *name).collect();
    drop(services);
    rt.block_on(async {
        full_handle.shutdown().await.unwrap();
        alone_handle.shutdown().await.unwrap();
        nosync_handle.shutdown().await.unwrap();
    });
    drop(dir);
    common::report::summary(
        GROUP,
        BARE,
        "stack: GET /orders, valid RS256 token, per request (criterion point estimates)",
        &names,
        started,
    );
}

/// jwt-authorizer 0.15 is built on axum 0.7 and renders its rejections as axum 0.7
/// responses, so it requires the inner response type to convert from its `AuthError`.
/// This axum 0.8 response newtype does (re-boxing the body of a rejection only); on
/// the allow path it is a move.
struct JwtPeerResponse(axum::response::Response);

impl From<jwt_authorizer::AuthError> for JwtPeerResponse {
    fn from(e: jwt_authorizer::AuthError) -> Self {
        let (parts, body) = http::Response::from(e).into_parts();
        Self(axum::response::Response::from_parts(parts, Body::new(body)))
    }
}

impl axum::response::IntoResponse for JwtPeerResponse {
    fn into_response(self) -> axum::response::Response {
        self.0
    }
}

/// governor keyed by the same `PeerAddr` extension our layers read.
#[derive(Debug, Clone, Copy)]
struct PeerAddrKey;

impl tower_governor::key_extractor::KeyExtractor for PeerAddrKey {
    type Key = std::net::IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<Self::Key, tower_governor::GovernorError> {
        req.extensions()
            .get::<PeerAddr>()
            .map(|p| p.0.ip())
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
