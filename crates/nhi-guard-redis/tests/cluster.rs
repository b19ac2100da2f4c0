//! Every store against a real Redis Cluster of three primaries, started by the test
//! on loopback ports (`redis-server --cluster-enabled yes`, made with
//! `redis-cli --cluster create`). Skipped (with a message) when the binaries are
//! missing, unless `CI=true`.
//!
//! - two replicas share per-client limits exactly, for clients whose keys live on
//!   every primary;
//! - limits on two subjects in one layer (address and client: two hash slots)
//!   still decide in one round trip, and a refusal spends nothing;
//! - killing a primary: the failure policy applies to the clients whose keys it
//!   held, the others are served as before, nothing panics, and every client
//!   recovers when the primary is back;
//! - risk counters and decisions, scope usage and revocations are shared through
//!   the cluster.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::{ClientId, Principal};
use nhi_guard_identity::{Revocations, Revoked};
use nhi_guard_ratelimit::store::{FailurePolicy, Quota, RateLimitStore};
use nhi_guard_ratelimit::{InMemoryRateLimitStore, Limit, RateLimitLayer};
use nhi_guard_redis::revocations::RedisRevocations;
use nhi_guard_redis::risk::RedisRiskStore;
use nhi_guard_redis::testing::RedisCluster;
use nhi_guard_redis::usage::RedisUsageStore;
use nhi_guard_redis::{RedisStore, RedisTarget};
use nhi_guard_risk::store::{RiskKey, RiskStore, StickyAction, StickyDecision};
use nhi_guard_scope::usage::ScopeUsageStore;
use support::principal;
use tower::{Layer, ServiceExt, service_fn};

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<nhi_guard_core::GuardBody<()>>, Infallible>;

fn request(p: &Principal, peer: [u8; 4]) -> Request<()> {
    let mut r = Request::builder().uri("/orders").body(()).expect("request");
    r.extensions_mut().insert(p.clone());
    r.extensions_mut()
        .insert(PeerAddr(SocketAddr::from((peer, 4000))));
    r
}

/// A replica: the given limits over a shared store, in front of a handler that
/// says yes.
fn replica(store: Arc<dyn RateLimitStore>, limits: Vec<Limit>) -> Svc {
    let mut layer = RateLimitLayer::new().shared_store(store);
    for limit in limits {
        layer = layer.limit(limit).expect("limit");
    }
    Svc::new(layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    })))
}

fn per_client() -> Limit {
    Limit::per_client("per-client").quota(Quota::per_minute(1).expect("q").with_burst(10).expect("q"))
}

async fn status(svc: &Svc, req: Request<()>) -> StatusCode {
    svc.clone().oneshot(req).await.expect("infallible").status()
}

async fn store(target: &RedisTarget, policy: FailurePolicy) -> RedisStore {
    let mut builder = RedisStore::builder(target)
        .timeout(Duration::from_millis(500))
        .retry_after_failure(Duration::from_millis(20))
        .failure_policy(policy);
    if policy == FailurePolicy::FallbackLocal {
        builder = builder.fallback_store(Arc::new(InMemoryRateLimitStore::new()));
    }
    builder.connect().await.expect("connects to the cluster")
}

