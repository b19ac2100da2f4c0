//! Per-request cost of the scope check: the bare service against the layer with 10,
//! 100 and 1,000 rules, in the same run.
//!
//! The request carries a principal (as the identity layer leaves it) and the
//! security context an outer guard layer created, so the figures are the scope
//! layer's own cost: policy match, scope check, context record and usage record.
//! `alone` also creates the context (the layer used without any other guard).
//! Building the request is setup, outside the measurement; dropping it (and its
//! context) is measured, for the bare service as for the layer.
//!
//! Measured 2026-11-28 on a shared, loaded 2-core machine (fastest sample of each
//! run; the means were 2-3x higher from contention): bare 89 ns; layer 212 / 224
//! / 223 ns with 10 / 100 / 1,000 rules (+123..135 ns); without a usage store
//! 182 ns (+93 ns); `policy_find` 27-31 ns whatever the rule count. callgrind
//! (deterministic): +1,146 instructions per request without a usage store,
//! +1,504 with one, flat from 10 to 1,000 rules.
//!
//! The path check (`path_check/*`, and the layer with it turned off): one table
//! look-up per ordinary byte and a few instructions per `/`; callgrind of the
//! same loop in isolation: about 3.6 instructions per path byte (the 17-byte
//! path here, the 102-byte one), no allocation. Wall-clock figures of the
//! 2026-12 run were dominated by load on the machine (4 processes on 2 cores).

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response};
use nhi_guard_core::address::ClientAddrResolver;
use nhi_guard_core::clock::SystemClock;
use nhi_guard_core::registry::{ClientRecord, Tier};
use nhi_guard_core::{CredentialInfo, Principal, ScopeSet, SecurityContext};
use nhi_guard_scope::usage::{InMemoryUsageStore, ScopeUsageStore};
use nhi_guard_scope::{PathCheck, Policy, Require, ScopeLayer};
use tower::{Layer, Service, service_fn};

fn policy(n: usize) -> Policy {
    let mut b = Policy::builder();
    // n rules in families like a real API: /svcN/items/{id}, /svcN/items, /svcN/*.
    for i in 0..n {
        b = match i % 4 {
            0 => b.get(
                format!("/svc{}/items/{{id}}", i / 4),
                Require::all_of("orders:read"),
            ),
            1 => b.post(format!("/svc{}/items", i / 4), Require::all_of("orders:write")),
            2 => b.any(format!("/svc{}/*", i / 4), Require::all_of("admin")),
            _ => b.get(
                format!("/svc{}/items/{{id}}/history", i / 4),
                Require::any_of("audit orders:read"),
            ),
        };
    }
    b.build().expect("valid policy")
}

fn principal() -> Principal {
    let record = ClientRecord::builder(
        "inventory-sync",
        "ops@example.com",
        "bench",
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .scopes(ScopeSet::parse("orders:read orders:write").expect("scopes"))
    .build()
    .expect("record");
    Principal::new(
        Arc::new(record),
        CredentialInfo::ApiKey { prefix: "sk".into() },
        ScopeSet::parse("orders:read orders:write").expect("scopes"),
        Tier::BUILT_IN_DEFAULT,
    )
}

fn drive<S, B>(svc: &mut S, req: Request<()>) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = std::pin::pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(res) => res.expect("infallible"),
        Poll::Pending => unreachable!("the handler is ready at once"),
    }
}

fn bench(c: &mut Criterion) {
    let principal = principal();
    let path = "/svc2/items/12345";
    let make_req = |with_ctx: bool| {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(())
            .expect("request");
        req.extensions_mut().insert(principal.clone());
        if with_ctx {
            SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &SystemClock);
        }
        req
    };
    let handler =
        service_fn(|_req: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(())) });

    let mut group = c.benchmark_group("scope");
    let mut bare = handler;
    group.bench_function("bare", |b| {
        b.iter_batched(
            || make_req(true),
            |req| drive(&mut bare, req),
            BatchSize::SmallInput,
        )
    });
    for n in [10usize, 100, 1000] {
        let store = Arc::new(InMemoryUsageStore::new());
        let mut svc = ScopeLayer::new(policy(n)).usage_store(store).layer(handler);
        let res = drive(&mut svc, make_req(true));
        assert_eq!(res.status(), 200, "the benchmark request must be allowed");
        group.bench_with_input(BenchmarkId::new("layer", n), &n, |b, _| {
            b.iter_batched(
                || make_req(true),
                |req| drive(&mut svc, req),
                BatchSize::SmallInput,
            )
        });
    }
    let mut no_store = ScopeLayer::new(policy(100)).layer(handler);
    group.bench_function("layer_without_usage_store/100", |b| {
        b.iter_batched(
            || make_req(true),
            |req| drive(&mut no_store, req),
            BatchSize::SmallInput,
        )
    });
    // The same layer without the path check: the difference is the check's cost.
    let mut unchecked = ScopeLayer::new(policy(100))
        .path_check(PathCheck::Off)
        .layer(handler);
    group.bench_function("layer_without_path_check/100", |b| {
        b.iter_batched(
            || make_req(true),
            |req| drive(&mut unchecked, req),
            BatchSize::SmallInput,
        )
    });
    let mut bare = handler;
    group.bench_function("bare_no_context", |b| {
        b.iter_batched(
            || make_req(false),
            |req| drive(&mut bare, req),
            BatchSize::SmallInput,
        )
    });
    let mut alone = ScopeLayer::new(policy(100))
        .usage_store(Arc::new(InMemoryUsageStore::new()))
        .layer(handler);
    group.bench_function("alone/100", |b| {
        b.iter_batched(
            || make_req(false),
            |req| drive(&mut alone, req),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The pieces, without the request around them.
    let mut parts = c.benchmark_group("scope_parts");
    for n in [10usize, 100, 1000] {
        let p = policy(n);
        parts.bench_with_input(BenchmarkId::new("policy_find", n), &n, |b, _| {
            b.iter(|| black_box(p.find(black_box(&Method::GET), black_box(path)).is_some()))
        });
    }
    for (name, p) in [
        ("path_check/short", path),
        (
            "path_check/long",
            "/tenants/acme-corp/projects/project-0042/environments/production/deployments/2026-11-28T10:00:00Z/logs",
        ),
    ] {
        parts.bench_function(name, |b| {
            b.iter(|| black_box(PathCheck::Strict.check(black_box(p)).is_ok()))
        });
    }
    let store = InMemoryUsageStore::new();
    let id = principal.client_id().clone();
    let now = SystemTime::now();
    parts.bench_function("usage_record_use", |b| {
        b.iter(|| store.record_use(black_box(&id), black_box("orders:read"), now))
    });
    parts.bench_function("make_request", |b| b.iter(|| black_box(make_req(true))));
    parts.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
