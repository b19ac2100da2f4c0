//! The whole stack on two replicas sharing state through a real `redis-server`
//! that the test starts on a free loopback port: rate limits in
//! `nhi_guard_redis::RedisStore`, risk decisions in `RedisRiskStore`. Each replica
//! is an independent `NhiGuard` stack (its own layers, connections, local state and
//! audit log) in front of its own axum router; only Redis joins them.
//!
//! Skipped with a message when /usr/bin/redis-server is missing, unless `CI=true`,
//! where it fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use nhi_guard::audit::{AuditHandle, AuditLayer, AuditWriter, JsonLinesFile, verify_file};
use nhi_guard::core::address::PeerAddr;
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, Tier};
use nhi_guard::identity::IdentityLayer;
use nhi_guard::ratelimit::store::Quota;
use nhi_guard::ratelimit::{Limit, RateLimitLayer};
use nhi_guard::risk::store::RiskKey;
use nhi_guard::risk::{RiskLayer, RiskOperator};
use nhi_guard::scope::{Policy, Require, ScopeLayer};
use nhi_guard::{NhiGuard, ScopeSet};
use nhi_guard_redis::RedisStore;
use nhi_guard_redis::risk::RedisRiskStore;
use nhi_guard_redis::testing::RedisServer;
use tower::ServiceExt;

const BILLING_KEY: &str = "nhik_test_billing_7c1d9e2a4b";
const REPORTS_KEY: &str = "nhik_test_reports_3f8a6b0c5d";

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("nhi-guard-redis-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inventory() -> Inventory {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 90);
    Inventory::builder()
        .tier(
            "standard",
            Tier {
                per_second: 50,
                burst: 100,
            },
        )
        .client(
            ClientRecord::builder("billing-export", "finance@example.com", "Nightly export", expires)
                .scopes(ScopeSet::parse("orders:read").expect("scopes"))
                .tier("standard")
                .api_key(BILLING_KEY)
                .build()
                .expect("client"),
        )
        .client(
            ClientRecord::builder("reporting-bot", "analytics@example.com", "Sales report", expires)
                .scopes(ScopeSet::parse("orders:read").expect("scopes"))
                .tier("standard")
                .api_key(REPORTS_KEY)
                .build()
                .expect("client"),
        )
        .build()
        .expect("inventory")
}

/// One replica: its own stack, stores and audit log.
struct Replica {
    router: Router,
    risk: RiskOperator,
    audit: AuditHandle,
    log: PathBuf,
}

/// `client_quota`: the fixed quota of the per-client limit (both replicas must be
/// configured alike, as a deployment would be).
async fn replica(
    name: &str,
    redis: &RedisServer,
    prefix: &str,
    clock: &ManualClock,
    client_quota: Quota,
    dir: &TempDir,
) -> Replica {
    let registry = Arc::new(InMemoryRegistry::new(inventory()));
    let clock_arc = Arc::new(clock.clone());
    // Rate limits: one Redis connection per replica, keys under one prefix.
    let store = Arc::new(
        RedisStore::builder(redis.url())
            .key_prefix(format!("{prefix}:rl:"))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .expect("redis rate-limit store"),
    );
    let risk_store = RedisRiskStore::connect(&redis.url(), &format!("{prefix}:risk"), Duration::from_secs(2))
        .await
        .expect("redis risk store");
    let log = dir.0.join(format!("{name}.jsonl"));
    let (writer, audit) = AuditWriter::builder()
        .clock(clock_arc.clone())
        .spawn(JsonLinesFile::open(&log).expect("audit log"))
        .expect("audit writer");
    let risk = RiskLayer::new().shared_store(Arc::new(risk_store));
    let operator = risk.operator();
    let guard = NhiGuard::builder(registry.clone())
        .clock(clock_arc)
        .audit(AuditLayer::new(writer).service_name(name.to_owned()))
        .address_rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_address(
                    "per-address",
                    Quota::per_second(1000)
                        .and_then(|q| q.with_burst(1000))
                        .expect("quota"),
                ))
                .expect("limit")
                .shared_store(store.clone()),
        )
        .identity(IdentityLayer::builder(registry))
        .risk(risk)
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client").quota(client_quota))
                .expect("limit")
                .shared_store(store),
        )
        .scope(ScopeLayer::new(
            Policy::builder()
                .get("/orders", Require::all_of("orders:read"))
                .build()
                .expect("policy"),
        ))
        .build()
        .expect("the stack builds");
    let router = Router::new()
        .route("/orders", get(|| async { "[]" }))
        .layer(guard);
    Replica {
        router,
        risk: operator,
        audit,
        log,
    }
}

struct Reply {
    status: StatusCode,
    body: serde_json::Value,
}

