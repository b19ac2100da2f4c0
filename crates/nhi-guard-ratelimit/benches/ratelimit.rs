//! Per-request cost of the in-memory rate limit, side by side with `tower_governor`
//! on the same quota and a bare service, with 1 key and with 1,000,000 live keys.
//!
//! Every request is built the same way for every contender (an empty body, the
//! peer address as axum's `ConnectInfo` and as `PeerAddr`), and every service
//! answers immediately, so the futures are polled once with a no-op waker.
//!
//! `cargo bench -p nhi-guard-ratelimit --bench ratelimit -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_ratelimit::store::{CheckMode, Quota, RateLimitDecision};
use nhi_guard_ratelimit::{InMemoryRateLimitStore, Limit, LocalCheck, RateLimitLayer};
use tower::{Layer, Service, service_fn};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

const KEYS: u32 = 1_000_000;

/// One request per nanosecond, bursts of 10^9: never limited during a bench.
fn nhi_quota() -> Quota {
    Quota::new(1_000_000_000, Duration::from_secs(1)).expect("quota")
}

fn call<S>(svc: &mut S, req: Request<Body>) -> S::Response
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let mut fut = pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        _ => panic!("not immediately ready"),
    }
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
}

fn request(ip: IpAddr) -> Request<Body> {
    let addr = SocketAddr::new(ip, 40_000);
    let mut req = Request::new(Body::empty());
    req.extensions_mut().insert(ConnectInfo(addr));
    req.extensions_mut().insert(PeerAddr(addr));
    req
}

fn bare() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone {
    service_fn(|_req: Request<Body>| std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty()))))
}

/// Benches `make()` (built and warmed with `keys` keys on first use, so that a
/// filtered run builds only what it measures) on requests from `keys` addresses
/// in turn. Requests are built outside the timing; with `context`, the security
/// context is created outside the timing too, as the outer audit layer does in
/// the full stack.
fn bench<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    keys: u32,
    context: bool,
    make: impl FnOnce() -> S,
) where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut make = Some(make);
    let mut svc: Option<S> = None;
    let resolver = nhi_guard_core::ClientAddrResolver::new();
    let mut i = 0u32;
    group.bench_function(name, |b| {
        let svc = svc.get_or_insert_with(|| {
            let mut svc = (make.take().expect("built once"))();
            for k in 0..keys {
                let _ = call(&mut svc, request(ip(k)));
            }
            svc
        });
        b.iter_batched(
            || {
                i = (i + 1) % keys;
                let mut req = request(ip(i));
                let ctx = context.then(|| {
                    nhi_guard_core::SecurityContext::get_or_insert(
                        &mut req,
                        &resolver,
                        &nhi_guard_core::SystemClock,
                    )
                });
                (req, ctx)
            },
            |(req, ctx)| black_box((call(svc, req), ctx)),
            BatchSize::SmallInput,
        )
    });
}

fn nhi(headers: bool) -> impl Service<Request<Body>, Error = Infallible> {
    RateLimitLayer::new()
        .in_memory_store(Arc::new(InMemoryRateLimitStore::with_max_keys(2 * KEYS as usize)))
        .headers_on_allowed(headers)
        .limit(Limit::per_address("per-ip", nhi_quota()))
        .expect("limit")
        .layer(bare())
}

fn governor_layer() -> impl Service<Request<Body>, Error = Infallible> {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000_000)
        .finish()
        .expect("governor config");
    GovernorLayer::new(config).layer(bare())
}

fn layers(c: &mut Criterion) {
    for (group_name, keys) in [("layer/1 key", 1u32), ("layer/1M keys", KEYS)] {
        let mut group = c.benchmark_group(group_name);
        bench(&mut group, "bare service", keys, false, bare);
        bench(&mut group, "bare service (context present)", keys, true, bare);
        bench(&mut group, "tower_governor", keys, false, governor_layer);
        bench(&mut group, "nhi-guard RateLimit", keys, false, || nhi(false));
        bench(
            &mut group,
            "nhi-guard RateLimit (context present)",
            keys,
            true,
            || nhi(false),
        );
        bench(&mut group, "nhi-guard RateLimit (+headers)", keys, false, || {
            nhi(true)
        });
        group.finish();
    }
}

/// The bare checks: our store against governor's keyed limiter, 1M live keys.
fn stores(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed check/1M keys");
    let quota = nhi_quota();
    let now = || nhi_guard_core::clock::Clock::unix_nanos(&nhi_guard_core::SystemClock);
    let key = |i: u32| match ip(i) {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [0; 4],
    };
    let check_one = |store: &InMemoryRateLimitStore, i: u32| {
        let kb = key(i);
        let check = [LocalCheck {
            policy: "per-ip",
            key: &kb,
            qualifier: b"",
            quota,
            cost: 1,
        }];
        let mut out = [RateLimitDecision::default(); 1];
        store.check_at(now(), &check, CheckMode::Consume, &mut out)
    };
    let mut store: Option<InMemoryRateLimitStore> = None;
    let mut i = 0u32;
    group.bench_function("nhi-guard InMemoryRateLimitStore", |b| {
        let store = store.get_or_insert_with(|| {
            let store = InMemoryRateLimitStore::with_max_keys(2 * KEYS as usize);
            for k in 0..KEYS {
                check_one(&store, k);
            }
            store
        });
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(check_one(store, i))
        })
    });

    let mut limiter = None;
    let mut i = 0u32;
    group.bench_function("governor keyed", |b| {
        let limiter = limiter.get_or_insert_with(|| {
            let limiter = governor::RateLimiter::keyed(
                governor::Quota::per_second(NonZeroU32::new(1_000_000_000).expect("nonzero"))
                    .allow_burst(NonZeroU32::new(1_000_000_000).expect("nonzero")),
            );
            for k in 0..KEYS {
                let _ = limiter.check_key(&ip(k));
            }
            limiter
        });
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(limiter.check_key(&ip(i)).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, layers, stores);
criterion_main!(benches);
