//! Request-path cost of the audit layer (record building + enqueue) against the
//! bare service, and the writer's sustained records per second to a file.
#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use nhi_guard_audit::{AuditLayer, AuditRecord, AuditSink, AuditWriter, FsyncPolicy, JsonLinesFile};
use nhi_guard_core::context::{RateLimitOutcome, RiskAssessment, ScopeOutcome, SignalHit};
use nhi_guard_core::{
    ClientRecord, CredentialFingerprint, CredentialInfo, Principal, ScopeSet, SecurityContext, Tier,
};
use std::hint::black_box;
use tower::Layer;
use tower_service::Service;

/// CPU time consumed so far by the calling thread: the machine these benches run
/// on is shared, so wall time mostly measures the neighbours. Read from the
/// scheduler's accounting after a yield, which brings it up to date. Linux only.
fn thread_cpu() -> Duration {
    std::thread::yield_now();
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

/// CPU time consumed so far by thread `tid` of this process, from the
/// scheduler's accounting (exact for a thread that is not running). Linux only.
fn other_thread_cpu(tid: u64) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap_or_default();
    Duration::from_nanos(
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

fn own_tid() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Runs `iters` calls of `f` in chunks; returns wall time or this thread's CPU
/// time spent in the calls; `between` runs untimed after each chunk.
fn chunks(iters: u64, cpu: bool, f: &mut dyn FnMut(), between: &mut dyn FnMut()) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(8_192);
        let (w0, c0) = (Instant::now(), thread_cpu());
        for _ in 0..n {
            f();
        }
        total += if cpu { thread_cpu() - c0 } else { w0.elapsed() };
        left -= n;
        between();
    }
    total
}

/// Takes records and does nothing: the request-path bench measures the producer.
struct NullSink;

impl AuditSink for NullSink {
    fn write(&mut self, r: &AuditRecord<'_>) -> io::Result<()> {
        black_box(r.json().len());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn bare(_req: Request<()>) -> Ready<Result<Response<()>, Infallible>> {
    ready(Ok(Response::new(())))
}

fn principal() -> Principal {
    let record = ClientRecord::builder(
        "inventory-sync",
        "fulfilment-team@example.com",
        "Syncs stock levels",
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .scopes(ScopeSet::parse("orders:read inventory:read").unwrap())
    .build()
    .unwrap();
    Principal::new(
        Arc::new(record),
        CredentialInfo::Jwt {
            kid: Some(Arc::from("k1")),
            alg: Arc::from("ES256"),
            jti: Some(Arc::from("c0ffee")),
            certificate_bound: false,
        },
        ScopeSet::parse("orders:read").unwrap(),
        Tier::BUILT_IN_DEFAULT,
    )
    .issuer("https://issuer.example.com")
}

/// An inner service that records what the other controls would: a full-size record.
#[derive(Clone)]
struct FullStack(Principal);

impl Service<Request<()>> for FullStack {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<()>) -> Self::Future {
        if let Some(ctx) = SecurityContext::from_extensions(req.extensions()) {
            ctx.set_principal(self.0.clone());
            ctx.update(|s| {
                s.credential_fingerprint = Some(CredentialFingerprint::of(b"token"));
                s.route = Some(Arc::from("/orders/{id}"));
                s.scopes = Some(ScopeOutcome {
                    rule: Some(Arc::from("/orders/{id}")),
                    required: self.0.scopes().clone(),
                    granted: self.0.scopes().clone(),
                    missing: ScopeSet::empty(),
                });
                s.rate_limit = Some(RateLimitOutcome {
                    policy: Arc::from("per-client"),
                    limited: false,
                    quota: 20,
                    window_secs: 2,
                    remaining: 19,
                    reset_secs: 1,
                });
                s.risk = Some(RiskAssessment {
                    score: 10,
                    action: "allow".into(),
                    signals: vec![SignalHit {
                        signal: "new_network",
                        points: 10,
                        reason: "first request from this network".into(),
                    }],
                });
            });
            ctx.allow();
        }
        ready(Ok(Response::new(())))
    }
}

/// Creates the security context, then calls the inner service.
struct ContextOnly<S>(S, nhi_guard_core::ClientAddrResolver);

impl<S: Service<Request<()>>> Service<Request<()>> for ContextOnly<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, mut req: Request<()>) -> S::Future {
        SecurityContext::get_or_insert(&mut req, &self.1, &nhi_guard_core::SystemClock);
        self.0.call(req)
    }
}

fn req() -> Request<()> {
    let mut r = Request::get("/orders/42").body(()).unwrap();
    r.extensions_mut()
        .insert(nhi_guard_core::address::PeerAddr(([10, 1, 2, 3], 4000).into()));
    r
}

