//! The risk layer's cost on the allow path with every default signal enabled,
//! against the bare service in the same run, and the memory it holds per tracked
//! client and per tracked address.
//!
//! ```text
//! cargo bench -p nhi-guard-risk --bench risk -- --warm-up-time 1 --measurement-time 3
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_main};
use http::{Request, Response, StatusCode};
use nhi_guard_core::registry::ClientRecord;
use nhi_guard_core::{
    ClientAddr, CredentialFingerprint, CredentialInfo, Principal, ScopeSet, SecurityContext, SystemClock,
    Tier,
};
use nhi_guard_risk::{RiskLayer, Route};
use tower::{Layer, Service, service_fn};

const CLIENTS: usize = 1000;

struct Client {
    principal: Principal,
    fp: CredentialFingerprint,
    addr: ClientAddr,
}

fn clients(n: usize, base: u8) -> Vec<Client> {
    let expires = SystemTime::now() + Duration::from_secs(365 * 86_400);
    (0..n)
        .map(|i| {
            let record = Arc::new(
                ClientRecord::builder(format!("client-{i}"), "team@example.com", "bench", expires)
                    .build()
                    .expect("record"),
            );
            let info = CredentialInfo::ApiKey {
                prefix: Arc::from("nhik"),
            };
            let ip = IpAddr::V4(Ipv4Addr::new(127, base, (i / 250) as u8, (i % 250) as u8 + 1));
            Client {
                principal: Principal::new(record, info, ScopeSet::empty(), Tier::BUILT_IN_DEFAULT),
                fp: CredentialFingerprint::of(format!("key-{i}").as_bytes()),
                addr: ClientAddr::direct(SocketAddr::new(ip, 40_000)),
            }
        })
        .collect()
}

/// A request as the identity layer leaves it: context with principal and
/// fingerprint. Built identically for the bare and the guarded service.
fn request(c: &Client, item: usize) -> Request<()> {
    let mut req = Request::get(format!("/items/{item}")).body(()).expect("request");
    let ctx = SecurityContext::new(Some(c.addr), &SystemClock);
    ctx.set_principal(c.principal.clone());
    ctx.update(|s| s.credential_fingerprint = Some(c.fp));
    req.extensions_mut().insert(ctx);
    req
}

fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn handler(_req: Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::new())))
}

fn layer() -> RiskLayer {
    RiskLayer::new()
        .route(Route::new("GET", "/items/{id}").expect("route").group("items"))
        .expect("route")
        .route(
            Route::new("POST", "/inventory/{sku}/reserve")
                .expect("route")
                .scarce(),
        )
        .expect("route")
}

fn allow_path(c: &mut Criterion) {
    let population = clients(CLIENTS, 10);
    let mut g = c.benchmark_group("risk_allow_path");
    let mut bare = service_fn(handler);
    let mut i = 0usize;
    g.bench_function("bare", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let req = request(&population[i % CLIENTS], i % 16);
            let res = run(bare.call(req)).expect("infallible");
            assert_eq!(res.status(), StatusCode::OK);
        })
    });
    let risk = layer();
    let mut guarded = risk.layer(service_fn(handler));
    g.bench_function("risk_default_signals", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let req = request(&population[i % CLIENTS], i % 16);
            let res = run(guarded.call(req)).expect("infallible");
            assert_eq!(res.status(), StatusCode::OK);
        })
    });
    g.finish();
    min_of_batches(&population, &mut bare, &mut guarded);
    memory_report();
}

/// Criterion's estimates move with the machine's load; the fastest of many
/// interleaved batches is a steadier figure for the layer's own cost.
fn min_of_batches<A, B>(population: &[Client], bare: &mut A, guarded: &mut B)
where
    A: Service<Request<()>, Error = Infallible>,
    B: Service<Request<()>, Error = Infallible>,
{
    const BATCH: usize = 20_000;
    let mut best = (f64::MAX, f64::MAX);
    let mut i = 0usize;
    for _ in 0..30 {
        let t = std::time::Instant::now();
        for _ in 0..BATCH {
            i = i.wrapping_add(1);
            let _ = run(bare.call(request(&population[i % CLIENTS], i % 16)));
        }
        best.0 = best.0.min(t.elapsed().as_nanos() as f64 / BATCH as f64);
        let t = std::time::Instant::now();
        for _ in 0..BATCH {
            i = i.wrapping_add(1);
            let _ = run(guarded.call(request(&population[i % CLIENTS], i % 16)));
        }
        best.1 = best.1.min(t.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    eprintln!(
        "fastest batch: bare {:.0} ns, risk {:.0} ns, overhead {:.0} ns per request ({:.2}x)",
        best.0,
        best.1,
        best.1 - best.0,
        best.1 / best.0
    );
}

/// Tracks 10 000 clients (each from its own address) and 10 000 failing addresses,
/// and reports the bytes the signal tables hold per tracked key.
fn memory_report() {
    const N: usize = 10_000;
    let risk = layer();
    let edge = risk.edge();
    let mut guarded = risk.layer(service_fn(handler));
    let population = clients(N, 20);
    for (i, c) in population.iter().enumerate() {
        let res = run(guarded.call(request(c, i % 16))).expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
    }
    let clients_report = risk.operator().memory();
    let mut edge_svc = edge.layer(service_fn(|_req: Request<()>| {
        let mut res = Response::new(String::new());
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        std::future::ready(Ok::<_, Infallible>(res))
    }));
    for i in 0..N {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 30, (i / 250) as u8, (i % 250) as u8 + 1));
        let mut req = Request::get("/items/1").body(()).expect("request");
        let ctx = SecurityContext::new(Some(ClientAddr::direct(SocketAddr::new(ip, 1))), &SystemClock);
        ctx.update(|s| {
            s.credential_fingerprint = Some(CredentialFingerprint::of(format!("guess-{i}").as_bytes()));
            s.identity_failure = Some("unknown_api_key");
        });
        ctx.deny(&nhi_guard_core::Denial::invalid_token(
            nhi_guard_core::Control::Identity,
            "unknown_api_key",
            "unknown",
        ));
        req.extensions_mut().insert(ctx);
        let _ = run(edge_svc.call(req));
    }
    let all = risk.operator().memory();
    let by = |r: &nhi_guard_risk::MemoryReport, names: &[&str]| -> usize {
        r.signals
            .iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(_, m)| m.bytes)
            .sum()
    };
    let per_client = by(
        &clients_report,
        &[
            "credential_spread",
            "new_network",
            "rate_surge",
            "enumeration",
            "probing",
            "hoarding",
        ],
    ) as f64
        / N as f64;
    let per_address = by(&all, &["auth_failure_velocity", "distinct_credentials"]) as f64 / N as f64;
    eprintln!(
        "memory: {per_client:.0} bytes per tracked client, {per_address:.0} bytes per tracked failing address"
    );
    for (name, m) in &all.signals {
        eprintln!(
            "  {name:<24} keys {:>6}  bytes {:>9}  capacity {:>7}",
            m.keys, m.bytes, m.capacity
        );
    }
}

#[allow(missing_docs)]
mod harness {
    criterion::criterion_group!(benches, super::allow_path);
}
criterion_main!(harness::benches);
