//! [`RedisUsageStore`]: the scope layer's usage records (which scopes each client
//! exercised and lacked, its newest token) shared by every replica through Redis,
//! so that the least-privilege report of any replica knows what all of them saw:
//! a client seen on one replica is not stale on another.
//!
//! Recording stays on the request path's terms: each call lands in an in-process
//! [`InMemoryUsageStore`] (a read lock and an atomic or two), and a background task
//! moves what accumulated to Redis every second (one Lua script per flush, for
//! every client seen since the last one). Each client is one hash,
//! `<prefix>{usage}:<client id>`, holding a count and a last time per scope and the
//! newest token's issue time; it expires `retention` (default 90 days) after the
//! client's last flush. Reads merge Redis with what this replica has not flushed
//! yet. The hash tag `{usage}` keeps every client's hash in one slot of a Redis
//! Cluster, so that one script flushes them all.
//!
//! While Redis is unreachable, flushes keep what they could not write (bounded by
//! the buffer's limits) and retry; reading the report fails with the error kind,
//! so a report never claims a client unseen because a replica's view was missing.
//!
//! ```no_run
//! # async fn run() -> Result<(), nhi_guard_scope::usage::UsageStoreError> {
//! use std::sync::Arc;
//! use nhi_guard_redis::usage::RedisUsageStore;
//!
//! let store = RedisUsageStore::connect("redis://127.0.0.1:6379", "nhi-guard:").await?;
//! // ScopeLayer::usage_store(Arc::new(store.clone())), ReportService::new(registry, Arc::new(store))
//! # let _ = store; Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nhi_guard_core::ClientId;
use nhi_guard_scope::usage::{
    ClientUsage, InMemoryUsageStore, ScopeStat, ScopeUsageStore, UsageFuture, UsageLimits, UsageStoreError,
};

use crate::connection::{Conn, IntoRedisTarget, Timeouts};

/// Adds one flush to the clients' hashes. KEYS: one hash per client. ARGV[1]: the
/// TTL in milliseconds; then per key, the number of entries and the entries as
/// (field, count, last ms) triples: `n:<field>` grows by count, `l:<field>` keeps
/// the later time (a count of 0 only moves the time: the token's field).
const FLUSH_SCRIPT: &str = r"
local ttl = ARGV[1]
local i = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local field, count, last = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    i = i + 3
    if count > 0 then redis.call('HINCRBY', KEYS[k], 'n:' .. field, count) end
    local cur = tonumber(redis.call('HGET', KEYS[k], 'l:' .. field) or '0')
    if last > cur then redis.call('HSET', KEYS[k], 'l:' .. field, last) end
  end
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return #KEYS
";

/// The hash field of the newest token (no `u|`/`d|` scope field can collide).
const TOKEN_FIELD: &str = "token";

/// How long one Redis command may take.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Usage per client not yet in Redis.
type Batch = HashMap<ClientId, ClientUsage>;

/// The scope usage store shared through Redis. Cheap to clone; the background
/// flush stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisUsageStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    prefix: Arc<str>,
    retention: Duration,
    script: redis::Script,
    /// Recorded since the last flush.
    buffer: InMemoryUsageStore,
    /// Drained, but not written: Redis did not answer. Retried first.
    unsent: Mutex<Batch>,
    /// One flush at a time (the background task and explicit calls).
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RedisUsageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUsageStore")
            .field("prefix", &self.inner.prefix)
            .field("retention", &self.inner.retention)
            .field("buffered_clients", &self.inner.buffer.len())
            .finish_non_exhaustive()
    }
}

fn error(e: &redis::RedisError) -> UsageStoreError {
    UsageStoreError::new(format!("redis: {:?}", e.kind()))
}

fn ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

async fn timed<T>(f: impl Future<Output = Result<T, redis::RedisError>>) -> Result<T, UsageStoreError> {
    let result = match tokio::time::timeout(TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| error(&e)),
        Err(_) => Err(UsageStoreError::new("redis: no answer within the timeout")),
    };
    if result.is_err() {
        nhi_guard_core::metrics::store_error("scope_usage", "redis");
    }
    result
}

impl RedisUsageStore {
    /// Connects to `target` (a URL, `rediss://` for TLS, a comma-separated list
    /// of Redis Cluster seeds, or a [`RedisTarget`](crate::RedisTarget)), naming
    /// keys `<prefix>{usage}:<client id>`, and starts the background flush (every
    /// second) on the current tokio runtime.
    ///
    /// # Errors
    /// An invalid target or an unreachable server (the error kind only).
    pub async fn connect(target: impl IntoRedisTarget, prefix: &str) -> Result<Self, UsageStoreError> {
        Self::connect_with(
            target,
            prefix,
            Duration::from_secs(90 * 86_400),
            Duration::from_secs(1),
        )
        .await
    }

    /// [`connect`](Self::connect) with the time a client's records outlive its
    /// last flush (`retention`, at least a day) and the flush period (at least
    /// 10 ms; `Duration::MAX` for none: then call [`flush`](Self::flush)).
    ///
    /// # Errors
    /// An invalid target or an unreachable server (the error kind only).
    pub async fn connect_with(
        target: impl IntoRedisTarget,
        prefix: &str,
        retention: Duration,
        every: Duration,
    ) -> Result<Self, UsageStoreError> {
        let target = target
            .into_redis_target()
            .map_err(|e| UsageStoreError::new(e.to_string()))?;
        let timeouts = Timeouts {
            connect: TIMEOUT,
            response: TIMEOUT,
            retries: 2,
            max_delay: Duration::from_millis(500),
        };
        let conn = target.connect(timeouts).await.map_err(|e| error(&e))?;
        let store = Self {
            inner: Arc::new(Inner {
                conn,
                prefix: Arc::from(prefix),
                retention: retention.max(Duration::from_secs(86_400)),
                script: redis::Script::new(FLUSH_SCRIPT),
                buffer: InMemoryUsageStore::with_limits(UsageLimits::default()),
                unsent: Mutex::new(Batch::new()),
                flushing: tokio::sync::Mutex::new(()),
            }),
        };
        if every != Duration::MAX {
            tokio::spawn(flush_every(
                Arc::downgrade(&store.inner),
                every.max(Duration::from_millis(10)),
            ));
        }
        Ok(store)
    }

