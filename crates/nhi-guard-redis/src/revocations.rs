//! Revocations shared by every replica through Redis: a revocation made on one
//! replica holds on the others within a publish/subscribe round trip, and a
//! persisted hash keeps them for replicas that restart or missed a message.
//!
//! Each replica keeps its own [`Revocations`] (what its identity layer checks, in
//! memory, on every request) and [`RedisRevocations`] keeps it in step:
//! - at start, and every 5 seconds, the whole set is read from the hash
//!   `<prefix>revocations` and replaces the local one: lifts made elsewhere (kept
//!   as tombstones for a day) drop out, token revocations that lapsed are deleted,
//!   and a revocation this replica holds that Redis does not know at all (Redis
//!   restarted empty) is written back, so losing Redis's data never lifts one;
//! - changes are published on `<prefix>revocations:events` and applied by every
//!   subscriber at once;
//! - while Redis is unreachable, the replica keeps enforcing the set it has, and a
//!   revocation or lift made on it holds here and is written to Redis when Redis
//!   is back (retried by the background task), then reaches the others.
//!
//! ```no_run
//! # async fn run() -> Result<(), nhi_guard_redis::revocations::RevocationsError> {
//! use nhi_guard_identity::Revocations;
//! use nhi_guard_redis::revocations::RedisRevocations;
//!
//! let local = Revocations::new(); // give a clone to IdentityLayerBuilder::revocations
//! let shared = RedisRevocations::start("redis://127.0.0.1:6379", "nhi-guard:", local.clone()).await?;
//! # let _ = shared; Ok(()) }
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use nhi_guard_identity::{Revocation, Revocations, Revoked};
use redis::AsyncCommands;

use crate::connection::{Conn, IntoRedisTarget, Timeouts};

/// Why Redis could not be used: its error kind only, as the other stores of this
/// crate report it (no URL, no server text that could echo one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationsError(String);

impl std::fmt::Display for RevocationsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RevocationsError {}

impl From<redis::RedisError> for RevocationsError {
    fn from(e: redis::RedisError) -> Self {
        Self(format!("redis: {:?}", e.kind()))
    }
}

/// How long one Redis command may take before the change is kept for later.
const TIMEOUT: Duration = Duration::from_millis(500);

/// A change made on this replica that Redis has not seen yet.
#[derive(Debug, Clone)]
enum Pending {
    Add(Revocation),
    Lift(String),
}

/// Keeps a replica's [`Revocations`] in step with every other replica's through
/// Redis. Cheap to clone; the background task stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisRevocations {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRevocations")
            .field("hash", &self.inner.hash)
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

struct Inner {
    local: Revocations,
    conn: Conn,
    hash: String,
    channel: String,
    pending: Mutex<Vec<Pending>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

/// How often the whole set is read again (for messages missed while a
/// subscription was down).
const RELOAD: Duration = Duration::from_secs(5);

impl RedisRevocations {
    /// Connects to `target` (a URL, `rediss://` for TLS, a comma-separated list of
    /// Redis Cluster seeds, or a [`RedisTarget`](crate::RedisTarget); keys and
    /// channel under `prefix`), loads the shared set into `local` and starts
    /// following changes.
    ///
    /// # Errors
    /// Redis is unreachable at start.
    pub async fn start(
        target: impl IntoRedisTarget,
        prefix: &str,
        local: Revocations,
    ) -> Result<Self, RevocationsError> {
        let target = target
            .into_redis_target()
            .map_err(|e| RevocationsError(e.to_string()))?;
        let timeouts = Timeouts {
            connect: TIMEOUT,
            response: TIMEOUT,
            retries: 2,
            max_delay: TIMEOUT,
        };
        let conn = target.connect(timeouts).await?;
        // Subscriptions listen on one node; a cluster forwards every PUBLISH to all.
        let clients = target.node_clients()?;
        let inner = Arc::new(Inner {
            local,
            conn,
            hash: format!("{prefix}revocations"),
            channel: format!("{prefix}revocations:events"),
            pending: Mutex::new(Vec::new()),
            task: Mutex::new(None),
        });
        reload(&inner).await?;
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(follow(clients, weak));
        *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(Self { inner })
    }

    /// The replica's set (what its identity layer checks).
    pub fn local(&self) -> &Revocations {
        &self.inner.local
    }

    /// Revokes `target` here at once and on every replica. `Ok(true)` when Redis
    /// took it; `Ok(false)` when Redis is unreachable: it holds here and is shared
    /// when Redis is back.
    pub async fn revoke(
        &self,
        target: Revoked,
        created_by: Option<&str>,
        now: SystemTime,
    ) -> (Revocation, bool) {
        let r = self.inner.local.revoke(target, created_by, now);
        let shared = publish(&self.inner, &Pending::Add(r.clone())).await.is_ok();
        if !shared {
            self.queue(Pending::Add(r.clone()));
        }
        (r, shared)
    }

    /// Lifts revocation `id` here and on every replica; the one lifted (if this
    /// replica knew it) and whether Redis took the change.
    pub async fn lift(&self, id: &str) -> (Option<Revocation>, bool) {
        let lifted = self.inner.local.lift(id);
        if lifted.is_none() {
            // Unknown here, and this replica's set follows Redis's: nothing to tell.
            return (None, true);
        }
        let shared = publish(&self.inner, &Pending::Lift(id.to_owned())).await.is_ok();
        if !shared {
            self.queue(Pending::Lift(id.to_owned()));
        }
        (lifted, shared)
    }

