//! The scope usage store shared through a real `redis-server` (started by the
//! test on a free loopback port): two replicas record, each sees both after a
//! flush; records survive a replica's restart; a flush Redis refuses is kept and
//! sent when Redis is back; reading while Redis is down is an error, not an empty
//! (stale-looking) client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nhi_guard_core::ClientId;
use nhi_guard_redis::testing::RedisServer;
use nhi_guard_redis::usage::RedisUsageStore;
use nhi_guard_scope::usage::ScopeUsageStore;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000 + secs)
}

async fn replica(url: &str) -> RedisUsageStore {
    // No background flush: the test flushes when it means to.
    RedisUsageStore::connect_with(url, "nhi-guard:", Duration::from_secs(86_400), Duration::MAX)
        .await
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_usage_and_the_newest_token() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (a, b) = (replica(&url).await, replica(&url).await);
    let sync = ClientId::from("inventory-sync");

    a.record_use(&sync, "orders:read", t(10));
    a.record_use(&sync, "orders:read", t(20));
    a.record_token(&sync, t(5));
    b.record_use(&sync, "orders:read", t(15));
    b.record_denied(&sync, "orders:write", t(16));
    b.record_token(&sync, t(7));

    // Unflushed: each replica sees its own records only.
    assert_eq!(b.usage(&sync).await.expect("read").used["orders:read"].count, 1);
    a.flush().await.expect("flushed");
    b.flush().await.expect("flushed");
    for replica in [&a, &b] {
        let u = replica.usage(&sync).await.expect("read");
        assert_eq!(u.used["orders:read"].count, 3);
        assert_eq!(u.used["orders:read"].last, t(20));
        assert_eq!(u.denied["orders:write"].count, 1);
        assert_eq!(u.newest_token, Some(t(7)));
    }
    // Unflushed records add to what Redis holds, never twice.
    a.record_use(&sync, "orders:read", t(30));
    assert_eq!(b.usage(&sync).await.expect("read").used["orders:read"].count, 3);
    assert_eq!(a.usage(&sync).await.expect("read").used["orders:read"].count, 4);
    a.flush().await.expect("flushed");
    assert_eq!(a.usage(&sync).await.expect("read").used["orders:read"].count, 4);

    // A replica that restarts (a new store) sees everything.
    let c = replica(&url).await;
    assert_eq!(
        c.usage(&sync).await.expect("read").used["orders:read"].last,
        t(30)
    );
    assert!(c.usage(&ClientId::from("nobody")).await.expect("read").is_empty());

    // Redis down: the flush fails and keeps the records, the report read fails.
    redis.kill();
    a.record_use(&sync, "orders:read", t(40));
    assert!(a.flush().await.is_err());
    let err = a.usage(&sync).await.expect_err("no view without Redis");
    assert!(err.message().starts_with("redis:"), "{err}");
    // Back: the kept records reach Redis with the next flush.
    redis.restart();
    let mut tries = 0;
    while a.flush().await.is_err() {
        tries += 1;
        assert!(tries < 50, "redis did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A restarted redis-server holds no data (no persistence in the test server):
    // what was kept during the outage is what arrives.
    let u = b.usage(&sync).await.expect("read");
    assert_eq!(u.used["orders:read"].count, 1);
    assert_eq!(u.used["orders:read"].last, t(40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_flush_reaches_other_replicas() {
    let Some(redis) = RedisServer::start() else { return };
    let url = redis.url();
    let a = RedisUsageStore::connect_with(
        &url,
        "nhi-guard:",
        Duration::from_secs(86_400),
        Duration::from_millis(20),
    )
    .await
    .expect("connects");
    let b = replica(&url).await;
    let client = ClientId::from("billing-export");
    a.record_use(&client, "invoices:read", t(1));
    let mut tries = 0;
    while b.usage(&client).await.expect("read").is_empty() {
        tries += 1;
        assert!(tries < 200, "the background flush never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Debug output names the prefix, never the URL (it may carry a password).
    let debug = format!("{a:?}");
    assert!(debug.contains("nhi-guard:") && !debug.contains(&url), "{debug}");
}