fn per_request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (writer, handle) = AuditWriter::builder()
        .capacity(16_384)
        .unwrap()
        .spawn(NullSink)
        .unwrap();
    let layer = AuditLayer::new(writer);
    for (group, cpu) in [("audit_per_request_wall", false), ("audit_per_request_cpu", true)] {
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        let mut nothing = || {};
        // Between chunks (untimed) the writer drains, so the queue is never full and
        // the figure is record building + enqueue.
        let mut drain = || rt.block_on(handle.flush()).map(drop).unwrap();

        let mut bare_svc = tower::service_fn(bare);
        g.bench_function("bare", |b| {
            b.iter_custom(|n| {
                chunks(
                    n,
                    cpu,
                    &mut || drop(black_box(bare_svc.call(req()).now_or_never())),
                    &mut nothing,
                )
            })
        });
        let mut audited = layer.layer(tower::service_fn(bare));
        g.bench_function("audited", |b| {
            b.iter_custom(|n| {
                chunks(
                    n,
                    cpu,
                    &mut || drop(black_box(audited.call(req()).now_or_never().unwrap())),
                    &mut drain,
                )
            })
        });
        // An inner service that records what identity, scope, rate limit and risk
        // would: it only does so when a context exists, so "bare" does not pay it.
        let mut full_bare = FullStack(principal());
        g.bench_function("bare_full_stack_inner", |b| {
            b.iter_custom(|n| {
                chunks(
                    n,
                    cpu,
                    &mut || drop(black_box(full_bare.call(req()).now_or_never())),
                    &mut nothing,
                )
            })
        });
        // The same inner service behind a minimal layer that only creates the
        // context, as any guard stack does: the fair baseline for the full record.
        let mut ctx_only = ContextOnly(FullStack(principal()), nhi_guard_core::ClientAddrResolver::new());
        g.bench_function("context_only_full_stack", |b| {
            b.iter_custom(|n| {
                chunks(
                    n,
                    cpu,
                    &mut || drop(black_box(ctx_only.call(req()).now_or_never())),
                    &mut nothing,
                )
            })
        });
        let mut full = layer.layer(FullStack(principal()));
        g.bench_function("audited_full_context", |b| {
            b.iter_custom(|n| {
                chunks(
                    n,
                    cpu,
                    &mut || drop(black_box(full.call(req()).now_or_never().unwrap())),
                    &mut drain,
                )
            })
        });
        if !cpu {
            // The writer idle (parked) before each request, as on a lightly loaded
            // server: the call pays for any wake-up of the writer thread.
            let mut idle = layer.layer(tower::service_fn(bare));
            g.bench_function("audited_idle_writer", |b| {
                b.iter_custom(|n| {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        rt.block_on(handle.flush()).unwrap();
                        std::thread::sleep(Duration::from_micros(50));
                        let r = req();
                        let t = Instant::now();
                        drop(black_box(idle.call(r).now_or_never().unwrap()));
                        total += t.elapsed();
                    }
                    total
                })
            });
        }
        g.finish();
    }
    rt.block_on(handle.shutdown()).unwrap();
}

/// A sink held shut by the bench while it fills the queue, so only the writer's
/// own work (format, hash, write) is timed.
struct Gated<K> {
    inner: K,
    gate: Arc<(Mutex<bool>, Condvar)>,
    tid: Arc<std::sync::atomic::AtomicU64>,
}

impl<K: AuditSink> AuditSink for Gated<K> {
    fn write(&mut self, r: &AuditRecord<'_>) -> io::Result<()> {
        if self.tid.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            self.tid.store(own_tid(), std::sync::atomic::Ordering::Relaxed);
        }
        let (lock, cv) = &*self.gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        drop(open);
        self.inner.write(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
    fn close(&mut self) -> io::Result<()> {
        self.inner.close()
    }
    fn rotation_due(&self) -> bool {
        self.inner.rotation_due()
    }
    fn rotate(&mut self) -> io::Result<()> {
        self.inner.rotate()
    }
}

fn writer_throughput(c: &mut Criterion) {
    const CHUNK: u64 = 50_000;
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let dir = std::env::temp_dir().join(format!("nhi-guard-audit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = c.benchmark_group("audit_writer_file");
    g.throughput(Throughput::Elements(1));
    // `null_sink`: formatting and chaining alone, without the file.
    for (name, fsync) in [
        ("null_sink", None),
        ("fsync_never", Some(FsyncPolicy::Never)),
        ("fsync_batch", Some(FsyncPolicy::Batch)),
    ] {
        let sink: Box<dyn AuditSink> = match fsync {
            None => Box::new(NullSink),
            Some(fsync) => Box::new(
                JsonLinesFile::open(dir.join(format!("{name}.jsonl")))
                    .unwrap()
                    .rotate_at(256 << 20)
                    .unwrap()
                    .keep_rotated(1)
                    .unwrap()
                    .fsync(fsync),
            ),
        };
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let tid = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (writer, handle) = AuditWriter::builder()
            .capacity(CHUNK as usize + 8)
            .unwrap()
            .spawn(Gated {
                inner: sink,
                gate: gate.clone(),
                tid: tid.clone(),
            })
            .unwrap();
        rt.block_on(handle.flush()).unwrap();
        let writer_tid = tid.load(std::sync::atomic::Ordering::Relaxed);
        let mut svc = AuditLayer::new(writer).layer(FullStack(principal()));
        let set = |open: bool| {
            *gate.0.lock().unwrap() = open;
            gate.1.notify_all();
        };
        for (clock, cpu) in [("wall", false), ("writer_cpu", true)] {
            g.bench_function(BenchmarkId::new(format!("full_records_{clock}"), name), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(CHUNK);
                        // Shut the sink, queue n records (untimed), then time the
                        // writer draining them into the file.
                        set(false);
                        for _ in 0..n {
                            black_box(svc.call(req()).now_or_never().unwrap().unwrap());
                        }
                        let (w0, c0) = (Instant::now(), other_thread_cpu(writer_tid));
                        set(true);
                        rt.block_on(handle.flush()).unwrap();
                        total += if cpu {
                            other_thread_cpu(writer_tid) - c0
                        } else {
                            w0.elapsed()
                        };
                        left -= n;
                    }
                    total
                })
            });
        }
        rt.block_on(handle.shutdown()).unwrap();
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, per_request, writer_throughput);
criterion_main!(benches);