/// The rate-limit keys each node holds (`KEYS` is per node on a cluster).
async fn keys_by_node(cluster: &RedisCluster) -> Vec<BTreeSet<String>> {
    let mut out = Vec::new();
    for node in cluster.nodes() {
        let client = redis::Client::open(node.url()).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("node");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("nhi:rl:*")
            .query_async(&mut conn)
            .await
            .expect("keys");
        out.push(keys.into_iter().collect());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_cluster_admit_exactly_the_quota() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let target = RedisTarget::parse(&cluster.urls()).expect("target");
    assert!(target.is_cluster());
    let a = store(&target, FailurePolicy::FailClosed).await;
    let b = store(&target, FailurePolicy::FailClosed).await;
    let replica_a = replica(Arc::new(a.clone()), vec![per_client()]);
    let replica_b = replica(Arc::new(b.clone()), vec![per_client()]);

    // 24 clients, 25 concurrent requests each, alternating between the replicas:
    // the per-client burst is 10.
    let clients: Vec<Principal> = (0..24).map(|i| principal(&format!("client-{i}"))).collect();
    let mut tasks = Vec::new();
    for (c, p) in clients.iter().enumerate() {
        for i in 0..25 {
            let svc = if (c + i) % 2 == 0 {
                replica_a.clone()
            } else {
                replica_b.clone()
            };
            let req = request(p, [127, 0, 0, 1]);
            tasks.push((c, tokio::spawn(async move { status(&svc, req).await })));
        }
    }
    let mut admitted = vec![0usize; clients.len()];
    for (c, task) in tasks {
        let s = task.await.expect("task");
        assert!(s == StatusCode::OK || s == StatusCode::TOO_MANY_REQUESTS, "{s}");
        admitted[c] += usize::from(s == StatusCode::OK);
    }
    let total: usize = admitted.iter().sum();
    println!(
        "cluster limit accuracy: {total} admitted of {} allowed ({} clients x burst 10, 600 sent over 2 replicas)",
        clients.len() * 10,
        clients.len()
    );
    assert_eq!(admitted, vec![10; clients.len()], "per client");
    assert_eq!(a.failures() + b.failures(), 0);

    // The clients' keys are spread over every primary: the test exercised the
    // whole slot map, not one node.
    let by_node = keys_by_node(&cluster).await;
    assert!(by_node.iter().all(|keys| !keys.is_empty()), "{by_node:?}");
    assert_eq!(by_node.iter().map(BTreeSet::len).sum::<usize>(), clients.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_two_subjects_decide_together_and_a_refusal_spends_nothing() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let target = RedisTarget::parse(&cluster.urls()).expect("target");
    let s = store(&target, FailurePolicy::FailClosed).await;
    // The address key and the client key are in different slots: without the
    // per-subject split the cluster refuses the script (CROSSSLOT) and every
    // request would be a 503.
    let per_address = Limit::per_address(
        "per-address",
        Quota::per_minute(1).expect("q").with_burst(4).expect("q"),
    );
    let svc = replica(Arc::new(s.clone()), vec![per_address, per_client()]);
    let alice = principal("alice");
    let bob = principal("bob");
    let shared_host = [127, 0, 0, 7];

    for _ in 0..4 {
        assert_eq!(status(&svc, request(&alice, shared_host)).await, StatusCode::OK);
    }
    // The address is spent: Bob is refused there, and his own quota is untouched.
    for _ in 0..3 {
        assert_eq!(
            status(&svc, request(&bob, shared_host)).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let mut bob_elsewhere = 0;
    for octet in 20..40 {
        if status(&svc, request(&bob, [127, 0, 0, octet])).await == StatusCode::OK {
            bob_elsewhere += 1;
        }
    }
    assert_eq!(
        bob_elsewhere, 10,
        "the refusals at the spent address gave back what they took from Bob's quota"
    );
    assert_eq!(s.failures(), 0, "no CROSSSLOT, no failure");
}

async fn until_status(svc: &Svc, p: &Principal, want: StatusCode) -> bool {
    // The client re-learns the slot map and reconnects in real time: poll,
    // without asserting how long it takes.
    for _ in 0..300 {
        if status(svc, request(p, [127, 0, 0, 1])).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_applies_the_policy_to_its_slots_and_recovers() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    let target = RedisTarget::parse(&cluster.urls()).expect("target");
    let closed = replica(
        Arc::new(store(&target, FailurePolicy::FailClosed).await),
        vec![per_client()],
    );
    let fallback = replica(
        Arc::new(store(&target, FailurePolicy::FallbackLocal).await),
        vec![per_client()],
    );

    // One request per client, then find which clients the first primary holds.
    let clients: Vec<Principal> = (0..30).map(|i| principal(&format!("tenant-{i}"))).collect();
    for p in &clients {
        assert_eq!(status(&closed, request(p, [127, 0, 0, 1])).await, StatusCode::OK);
    }
    let on_node: BTreeMap<usize, Vec<&Principal>> = {
        let by_node = keys_by_node(&cluster).await;
        let mut m: BTreeMap<usize, Vec<&Principal>> = BTreeMap::new();
        for p in &clients {
            let key = format!("nhi:rl:{{{}}}:per-client:", p.client_id().as_str());
            let node = by_node
                .iter()
                .position(|k| k.contains(&key))
                .expect("a node holds the key");
            m.entry(node).or_default().push(p);
        }
        m
    };
    let victims = on_node[&0].clone();
    let others: Vec<&Principal> = on_node
        .iter()
        .filter(|(n, _)| **n != 0)
        .flat_map(|(_, v)| v.clone())
        .collect();
    assert!(!victims.is_empty() && !others.is_empty());

    // Traffic keeps flowing through both replicas while the primary goes and
    // comes back: every answer is a decision (200, 429, or the fail-closed 503),
    // never a panic or a hang.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (stop, closed, fallback) = (stop.clone(), closed.clone(), fallback.clone());
        let clients: Vec<Principal> = (0..8).map(|i| principal(&format!("background-{i}"))).collect();
        tokio::spawn(async move {
            let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, p) in clients.iter().enumerate() {
                    let svc = if i % 2 == 0 { &closed } else { &fallback };
                    let s =
                        tokio::time::timeout(Duration::from_secs(5), status(svc, request(p, [127, 0, 0, 2])))
                            .await
                            .expect("an answer within the store's timeout");
                    *seen.entry(s.as_u16()).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };

    cluster.kill(0);

    // Fail-closed: 503 for the clients whose slots are gone; the rest are served.
    for p in &victims {
        assert!(
            until_status(&closed, p, StatusCode::SERVICE_UNAVAILABLE).await,
            "{}: fail-closed did not apply",
            p.client_id().as_str()
        );
    }
    for p in &others {
        assert!(
            until_status(&closed, p, StatusCode::OK).await,
            "{}",
            p.client_id().as_str()
        );
    }
    // Fallback: a victim is limited by this replica's own counters (burst 10).
    let victim = victims[0];
    let mut admitted = 0;
    for _ in 0..15 {
        if status(&fallback, request(victim, [127, 0, 0, 1])).await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "the local fallback enforces the quota");

    // The primary comes back (empty: no persistence) with its slots: every
    // client is served from Redis again, the victims from scratch.
    cluster.restart(0);
    for p in &victims {
        assert!(
            until_status(&closed, p, StatusCode::OK).await,
            "{}: never recovered",
            p.client_id().as_str()
        );
    }
    let mut admitted = 0;
    for _ in 0..12 {
        if status(&closed, request(victim, [127, 0, 0, 1])).await == StatusCode::OK {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 9,
        "after recovery the shared quota applies again (one spent while polling)"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = background.await.expect("the background traffic did not panic");
    println!("answers to the background traffic while a primary went and returned: {seen:?}");
    assert!(
        seen.keys().all(|s| [200, 429, 503].contains(s)),
        "only decisions: {seen:?}"
    );
    assert!(seen.get(&200).is_some_and(|n| *n > 0), "{seen:?}");
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000 + secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_usage_and_revocations_are_shared_through_the_cluster() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let urls = cluster.urls();

    // Risk: counters and distinct counts in many slots; sticky decisions and
    // their index in one.
    let timeout = Duration::from_secs(2);
    let ra = RedisRiskStore::connect(&urls, "t", timeout)
        .await
        .expect("risk a");
    let rb = RedisRiskStore::connect(&urls, "t", timeout)
        .await
        .expect("risk b");
    // Whole milliseconds: what the store keeps.
    let now = t(0);
    let w = Duration::from_secs(60);
    for i in 0..20u64 {
        let name: Arc<str> = Arc::from(format!("fail:addr:127.0.0.{i}"));
        ra.increment(name.clone(), w, now).await.expect("incr");
        assert_eq!(rb.increment(name, w, now).await.expect("incr"), 2);
    }
    let d: Arc<str> = Arc::from("creds:addr:127.0.0.9");
    for i in 0..5u8 {
        let s = if i % 2 == 0 { &ra } else { &rb };
        s.add_distinct(d.clone(), Arc::from(&[i][..]), w, now)
            .await
            .expect("pfadd");
    }
    assert_eq!(
        ra.add_distinct(d, Arc::from(&[0u8][..]), w, now)
            .await
            .expect("pfadd"),
        5
    );
    let key = RiskKey::parse("net:127.9.9.0/24").expect("key");
    let block = StickyDecision {
        key: key.clone(),
        action: StickyAction::Block,
        until: now + Duration::from_secs(900),
        score: 90,
        reason: Arc::from("auth_failure_velocity"),
    };
    ra.put(block.clone(), now).await.expect("put");
    let other = RiskKey::parse("addr:127.1.1.1").expect("key");
    assert_eq!(
        rb.find(Arc::from(vec![other, key.clone()]), now)
            .await
            .expect("find"),
        Some(block.clone())
    );
    assert_eq!(rb.list(now).await.expect("list"), vec![block]);
    assert!(rb.lift(key).await.expect("lift"));
    assert!(ra.list(now).await.expect("list").is_empty());

    // Scope usage: one flush script for many clients.
    let ua = RedisUsageStore::connect_with(&urls, "nhi-guard:", Duration::from_secs(86_400), Duration::MAX)
        .await
        .expect("usage a");
    let ub = RedisUsageStore::connect_with(&urls, "nhi-guard:", Duration::from_secs(86_400), Duration::MAX)
        .await
        .expect("usage b");
    for i in 0..10 {
        let c = ClientId::from(format!("svc-{i}").as_str());
        ua.record_use(&c, "orders:read", t(10));
        ub.record_use(&c, "orders:read", t(20));
    }
    ua.flush().await.expect("flush a");
    ub.flush().await.expect("flush b");
    for i in 0..10 {
        let c = ClientId::from(format!("svc-{i}").as_str());
        let u = ua.usage(&c).await.expect("read");
        assert_eq!(u.used["orders:read"].count, 2);
        assert_eq!(u.used["orders:read"].last, t(20));
    }

    // Revocations: published through the cluster, heard on the other replica.
    let va = RedisRevocations::start(&urls, "nhi-guard:", Revocations::new())
        .await
        .expect("revocations a");
    let vb = RedisRevocations::start(&urls, "nhi-guard:", Revocations::new())
        .await
        .expect("revocations b");
    let (_, shared) = va
        .revoke(
            Revoked::Client(ClientId::from("leaked")),
            Some("oncall"),
            SystemTime::now(),
        )
        .await;
    assert!(shared, "the cluster took the revocation");
    let mut heard = false;
    for _ in 0..200 {
        if vb.local().client_revoked("leaked") {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(heard, "the other replica never heard of the revocation");
}