impl Replica {
    async fn get(&self, key: &str, peer: &str) -> Reply {
        let mut req = Request::get("/orders")
            .header("x-api-key", key)
            .body(axum::body::Body::empty())
            .expect("request");
        req.extensions_mut()
            .insert(PeerAddr(format!("{peer}:40000").parse().expect("peer")));
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Flushes the audit log, checks its hash chain, and returns its records.
    async fn finish(self) -> Vec<serde_json::Value> {
        self.audit.shutdown().await.expect("audit flushed");
        let v = verify_file(&self.log).expect("readable log");
        assert!(v.first_break.is_none(), "{:?}", v.first_break);
        std::fs::read_to_string(&self.log)
            .expect("log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}

fn denials_by(records: &[serde_json::Value], control: &str) -> usize {
    records
        .iter()
        .filter(|r| r["unmapped"]["nhi_guard"]["control"] == control)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_admit_no_more_than_the_quota() {
    let Some(redis) = RedisServer::start() else { return };
    let dir = TempDir::new("quota");
    let clock = ManualClock::now();
    // 10 per hour: the whole test runs well inside one emission interval.
    let quota = Quota::new(10, Duration::from_secs(3600))
        .and_then(|q| q.with_burst(10))
        .expect("quota");
    let a = replica("replica-a", &redis, "quota", &clock, quota, &dir).await;
    let b = replica("replica-b", &redis, "quota", &clock, quota, &dir).await;

    // 30 calls alternating between the replicas: each alone would admit 10 of its
    // 15; together they admit 10.
    let mut admitted = [0_u32; 2];
    for i in 0..30 {
        let (r, n) = if i % 2 == 0 { (&a, 0) } else { (&b, 1) };
        let reply = r.get(BILLING_KEY, "198.51.100.20").await;
        match reply.status {
            StatusCode::OK => admitted[n] += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(reply.body["control"], "rate_limit", "{}", reply.body);
                assert_eq!(
                    reply.body["violated-policies"],
                    serde_json::json!(["per-client"]),
                    "{}",
                    reply.body
                );
            }
            other => panic!("call {i}: unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(admitted[0] + admitted[1], 10, "{admitted:?}");
    assert_eq!(admitted, [5, 5], "the replicas took turns");

    // Another client has its own quota on both replicas.
    assert_eq!(a.get(REPORTS_KEY, "198.51.100.21").await.status, StatusCode::OK);
    assert_eq!(b.get(REPORTS_KEY, "198.51.100.21").await.status, StatusCode::OK);

    // Each replica audited its own refusals: 20 in all, one record per request.
    let (ra, rb) = (a.finish().await, b.finish().await);
    assert_eq!(denials_by(&ra, "rate_limit") + denials_by(&rb, "rate_limit"), 20);
    let requests = |rs: &[serde_json::Value]| rs.iter().filter(|r| r["class_uid"] == 6003).count();
    assert_eq!((requests(&ra), requests(&rb)), (16, 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_risk_block_made_on_one_replica_is_enforced_by_the_other() {
    let Some(redis) = RedisServer::start() else { return };
    let dir = TempDir::new("risk");
    let clock = ManualClock::now();
    let quota = Quota::per_second(100)
        .and_then(|q| q.with_burst(100))
        .expect("quota");
    let a = replica("replica-a", &redis, "risk", &clock, quota, &dir).await;
    let b = replica("replica-b", &redis, "risk", &clock, quota, &dir).await;
    let attacker = "203.0.113.9";

    // Replica A alone sees an address guessing API keys, one every 10 s: identity
    // refuses each, risk throttles, then blocks.
    let mut blocked_at = None;
    for i in 0..20 {
        let reply = a.get(&format!("nhik_guess_{i:04}_aaaaaaaa"), attacker).await;
        match (reply.status, reply.body["control"].as_str()) {
            (StatusCode::UNAUTHORIZED, Some("identity")) | (StatusCode::TOO_MANY_REQUESTS, Some("risk")) => {}
            (StatusCode::FORBIDDEN, Some("risk")) => {
                assert_eq!(reply.body["reason"], "risk_blocked", "{}", reply.body);
                blocked_at = Some(i);
                break;
            }
            (status, _) => panic!("guess {i}: unexpected {status}: {}", reply.body),
        }
        clock.advance(Duration::from_secs(10));
    }
    let blocked_at = blocked_at.expect("replica A never blocked the address");
    assert!(blocked_at >= 3, "blocked after only {blocked_at} guesses");

    // Replica B never saw the guesses, yet refuses even a valid key from there.
    let reply = b.get(BILLING_KEY, attacker).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    assert_eq!(reply.body["control"], "risk");
    assert_eq!(reply.body["reason"], "risk_blocked");
    // ... while serving everyone else.
    assert_eq!(b.get(BILLING_KEY, "198.51.100.30").await.status, StatusCode::OK);

    // Both operators list the shared block; a lift from B reaches A.
    let key = RiskKey::parse(&format!("addr:{attacker}")).expect("key");
    for op in [&a.risk, &b.risk] {
        let listed: Vec<String> = op
            .active_shared()
            .await
            .expect("list")
            .iter()
            .map(|d| d.key.to_string())
            .collect();
        assert!(listed.contains(&key.to_string()), "{listed:?}");
    }
    // An operator's lift on B clears the shared block: B serves the address again.
    // (A, which saw the guesses itself, keeps scoring the address from its own
    // recent signals until they age out.)
    assert!(b.risk.lift_everywhere(&key).await.expect("lift"));
    assert_eq!(b.get(BILLING_KEY, attacker).await.status, StatusCode::OK);
    assert!(b.risk.active_shared().await.expect("list").is_empty());
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(a.get(BILLING_KEY, attacker).await.status, StatusCode::OK);

    let (ra, rb) = (a.finish().await, b.finish().await);
    assert!(denials_by(&ra, "identity") >= 3);
    assert_eq!(denials_by(&rb, "identity"), 0);
    assert_eq!(denials_by(&rb, "risk"), 1, "B's refusal is in B's own audit log");
}
