//! [`RedisRiskStore`]: the risk layer's shared state in Redis: windowed counters
//! (`INCR`), distinct counts (HyperLogLog `PFADD`/`PFCOUNT`) and sticky decisions
//! (one key per decision with a TTL to its end, plus a sorted-set index for listing),
//! so that every replica adds up the same evidence and honours the same blocks.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nhi_guard_risk::store::{
    RiskKey, RiskStore, RiskStoreError, RiskStoreFuture, StickyAction, StickyDecision,
};

use crate::connection::{Conn, IntoRedisTarget, Timeouts};

/// Keeps the stronger (or, at equal strength, the longer) of the stored decision
/// and the new one, and indexes it. KEYS[1] decision key, KEYS[2] index;
/// ARGV: rank, until_ms, now_ms, encoded value, index member.
const PUT_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
local rank = tonumber(ARGV[1])
local untilms = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if cur then
  local r, u = string.match(cur, '^(%d+)|(%d+)|')
  r = tonumber(r); u = tonumber(u)
  if u and u > now and (r > rank or (r == rank and u >= untilms)) then
    return 0
  end
end
local ttl = untilms - now
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ttl)
redis.call('ZADD', KEYS[2], untilms, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return 1
"#;

/// Risk state in Redis, shared by every replica of a service.
///
/// Windows and expiry follow the caller's clock (`now` of each call), so replicas
/// must keep their clocks in sync (NTP); every key carries a TTL, so Redis memory is
/// bounded by the live windows and decisions. Each operation is bounded by a
/// timeout; the risk layer fails open on errors unless told to fail closed.
#[derive(Clone)]
pub struct RedisRiskStore {
    conn: Conn,
    prefix: Arc<str>,
    timeout: Duration,
    put: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisRiskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRiskStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

fn rank(a: StickyAction) -> u8 {
    match a {
        StickyAction::Throttle => 1,
        StickyAction::StepUp => 2,
        // Block, and anything stronger added later.
        _ => 3,
    }
}

fn error(e: &redis::RedisError) -> RiskStoreError {
    RiskStoreError::new(format!("redis: {:?}", e.kind()))
}

/// `rank|until_ms|score|action|reason`: the rank first so the script can compare.
fn encode(d: &StickyDecision) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        rank(d.action),
        ms(d.until),
        d.score,
        d.action.as_str(),
        d.reason
    )
}

fn decode(key: RiskKey, v: &str) -> Option<StickyDecision> {
    let mut parts = v.splitn(5, '|');
    let _rank = parts.next()?;
    let until: u64 = parts.next()?.parse().ok()?;
    let score: u32 = parts.next()?.parse().ok()?;
    let action = StickyAction::parse(parts.next()?)?;
    let reason = parts.next().unwrap_or("");
    Some(StickyDecision {
        key,
        action,
        until: UNIX_EPOCH + Duration::from_millis(until),
        score,
        reason: Arc::from(reason),
    })
}

impl RedisRiskStore {
    /// Connects to `target` (a URL such as `redis://127.0.0.1:6379` or
    /// `rediss://…`, a comma-separated list of Redis Cluster seeds, or a
    /// [`RedisTarget`](crate::RedisTarget)), naming keys `<prefix>:...`; each
    /// operation times out after `timeout`.
    ///
    /// # Errors
    /// An invalid target or an unreachable server.
    pub async fn connect(
        target: impl IntoRedisTarget,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RiskStoreError> {
        let target = target
            .into_redis_target()
            .map_err(|e| RiskStoreError::new(e.to_string()))?;
        let timeouts = Timeouts {
            connect: timeout.max(Duration::from_millis(100)),
            response: timeout,
            retries: 2,
            max_delay: Duration::from_millis(500),
        };
        let conn = target.connect(timeouts).await.map_err(|e| error(&e))?;
        Ok(Self {
            conn,
            prefix: Arc::from(prefix),
            timeout,
            put: Arc::new(redis::Script::new(PUT_SCRIPT)),
        })
    }

    /// Sticky decisions and their index share the hash tag `{sticky}`: the script
    /// that writes both, and the look-up of several keys, stay in one slot of a
    /// Redis Cluster.
    fn decision_key(&self, key: &RiskKey) -> String {
        format!("{}:risk:{{sticky}}:{key}", self.prefix)
    }

    fn index_key(&self) -> String {
        format!("{}:risk:{{sticky}}-index", self.prefix)
    }

    async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, RiskStoreError> {
        let result = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| error(&e)),
            Err(_) => Err(RiskStoreError::new("redis: no answer within the timeout")),
        };
        if result.is_err() {
            nhi_guard_core::metrics::store_error("risk", "redis");
        }
        result
    }

    async fn fetch(&self, keys: &[RiskKey], now: SystemTime) -> Result<Vec<StickyDecision>, RiskStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.decision_key(k)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = self
            .timed(redis::cmd("MGET").arg(&names).query_async(&mut conn))
            .await?;
        Ok(keys
            .iter()
            .zip(values)
            .filter_map(|(k, v)| decode(k.clone(), v.as_deref()?))
            .filter(|d| d.is_active(now))
            .collect())
    }
}