    fn queue(&self, change: Pending) {
        tracing::warn!(target: "nhi_guard::identity", "Redis unreachable: the revocation change holds on this replica and is shared when Redis is back");
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(change);
    }
}

/// Writes one change to the hash and announces it.
async fn publish(inner: &Inner, change: &Pending) -> Result<(), redis::RedisError> {
    let mut conn = inner.conn.clone();
    let message = match change {
        Pending::Add(r) => {
            let line = r.to_line();
            let _: () = conn.hset(&inner.hash, &r.id, &line).await?;
            format!("add\t{line}")
        }
        Pending::Lift(id) => {
            // A tombstone, so that a replica that missed the message and still
            // holds the revocation drops it at its next reload instead of
            // writing it back.
            let _: () = conn
                .hset(&inner.hash, id, format!("{LIFTED}{}", millis(SystemTime::now())))
                .await?;
            format!("lift\t{id}")
        }
    };
    let _: () = conn.publish(&inner.channel, message).await?;
    Ok(())
}

/// Writes what was made here while Redis was unreachable.
async fn flush(inner: &Inner) -> Result<(), redis::RedisError> {
    let pending: Vec<Pending> =
        std::mem::take(&mut *inner.pending.lock().unwrap_or_else(PoisonError::into_inner));
    for (i, change) in pending.iter().enumerate() {
        if let Err(e) = publish(inner, change).await {
            inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .splice(0..0, pending[i..].iter().cloned());
            return Err(e);
        }
    }
    Ok(())
}

/// A lifted revocation's value in the hash: this prefix and when (ms).
const LIFTED: &str = "lifted\t";
/// How long a tombstone is kept.
const TOMBSTONE: Duration = Duration::from_secs(24 * 3600);

fn millis(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
}

/// Replaces the local set with the shared one (after writing local changes);
/// writes back what this replica holds and Redis lost.
async fn reload(inner: &Inner) -> Result<(), redis::RedisError> {
    flush(inner).await?;
    let mut conn = inner.conn.clone();
    let all: Vec<(String, String)> = conn.hgetall(&inner.hash).await?;
    let now = SystemTime::now();
    let mut kept = Vec::with_capacity(all.len());
    let mut lifted = std::collections::HashSet::new();
    for (id, line) in all {
        if let Some(at) = line.strip_prefix(LIFTED) {
            let at: u128 = at.parse().unwrap_or(0);
            if at + TOMBSTONE.as_millis() < millis(now) {
                let _: () = conn.hdel(&inner.hash, &id).await?;
            }
            lifted.insert(id);
            continue;
        }
        match Revocation::from_line(&line) {
            Ok(r) if r.expires_at().is_none_or(|t| t > now) => kept.push(r),
            // Lapsed token revocations, and lines nobody can read, are removed.
            _ => {
                let _: () = conn.hdel(&inner.hash, &id).await?;
            }
        }
    }
    for r in inner.local.list(now) {
        if !lifted.contains(&r.id) && !kept.iter().any(|k| k.id == r.id) {
            let _: () = conn.hset(&inner.hash, &r.id, r.to_line()).await?;
            kept.push(r);
        }
    }
    inner.local.replace_all(kept, now);
    Ok(())
}

/// Applies one published change.
fn apply(inner: &Inner, message: &str) {
    let now = SystemTime::now();
    match message.split_once('\t') {
        Some(("add", line)) => match Revocation::from_line(line) {
            Ok(r) => inner.local.insert(r, now),
            Err(e) => {
                tracing::warn!(target: "nhi_guard::identity", error = %e, "unreadable revocation message")
            }
        },
        Some(("lift", id)) => {
            inner.local.lift(id);
        }
        _ => tracing::warn!(target: "nhi_guard::identity", "unreadable revocation message"),
    }
}

/// Subscribes and applies changes, reloading the whole set at every
/// (re)subscription and every [`RELOAD`]; retries while Redis is unreachable, on
/// the next node of a cluster each time a subscription is lost.
async fn follow(clients: Vec<redis::Client>, inner: std::sync::Weak<Inner>) {
    for client in clients.iter().cycle() {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            let channel = match inner.upgrade() {
                Some(i) => i.channel.clone(),
                None => return Ok::<_, redis::RedisError>(()),
            };
            pubsub.subscribe(&channel).await?;
            // Subscribed first, then loaded: nothing published in between is lost.
            match inner.upgrade() {
                Some(i) => reload(&i).await?,
                None => return Ok(()),
            }
            let mut messages = pubsub.on_message();
            let mut every = tokio::time::interval(RELOAD);
            every.tick().await;
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { return Ok(()) };
                        let Some(i) = inner.upgrade() else { return Ok(()) };
                        if let Ok(text) = msg.get_payload::<String>() {
                            apply(&i, &text);
                        }
                    }
                    _ = every.tick() => {
                        let Some(i) = inner.upgrade() else { return Ok(()) };
                        reload(&i).await?;
                    }
                }
            }
        }
        .await;
        if inner.strong_count() == 0 {
            return;
        }
        if let Err(e) = subscribed {
            let e = RevocationsError::from(e);
            tracing::warn!(target: "nhi_guard::identity", error = %e, "revocation subscription lost; retrying");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_kind_never_the_url() {
        let e = redis::Client::open("redis://:hunter2@cache:notaport/0").expect_err("bad URL");
        let shown = RevocationsError::from(e).to_string();
        assert!(shown.starts_with("redis: "), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("cache"), "{shown}");
    }
}