    /// Writes what this replica recorded since the last flush to Redis. What could
    /// not be written is kept and sent with the next flush.
    ///
    /// # Errors
    /// Redis did not take it (the error kind only).
    pub async fn flush(&self) -> Result<(), UsageStoreError> {
        self.inner.flush().await
    }

    fn key(&self, client: &ClientId) -> String {
        self.inner.key(client)
    }
}

async fn flush_every(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.flush().await {
            tracing::warn!(target: "nhi_guard::scope", error = %e, "scope usage not flushed to redis; kept for the next flush");
        }
    }
}

impl Inner {
    fn key(&self, client: &ClientId) -> String {
        format!("{}{{usage}}:{}", self.prefix, client.as_str())
    }

    async fn flush(&self) -> Result<(), UsageStoreError> {
        let _one = self.flushing.lock().await;
        let mut batch = std::mem::take(&mut *self.unsent.lock().unwrap_or_else(PoisonError::into_inner));
        merge_into(&mut batch, self.buffer.drain());
        if batch.is_empty() {
            return Ok(());
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        for (client, usage) in &batch {
            invocation.key(self.key(client));
            let scopes = usage
                .used
                .iter()
                .map(|(s, stat)| (format!("u|{s}"), *stat))
                .chain(usage.denied.iter().map(|(s, stat)| (format!("d|{s}"), *stat)));
            let token = usage
                .newest_token
                .map(|t| (TOKEN_FIELD.to_owned(), ScopeStat { count: 0, last: t }));
            let entries: Vec<(String, ScopeStat)> = scopes.chain(token).collect();
            invocation.arg(entries.len());
            for (field, stat) in entries {
                invocation.arg(field).arg(stat.count).arg(ms(stat.last));
            }
        }
        let mut conn = self.conn.clone();
        match timed(invocation.invoke_async::<u64>(&mut conn)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Keep it for the next flush, bounded like the buffer: beyond that
                // many clients, the oldest batch entries are dropped.
                let mut unsent = self.unsent.lock().unwrap_or_else(PoisonError::into_inner);
                merge_into(&mut batch, std::mem::take(&mut *unsent));
                let max = UsageLimits::default().max_clients;
                if batch.len() > max {
                    let extra: Vec<ClientId> = batch.keys().skip(max).cloned().collect();
                    for client in extra {
                        batch.remove(&client);
                    }
                }
                *unsent = batch;
                Err(e)
            }
        }
    }
}

/// Adds `more` to `batch`, one entry per client.
fn merge_into(batch: &mut Batch, more: impl IntoIterator<Item = (ClientId, ClientUsage)>) {
    for (client, usage) in more {
        batch.entry(client).or_default().merge(&usage);
    }
}

/// A client's hash as usage.
fn parse(fields: &BTreeMap<String, u64>) -> ClientUsage {
    let mut usage = ClientUsage::default();
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
    for (field, &count) in fields {
        let Some(name) = field.strip_prefix("n:") else {
            continue;
        };
        let last = fields.get(&format!("l:{name}")).copied().unwrap_or_default();
        let stat = ScopeStat {
            count,
            last: at(last),
        };
        if let Some(scope) = name.strip_prefix("u|") {
            usage.used.insert(scope.to_owned(), stat);
        } else if let Some(scope) = name.strip_prefix("d|") {
            usage.denied.insert(scope.to_owned(), stat);
        }
    }
    usage.newest_token = fields.get(&format!("l:{TOKEN_FIELD}")).map(|&ms| at(ms));
    usage
}

impl ScopeUsageStore for RedisUsageStore {
    fn record_use(&self, client: &ClientId, scope: &str, at: SystemTime) {
        self.inner.buffer.record_use(client, scope, at);
    }

    fn record_denied(&self, client: &ClientId, scope: &str, at: SystemTime) {
        self.inner.buffer.record_denied(client, scope, at);
    }

    fn record_token(&self, client: &ClientId, issued_at: SystemTime) {
        self.inner.buffer.record_token(client, issued_at);
    }

    fn usage(&self, client: &ClientId) -> UsageFuture<'_> {
        let key = self.key(client);
        let client = client.clone();
        Box::pin(async move {
            let read = || {
                let (mut conn, key) = (self.inner.conn.clone(), key.clone());
                async move {
                    redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async::<BTreeMap<String, u64>>(&mut conn)
                        .await
                }
            };
            // A connection Redis dropped fails its next command while the manager
            // reconnects: a report (off the request path) tries once more.
            let fields = match timed(read()).await {
                Ok(fields) => fields,
                Err(_) => timed(read()).await?,
            };
            let mut usage = parse(&fields);
            // What this replica has not flushed yet.
            usage.merge(&self.inner.buffer.usage_now(&client));
            let unsent = self.inner.unsent.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pending) = unsent.get(&client) {
                usage.merge(pending);
            }
            Ok(usage)
        })
    }
}
