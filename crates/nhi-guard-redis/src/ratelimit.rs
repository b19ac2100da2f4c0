//! `RedisStore`: GCRA rate limiting shared by every replica through one Redis.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nhi_guard_ratelimit::store::{
    CheckMode, FailurePolicy, GcraStep, RateLimitCheck, RateLimitDecision, RateLimitStore, StoreError,
    StoreErrorKind, StoreFuture,
};

use crate::connection::{Conn, IntoRedisTarget, RedisTarget, Timeouts};

/// The script: checks every limit of one request against Redis server time and,
/// if all pass (and the mode is consume), stores every new TAT with a TTL. One
/// round trip, atomic (Redis runs a script alone).
///
/// A TAT is stored as `"<seconds>:<nanoseconds>"` so that every number the script
/// handles stays below 2^53 and is exact in Lua's doubles: differences are bounded
/// by the quota's tolerance (at most 2^50 ns, enforced by `Quota`).
///
/// `ARGV[1]` is `1` to consume, `0` to peek; then, per key, the emission interval
/// `T`, the tolerance `τ` and the cost. Returns `{all_passed, now_s, now_ns,
/// diff_1, …, diff_n}` where `diff_i` is the key's TAT − now before the request
/// (clamped to `[0, τ]`).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_n = tonumber(t[2]) * 1000
local consume = ARGV[1] == '1'
local n = #KEYS
local diffs = {}
local news = {}
local pending = {}
local all = true
for i = 1, n do
  local T = tonumber(ARGV[3 * i - 1])
  local tau = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local diff = pending[KEYS[i]]
  if diff == nil then
    diff = 0
    local v = redis.call('GET', KEYS[i])
    if v then
      local sp = string.find(v, ':', 1, true)
      if sp then
        diff = (tonumber(string.sub(v, 1, sp - 1)) - now_s) * 1000000000
          + (tonumber(string.sub(v, sp + 1)) - now_n)
      end
    end
    if diff < 0 then diff = 0 end
    if diff > tau then diff = tau end
  end
  diffs[i] = diff
  local nd = diff + cost * T
  if nd <= tau then
    news[i] = nd
    pending[KEYS[i]] = nd
  else
    news[i] = -1
    all = false
  end
end
if all and consume then
  for i = 1, n do
    local total = now_n + news[i]
    local s = now_s + math.floor(total / 1000000000)
    local ns = total % 1000000000
    redis.call('SET', KEYS[i], string.format('%d:%d', s, ns), 'PX', math.floor(news[i] / 1000000) + 1)
  end
