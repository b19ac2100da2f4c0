//! Cost of creating the shared security context and recording an allow decision,
//! against the same request handling without it.
//!
//! `cargo bench --bench context`

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use nhi_guard::core::address::{ClientAddrResolver, PeerAddr};
use nhi_guard::core::clock::SystemClock;
use nhi_guard::core::context::RateLimitOutcome;
use nhi_guard::core::{CredentialInfo, Principal, ScopeSet, SecurityContext, Tier};
use nhi_guard::prelude::ClientRecord;
use std::sync::Arc;

fn request() -> Request<()> {
    let mut req = Request::builder()
        .uri("/orders")
        .header("authorization", "Bearer x")
        .body(())
        .expect("request");
    req.extensions_mut()
        .insert(PeerAddr("127.0.0.1:40000".parse::<SocketAddr>().expect("addr")));
    req
}

fn bench(c: &mut Criterion) {
    let resolver = ClientAddrResolver::new();
    let trusted = ClientAddrResolver::new().trust_proxy("10.0.0.0/8".parse().expect("net"));
    let record = Arc::new(
        ClientRecord::builder(
            "inventory-sync",
            "team@example.com",
            "bench",
            SystemTime::now() + Duration::from_secs(86_400),
        )
        .scopes(ScopeSet::parse("orders:read").expect("scopes"))
        .build()
        .expect("record"),
    );
    let principal = Principal::new(
        record.clone(),
        CredentialInfo::ApiKey {
            prefix: Arc::from("nhik"),
        },
        record.scopes().clone(),
        Tier::BUILT_IN_DEFAULT,
    );
    let outcome = RateLimitOutcome {
        policy: Arc::from("per-client"),
        limited: false,
        quota: 100,
        window_secs: 10,
        remaining: 99,
        reset_secs: 1,
    };

    let mut g = c.benchmark_group("context");
    g.bench_function("bare_request", |b| {
        b.iter(|| {
            let req = request();
            black_box(req)
        })
    });
    g.bench_function("create_and_allow", |b| {
        b.iter(|| {
            let mut req = request();
            let ctx = SecurityContext::get_or_insert(&mut req, &resolver, &SystemClock);
            ctx.allow();
            black_box((req, ctx))
        })
    });
    g.bench_function("create_record_all_controls_and_allow", |b| {
        b.iter(|| {
            let mut req = request();
            let ctx = SecurityContext::get_or_insert(&mut req, &trusted, &SystemClock);
            ctx.set_principal(principal.clone());
            ctx.update(|s| s.rate_limit = Some(outcome.clone()));
            // Inner layers find the same context.
            let again = SecurityContext::get_or_insert(&mut req, &trusted, &SystemClock);
            again.allow();
            black_box((req, ctx))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
