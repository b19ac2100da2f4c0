//! Redis rate-limit checks per second at 1, 16 and 64 concurrent requests, each
//! request checking two limits (per client, per client and route) in its one
//! round trip, against a `redis-server` started on a free loopback port, and
//! against a Redis Cluster of three primaries (1000 clients spread over its slots).
//!
//! `cargo bench -p nhi-guard-redis --bench redis -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nhi_guard_ratelimit::store::{CheckMode, Quota, RateLimitCheck, RateLimitStore};
use nhi_guard_redis::RedisStore;
use nhi_guard_redis::testing::{RedisCluster, RedisServer};

fn checks(client: u32) -> Arc<[RateLimitCheck]> {
    // Never limited: one request per nanosecond, bursts of 10^9.
    let quota = Quota::new(1_000_000_000, Duration::from_secs(1)).expect("quota");
    let key: Box<[u8]> = format!("client-{client}").into_bytes().into();
    Arc::from(vec![
        RateLimitCheck {
            policy: Arc::from("per-client"),
            key: key.clone(),
            qualifier: Box::default(),
            quota,
            cost: 1,
        },
        RateLimitCheck {
            policy: Arc::from("per-client-route"),
            key,
            qualifier: b"orders".as_slice().into(),
            quota,
            cost: 1,
        },
    ])
}

fn redis_checks(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    bench_target(c, "redis check (2 limits, 1 round trip)", &server.url());
    bench_target(
        c,
        "redis cluster check (3 primaries, 2 limits, 1 round trip)",
        &cluster.urls(),
    );
}

fn bench_target(c: &mut Criterion, name: &str, target: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(
            RedisStore::builder(target)
                .timeout(Duration::from_secs(2))
                .connect(),
        )
        .expect("connect");
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for concurrency in [1u64, 16, 64] {
        group.bench_function(format!("{concurrency} concurrent"), |b| {
            b.iter_custom(|iters| {
                let store = store.clone();
                rt.block_on(async move {
                    let per_task = iters.div_ceil(concurrency);
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..concurrency)
                        .map(|t| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                for i in 0..per_task {
                                    let client = u32::try_from((t * per_task + i) % 1000).unwrap_or(0);
                                    let d = store
                                        .check(checks(client), CheckMode::Consume)
                                        .await
                                        .expect("check");
                                    assert!(d.iter().all(|d| d.allowed));
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                    // Time per check, over all the checks made.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * concurrency) as f64)
                })
            })
        });
    }
    group.finish();
    assert_eq!(store.failures(), 0);
}

criterion_group!(benches, redis_checks);
criterion_main!(benches);