end
local out = {all and 1 or 0, now_s, now_n}
for i = 1, n do out[#out + 1] = diffs[i] end
return out
";

/// Gives back what a request spent (Redis Cluster, limits on several subjects,
/// refused by another subject's limit): per key, `ARGV[i]` nanoseconds come off
/// its TAT, which never goes below now (the key is then deleted); the TTL stays.
const REFUND_LUA: &str = r"
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_n = tonumber(t[2]) * 1000
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  local sp = v and string.find(v, ':', 1, true)
  if sp then
    local diff = (tonumber(string.sub(v, 1, sp - 1)) - now_s) * 1000000000
      + (tonumber(string.sub(v, sp + 1)) - now_n) - tonumber(ARGV[i])
    if diff <= 0 then
      redis.call('DEL', KEYS[i])
    else
      local total = now_n + diff
      redis.call('SET', KEYS[i],
        string.format('%d:%d', now_s + math.floor(total / 1000000000), total % 1000000000), 'KEEPTTL')
    end
  end
end
return 0
";

use nhi_guard_core::config::ConfigError;

/// Builds a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder {
    target: Result<RedisTarget, ConfigError>,
    prefix: String,
    timeout: Duration,
    retry_after_failure: Duration,
    policy: FailurePolicy,
    fallback: Option<Arc<dyn RateLimitStore>>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("retry_after_failure", &self.retry_after_failure)
            .field("policy", &self.policy)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// Key prefix (default `nhi:rl`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a check may take before the failure policy applies (default 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After a failure, how long to apply the failure policy without trying Redis
    /// (default 1 s), so a dead Redis does not cost every request a timeout. The
    /// connection manager keeps reconnecting meanwhile.
    pub fn retry_after_failure(mut self, pause: Duration) -> Self {
        self.retry_after_failure = pause;
        self
    }

    /// What to do when Redis is slow or down (default: fail closed).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The store to decide with under [`FailurePolicy::FallbackLocal`], typically
    /// `nhi_guard_ratelimit::InMemoryRateLimitStore`.
    pub fn fallback_store(mut self, store: Arc<dyn RateLimitStore>) -> Self {
        self.fallback = Some(store);
        self
    }

    fn validate(&self) -> Result<(&RedisTarget, Timeouts), ConfigError> {
        if self.policy == FailurePolicy::FallbackLocal && self.fallback.is_none() {
            return Err(ConfigError::new(
                "redis",
                "fallback_store",
                "FailurePolicy::FallbackLocal needs a fallback store",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("redis", "timeout", "must be longer than zero"));
        }
        let target = self.target.as_ref().map_err(Clone::clone)?;
        let timeouts = Timeouts {
            connect: self.timeout.max(Duration::from_millis(100)),
            response: self.timeout,
            retries: 1,
            max_delay: Duration::from_millis(500),
        };
        Ok((target, timeouts))
    }

    fn finish(self, conn: Conn) -> RedisStore {
        RedisStore {
            inner: Arc::new(Inner {
                conn,
                script: redis::Script::new(GCRA_LUA),
                refund: redis::Script::new(REFUND_LUA),
                prefix: self.prefix,
                timeout: self.timeout,
                retry_after_failure: self.retry_after_failure,
                policy: self.policy,
                fallback: self.fallback,
                epoch: Instant::now(),
                down_until: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// Connects now.
    ///
    /// # Errors
    /// The configuration is invalid, or Redis cannot be reached (field `url`).
    pub async fn connect(self) -> Result<RedisStore, ConfigError> {
        let (target, timeouts) = self.validate()?;
        let conn = target
            .connect(timeouts)
            .await
            .map_err(|e| ConfigError::new("redis", "url", format!("cannot connect ({:?})", e.kind())))?;
        Ok(self.finish(conn))
    }

    /// Connects on first use, so the service can start while Redis is down (the
    /// failure policy applies until it is up). Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn build_lazy(self) -> Result<RedisStore, ConfigError> {
        let (target, timeouts) = self.validate()?;
        let conn = target
            .connect_lazy(timeouts)
            .map_err(|e| ConfigError::new("redis", "url", format!("cannot connect ({:?})", e.kind())))?;
        Ok(self.finish(conn))
    }
}

struct Inner {
    conn: Conn,
    script: redis::Script,
    refund: redis::Script,
    prefix: String,
    timeout: Duration,
    retry_after_failure: Duration,
    policy: FailurePolicy,
    fallback: Option<Arc<dyn RateLimitStore>>,
    epoch: Instant,
    /// Nanoseconds since `epoch` until which Redis is not tried (0: try).
    down_until: AtomicU64,
    failures: AtomicU64,
}

/// GCRA state in Redis, shared by every replica: one atomic Lua script per request
/// checks all of its limits in a single round trip, on the Redis server's clock (so
/// replicas with skewed clocks agree), and stores each key with a TTL equal to the
/// time its quota takes to recover (so Redis memory is bounded by the live keys).
///
/// When Redis is slow (over the timeout) or down, the [`FailurePolicy`] applies:
/// let requests through, refuse them (the layer answers 503), or decide with a
/// local fallback store. The connection manager reconnects in the background; after
/// a failure the store waits `retry_after_failure` before trying Redis again.
///
/// # Keys and Redis Cluster
///
/// Keys look like `nhi:rl:{<subject>}:<policy>:<qualifier>`, with the subject (client
/// id, address, fingerprint) as the hash tag, so that all of one subject's limits
/// (per client, per client and route) live in one slot and one atomic script
/// decides them. On a Redis Cluster ([`RedisTarget`] with several seeds), a layer
/// whose limits name several subjects (address and client) sends one script per
/// subject, all at once: still one round trip. Each script is atomic on its own;
/// when one subject refuses after another spent, what was spent is given back
/// (a second round trip, on refusals only), so a refused request costs nothing.
/// On one server every limit is in one script.
///
/// ```no_run
/// use std::sync::Arc;
/// use nhi_guard_ratelimit::store::FailurePolicy;
/// use nhi_guard_ratelimit::{InMemoryRateLimitStore, Limit, RateLimitLayer};
/// use nhi_guard_redis::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .failure_policy(FailurePolicy::FallbackLocal)
///     .fallback_store(Arc::new(InMemoryRateLimitStore::new()))
///     .connect()
///     .await?;
/// let layer = RateLimitLayer::new()
///     .shared_store(Arc::new(store))
///     .limit(Limit::per_client("per-client"))?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("policy", &self.inner.policy)
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

/// Appends `bytes` to a key: as they are when they are plain (`A-Z a-z 0-9 - _ . /
/// @`), else `~` and lower-case hex. The separators `:` `{` `}` never appear raw,
/// so keys are unambiguous.
fn push_encoded(out: &mut String, bytes: &[u8]) {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'@');
    if bytes.iter().all(plain) {
        // All ASCII.
        out.extend(bytes.iter().map(|&b| char::from(b)));
    } else {
        out.push('~');
        for b in bytes {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
    }
}

impl RedisStore {
    /// A builder for `target`: a URL (`redis://[user:password@]host:port[/db]`,
    /// `rediss://` for TLS), a comma-separated list of Redis Cluster seeds, or a
    /// [`RedisTarget`] (with a CA file). A target that does not parse fails
    /// `connect`/`build_lazy` with field `url`.
    pub fn builder(target: impl IntoRedisTarget) -> RedisStoreBuilder {
        RedisStoreBuilder {
            target: target.into_redis_target(),
            prefix: String::from("nhi:rl"),
            timeout: Duration::from_millis(50),
            retry_after_failure: Duration::from_secs(1),
            policy: FailurePolicy::FailClosed,
            fallback: None,
        }
    }

    /// Checks that failed to reach Redis since the store was built.
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// The Redis key of one check.
    pub fn key_of(&self, check: &RateLimitCheck) -> String {
        key_of(&self.inner.prefix, check)
    }
}

fn key_of(prefix: &str, c: &RateLimitCheck) -> String {
    let mut k =
        String::with_capacity(prefix.len() + c.key.len() * 2 + c.policy.len() + c.qualifier.len() + 8);
    k.push_str(prefix);
    k.push_str(":{");
    push_encoded(&mut k, &c.key);
    k.push_str("}:");
    push_encoded(&mut k, c.policy.as_bytes());
    k.push(':');
    push_encoded(&mut k, &c.qualifier);
    k
}

impl Inner {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs the script over `checks` (keys that share one hash slot on a cluster).
    async fn run(&self, checks: &[RateLimitCheck], mode: CheckMode) -> Result<Vec<i64>, StoreError> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(if mode == CheckMode::Consume { "1" } else { "0" });
        for c in checks {
            inv.key(key_of(&self.prefix, c));
            inv.arg(c.quota.emission_nanos())
                .arg(c.quota.tolerance_nanos())
                .arg(c.quota.effective_cost(c.cost));
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(|e| redis_error(&e))
    }

    async fn eval(
        &self,
        checks: &[RateLimitCheck],
        mode: CheckMode,
    ) -> Result<Vec<RateLimitDecision>, StoreError> {
        if !self.conn.is_cluster() || checks.iter().all(|c| c.key == checks[0].key) {
            // One server, or one subject (one hash tag, one slot): one atomic script.
            let reply = self.run(checks, mode).await?;
            let (passed, steps) = steps_from_reply(checks, &reply)?;
            return Ok(decide(checks, mode, passed, steps));
        }
        // A cluster and limits on several subjects: one script per subject's slot,
        // all sent at once (one round trip). Each is atomic on its own; when one
        // refuses after another spent, what the other spent is given back.
        let groups = by_subject(checks);
        let replies =
            futures_util::future::try_join_all(groups.iter().map(|(_, g)| self.run(g, mode))).await?;
        let mut steps: Vec<Option<(GcraStep, u64)>> = vec![None; checks.len()];
        let mut passed = Vec::with_capacity(groups.len());
        for ((at, group), reply) in groups.iter().zip(&replies) {
            let (ok, group_steps) = steps_from_reply(group, reply)?;
            passed.push(ok);
            for (&i, step) in at.iter().zip(group_steps) {
                steps[i] = Some(step);
            }
        }
        // Every index is in exactly one group.
        let steps: Vec<(GcraStep, u64)> = steps.into_iter().flatten().collect();
        let all = passed.iter().all(|&p| p);
        if !all && mode == CheckMode::Consume {
            let spent = groups
                .iter()
                .zip(&passed)
                .filter(|&(_, &ok)| ok)
                .map(|((_, g), _)| self.give_back(g));
            if let Err(err) = futures_util::future::try_join_all(spent).await {
                tracing::warn!(target: "nhi_guard::redis", error = %err, "a refused request's spending on another subject was not given back");
            }
        }
        Ok(decide(checks, mode, all, steps))
    }

    /// Takes back what `checks` spent (a request refused by another subject's
    /// limit).
    async fn give_back(&self, checks: &[RateLimitCheck]) -> Result<(), StoreError> {
        let mut inv = self.refund.prepare_invoke();
        for c in checks {
            inv.key(key_of(&self.prefix, c)).arg(
                c.quota
                    .emission_nanos()
                    .saturating_mul(u64::from(c.quota.effective_cost(c.cost))),
            );
        }
        let mut conn = self.conn.clone();
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| redis_error(&e))
    }

    async fn on_failure(
        &self,
        checks: Arc<[RateLimitCheck]>,
        mode: CheckMode,
        err: StoreError,
    ) -> Result<Vec<RateLimitDecision>, StoreError> {
        nhi_guard_core::metrics::store_fallback("rate_limit", self.policy.as_str());
        match self.policy {
            FailurePolicy::FailClosed => Err(err),
            FailurePolicy::FallbackLocal => match &self.fallback {
                Some(store) => store.check(checks, mode).await,
                None => Err(err),
            },
            // FailOpen, and any future policy: let the request through.
            _ => Ok(checks
                .iter()
                .map(|c| RateLimitDecision::unchecked(&c.quota))
                .collect()),
        }
    }
}

fn redis_error(e: &redis::RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
    {
        StoreErrorKind::Unavailable
    } else {
        StoreErrorKind::Protocol
    };
    StoreError::new(kind, format!("redis: {:?}", e.kind()))
}

/// The checks grouped by subject (the hash tag of their keys), in order of first
/// appearance, each with the indices its checks had.
fn by_subject(checks: &[RateLimitCheck]) -> Vec<(Vec<usize>, Vec<RateLimitCheck>)> {
    let mut groups: Vec<(Vec<usize>, Vec<RateLimitCheck>)> = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        match groups.iter_mut().find(|(_, g)| g[0].key == c.key) {
            Some((at, g)) => {
                at.push(i);
                g.push(c.clone());
            }
            None => groups.push((vec![i], vec![c.clone()])),
        }
    }
    groups
}

/// Reads the script's reply for `checks` into GCRA steps (with each key's state
/// before), recomputed with the same arithmetic as every store.
fn steps_from_reply(
    checks: &[RateLimitCheck],
    reply: &[i64],
) -> Result<(bool, Vec<(GcraStep, u64)>), StoreError> {
    let bad = |what: &str| {
        StoreError::new(
            StoreErrorKind::Protocol,
            format!("unexpected script reply: {what}"),
        )
    };
    if reply.len() != checks.len() + 3 {
        return Err(bad("length"));
    }
    let passed = reply[0] == 1;
    // Repeated keys see their earlier spending in the script; recompute alike.
    let mut all = true;
    let mut out: Vec<(GcraStep, u64)> = Vec::with_capacity(checks.len());
    for (i, (c, &diff)) in checks.iter().zip(&reply[3..]).enumerate() {
        let earlier = (0..i).rev().find(|&j| {
            checks[j].policy == c.policy && checks[j].key == c.key && checks[j].qualifier == c.qualifier
        });
        let step = match earlier {
            Some(j) if out[j].0.allowed => c.quota.step(out[j].0.diff_after, c.cost.max(1)),
            _ => c.quota.step(u64::try_from(diff).unwrap_or(0), c.cost.max(1)),
        };
        all &= step.allowed;
        out.push((step, u64::try_from(diff).unwrap_or(0)));
    }
    if all != passed {
        return Err(bad("verdict differs from the local arithmetic"));
    }
    Ok((passed, out))
}

/// The decisions: each step's, except that a refused request spent nothing, so
/// its passing limits are reported as they stand.
fn decide(
    checks: &[RateLimitCheck],
    mode: CheckMode,
    all: bool,
    steps: Vec<(GcraStep, u64)>,
) -> Vec<RateLimitDecision> {
    checks
        .iter()
        .zip(steps)
        .map(|(c, (step, before))| {
            if !all && mode == CheckMode::Consume && step.allowed {
                c.quota.state(before)
            } else {
                step.decision
            }
        })
        .collect()
}

impl RateLimitStore for RedisStore {
    fn check(&self, checks: Arc<[RateLimitCheck]>, mode: CheckMode) -> StoreFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            if checks.is_empty() {
                return Ok(Vec::new());
            }
            let down_until = inner.down_until.load(Ordering::Relaxed);
            if down_until != 0 && inner.now() < down_until {
                let err = StoreError::new(
                    StoreErrorKind::Unavailable,
                    "redis: recently failed, not retried yet",
                );
                return inner.on_failure(checks, mode, err).await;
            }
            let result = match tokio::time::timeout(inner.timeout, inner.eval(&checks, mode)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::new(
                    StoreErrorKind::Timeout,
                    "redis: no answer within the timeout",
                )),
            };
            match result {
                Ok(decisions) => {
                    if down_until != 0 {
                        inner.down_until.store(0, Ordering::Relaxed);
                        tracing::info!(target: "nhi_guard::redis", "redis rate-limit store reachable again");
                    }
                    Ok(decisions)
                }
                Err(err) if err.kind() == StoreErrorKind::Protocol => {
                    // Redis answered: not an outage. Apply the policy without pausing.
                    inner.failures.fetch_add(1, Ordering::Relaxed);
                    nhi_guard_core::metrics::store_error("rate_limit", "redis");
                    tracing::warn!(target: "nhi_guard::redis", error = %err, policy = ?inner.policy, "redis rate-limit check failed");
                    inner.on_failure(checks, mode, err).await
                }
                Err(err) => {
                    inner.failures.fetch_add(1, Ordering::Relaxed);
                    nhi_guard_core::metrics::store_error("rate_limit", "redis");
                    let pause = u64::try_from(inner.retry_after_failure.as_nanos()).unwrap_or(u64::MAX);
                    inner
                        .down_until
                        .store(inner.now().saturating_add(pause).max(1), Ordering::Relaxed);
                    tracing::warn!(target: "nhi_guard::redis", error = %err, policy = ?inner.policy, "redis rate-limit store unreachable");
                    inner.on_failure(checks, mode, err).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nhi_guard_ratelimit::store::Quota;

    fn decisions_from_reply(
        checks: &[RateLimitCheck],
        mode: CheckMode,
        reply: &[i64],
    ) -> Result<Vec<RateLimitDecision>, StoreError> {
        let (passed, steps) = steps_from_reply(checks, reply)?;
        Ok(decide(checks, mode, passed, steps))
    }

    #[test]
    fn limits_are_grouped_by_subject() {
        let checks = [
            check("a", b"client", b""),
            check("b", &[127, 0, 0, 1], b""),
            check("c", b"client", b"orders"),
        ];
        let groups = by_subject(&checks);
        let at: Vec<&[usize]> = groups.iter().map(|(at, _)| at.as_slice()).collect();
        assert_eq!(at, [&[0, 2][..], &[1][..]]);
        assert_eq!(groups[0].1[1].qualifier.as_ref(), b"orders");
    }

    fn check(policy: &str, key: &[u8], qualifier: &[u8]) -> RateLimitCheck {
        RateLimitCheck {
            policy: Arc::from(policy),
            key: key.into(),
            qualifier: qualifier.into(),
            quota: Quota::per_second(10).expect("quota"),
            cost: 1,
        }
    }

    #[test]
    fn keys_are_unambiguous_and_tagged_by_subject() {
        assert_eq!(
            key_of("nhi:rl", &check("per-client-route", b"billing-export", b"orders")),
            "nhi:rl:{billing-export}:per-client-route:orders"
        );
        assert_eq!(
            key_of("nhi:rl", &check("per ip", &[127, 0, 0, 1], b"")),
            "nhi:rl:{~7f000001}:~706572206970:"
        );
        assert_ne!(
            key_of("p", &check("a:b", b"c", b"")),
            key_of("p", &check("a", b"b:c", b""))
        );
        assert_eq!(key_of("p", &check("x", b"{evil}", b"")), "p:{~7b6576696c7d}:x:");
    }

    #[test]
    fn replies_become_the_same_decisions_as_local_arithmetic() {
        let checks = [check("a", b"k", b""), check("b", b"k", b"")];
        let q = checks[0].quota;
        let tau = q.tolerance_nanos();
        let ok = decisions_from_reply(&checks, CheckMode::Consume, &[1, 0, 0, 0, 500_000_000]).expect("ok");
        assert_eq!(ok[0], q.step(0, 1).decision);
        assert_eq!(ok[1].remaining, 4);
        let refused =
            decisions_from_reply(&checks, CheckMode::Consume, &[0, 0, 0, 0, tau as i64]).expect("refused");
        assert!(refused[0].allowed && !refused[1].allowed);
        assert_eq!(refused[0].remaining, 10, "nothing spent on the passing limit");
        assert!(decisions_from_reply(&checks, CheckMode::Consume, &[1, 0, 0, 0, tau as i64]).is_err());
        assert!(decisions_from_reply(&checks, CheckMode::Consume, &[1, 0]).is_err());
    }
}