impl RiskStore for RedisRiskStore {
    fn increment(&self, name: Arc<str>, window: Duration, now: SystemTime) -> RiskStoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
            let key = format!("{}:risk:count:{name}:{}", this.prefix, ms(now) / w);
            let mut conn = this.conn.clone();
            let (n,): (u64,) = this
                .timed(
                    redis::pipe()
                        .atomic()
                        .incr(&key, 1u64)
                        .pexpire(&key, i64::try_from(w.saturating_mul(2)).unwrap_or(i64::MAX))
                        .ignore()
                        .query_async(&mut conn),
                )
                .await?;
            Ok(n)
        })
    }

    fn add_distinct(
        &self,
        name: Arc<str>,
        member: Arc<[u8]>,
        window: Duration,
        now: SystemTime,
    ) -> RiskStoreFuture<u64> {
        let this = self.clone();
        Box::pin(async move {
            let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
            let key = format!("{}:risk:distinct:{name}:{}", this.prefix, ms(now) / w);
            let mut conn = this.conn.clone();
            let (n,): (u64,) = this
                .timed(
                    redis::pipe()
                        .atomic()
                        .cmd("PFADD")
                        .arg(&key)
                        .arg(&*member)
                        .ignore()
                        .pexpire(&key, i64::try_from(w.saturating_mul(2)).unwrap_or(i64::MAX))
                        .ignore()
                        .cmd("PFCOUNT")
                        .arg(&key)
                        .query_async(&mut conn),
                )
                .await?;
            Ok(n)
        })
    }

    fn put(&self, decision: StickyDecision, now: SystemTime) -> RiskStoreFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn.clone();
            let mut inv = this.put.prepare_invoke();
            inv.key(this.decision_key(&decision.key))
                .key(this.index_key())
                .arg(rank(decision.action))
                .arg(ms(decision.until))
                .arg(ms(now))
                .arg(encode(&decision))
                .arg(decision.key.to_string());
            let _: i64 = this.timed(inv.invoke_async(&mut conn)).await?;
            Ok(())
        })
    }

    fn find(&self, keys: Arc<[RiskKey]>, now: SystemTime) -> RiskStoreFuture<Option<StickyDecision>> {
        let this = self.clone();
        Box::pin(async move {
            let found = this.fetch(&keys, now).await?;
            Ok(found.into_iter().max_by_key(|d| d.action))
        })
    }

    fn list(&self, now: SystemTime) -> RiskStoreFuture<Vec<StickyDecision>> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn.clone();
            let members: Vec<String> = this
                .timed(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(this.index_key())
                        .arg(format!("({}", ms(now)))
                        .arg("+inf")
                        .query_async(&mut conn),
                )
                .await?;
            let keys: Vec<RiskKey> = members.iter().filter_map(|m| RiskKey::parse(m)).collect();
            let mut out = this.fetch(&keys, now).await?;
            out.sort_by(|a, b| b.action.cmp(&a.action).then_with(|| a.key.cmp(&b.key)));
            Ok(out)
        })
    }

    fn lift(&self, key: RiskKey) -> RiskStoreFuture<bool> {
        let this = self.clone();
        Box::pin(async move {
            let mut conn = this.conn.clone();
            let (deleted,): (u64,) = this
                .timed(
                    redis::pipe()
                        .atomic()
                        .del(this.decision_key(&key))
                        .zrem(this.index_key(), key.to_string())
                        .ignore()
                        .query_async(&mut conn),
                )
                .await?;
            Ok(deleted > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    //! Two store instances (two replicas) against a real `redis-server` started
    //! here on a free loopback port; skipped with a message when the binary is
    //! missing, unless `CI=true`.

    use super::*;
    use crate::testing::RedisServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_share_counters_distinct_counts_and_decisions() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let url = server.url();
        let a = RedisRiskStore::connect(&url, "t", Duration::from_secs(2))
            .await
            .expect("a");
        let b = RedisRiskStore::connect(&url, "t", Duration::from_secs(2))
            .await
            .expect("b");
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let w = Duration::from_secs(60);
        let name: Arc<str> = Arc::from("fail:addr:127.0.0.9");

        // Counters add up across replicas, per window.
        assert_eq!(a.increment(name.clone(), w, now).await.expect("incr"), 1);
        assert_eq!(b.increment(name.clone(), w, now).await.expect("incr"), 2);
        assert_eq!(a.increment(name.clone(), w, now).await.expect("incr"), 3);
        assert_eq!(
            b.increment(name.clone(), w, now + w).await.expect("incr"),
            1,
            "next window"
        );

        // Distinct counts merge in one HyperLogLog.
        let d: Arc<str> = Arc::from("creds:addr:127.0.0.9");
        for i in 0..5u8 {
            let store = if i % 2 == 0 { &a } else { &b };
            store
                .add_distinct(d.clone(), Arc::from(&[i][..]), w, now)
                .await
                .expect("pfadd");
        }
        assert_eq!(
            a.add_distinct(d.clone(), Arc::from(&[0u8][..]), w, now)
                .await
                .expect("pfadd"),
            5
        );

        // A block put by one replica is found by the other; weaker decisions do
        // not replace it; both list it; a lift by either ends it for both.
        let key = RiskKey::parse("net:127.9.9.0/24").expect("key");
        let block = StickyDecision {
            key: key.clone(),
            action: StickyAction::Block,
            until: now + Duration::from_secs(900),
            score: 90,
            reason: Arc::from("auth_failure_velocity|with a bar"),
        };
        a.put(block.clone(), now).await.expect("put");
        let throttle = StickyDecision {
            action: StickyAction::Throttle,
            until: now + Duration::from_secs(3_000),
            ..block.clone()
        };
        b.put(throttle, now).await.expect("put");
        let other = RiskKey::parse("addr:127.1.1.1").expect("key");
        let found = b
            .find(
                Arc::from(vec![other.clone(), key.clone()]),
                now + Duration::from_secs(10),
            )
            .await
            .expect("find");
        assert_eq!(found.as_ref(), Some(&block));
        assert_eq!(a.list(now).await.expect("list"), vec![block.clone()]);
        assert!(b.lift(key.clone()).await.expect("lift"));
        assert_eq!(
            a.find(Arc::from(vec![key.clone()]), now).await.expect("find"),
            None
        );
        assert!(a.list(now).await.expect("list").is_empty());
        assert!(!a.lift(key.clone()).await.expect("lift"), "nothing left to lift");

        // Decisions lapse on their own (by the caller's clock).
        a.put(block.clone(), now).await.expect("put");
        let later = now + Duration::from_secs(901);
        assert_eq!(b.find(Arc::from(vec![key]), later).await.expect("find"), None);
        assert!(b.list(later).await.expect("list").is_empty());
        drop(server);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_server_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let r = RedisRiskStore::connect(
            &format!("redis://127.0.0.1:{port}"),
            "t",
            Duration::from_millis(200),
        )
        .await;
        assert!(r.is_err());
        assert!(
            RedisRiskStore::connect("not a url", "t", Duration::from_millis(200))
                .await
                .is_err()
        );
    }
}
