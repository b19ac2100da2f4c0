//! The writer: a bounded queue from the request path to a dedicated thread that
//! formats, chains and hands records to the sink.

use crate::mac::{CheckpointAuth, CheckpointKey};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Duration;

use nhi_guard_core::clock::{SharedClock, SystemClock};
use nhi_guard_core::context::ContextState;
use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::oneshot;

use crate::chain::{GENESIS, seal};
use crate::error::{AuditError, ConfigError};
use crate::event::AuditEvent;
use crate::ocsf::{ChainMark, write_api_activity, write_chain_record};
use crate::sink::{AuditRecord, AuditSink, RecordKind};

/// What happens to a record when the queue to the writer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// The response waits for room in the queue (the default): nothing is lost,
    /// and a sink that cannot keep up slows the service down. A response future
    /// dropped while the queue is full hands its record to a tokio task that waits
    /// for room (outside a tokio runtime it is counted as dropped).
    #[default]
    Backpressure,
    /// The record is dropped and counted; the count is reported in every later
    /// record (`unmapped.nhi_guard.dropped_total`), in checkpoints and in
    /// [`AuditStats::dropped`].
    Drop,
}

// Events are nearly every message: boxing them would cost an allocation on the
// request path and a cross-thread free on the writer for each one.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Event(AuditEvent),
    Flush(oneshot::Sender<AuditStats>),
    Checkpoint(oneshot::Sender<AuditStats>),
    Shutdown(oneshot::Sender<AuditStats>),
}

/// Counters of the audit pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AuditStats {
    /// Request records put in the queue.
    pub enqueued: u64,
    /// Request records the sink accepted.
    pub written: u64,
    /// Request records dropped because the queue was full ([`Overflow::Drop`]).
    pub dropped: u64,
    /// Allowed requests left out by sampling.
    pub sampled_out: u64,
    /// Records the sink failed to write (and other sink errors).
    pub sink_errors: u64,
    /// Checkpoint records written.
    pub checkpoints: u64,
    /// Request records that arrived after shutdown and were not written.
    pub lost_after_shutdown: u64,
}

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    sampled_out: AtomicU64,
    sink_errors: AtomicU64,
    checkpoints: AtomicU64,
    lost_after_shutdown: AtomicU64,
}

impl Counters {
    fn stats(&self) -> AuditStats {
        let l = |c: &AtomicU64| c.load(Ordering::Acquire);
        AuditStats {
            enqueued: l(&self.enqueued),
            written: l(&self.written),
            dropped: l(&self.dropped),
            sampled_out: l(&self.sampled_out),
            sink_errors: l(&self.sink_errors),
            checkpoints: l(&self.checkpoints),
            lost_after_shutdown: l(&self.lost_after_shutdown),
        }
    }
}

struct Shared {
    counters: Counters,
    overflow: Overflow,
    /// The writer thread, to unpark it.
    thread: OnceLock<Thread>,
}

impl Shared {
    fn wake_writer(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

pub(crate) type ReserveFuture = Pin<Box<dyn Future<Output = Result<OwnedPermit<Msg>, SendError<()>>> + Send>>;

#[allow(clippy::large_enum_variant)]
pub(crate) enum Offer {
    Done,
    Wait(AuditEvent),
}

/// The request side of the audit pipeline: cheap to clone, given to
/// [`crate::AuditLayer::new`].
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditWriter")
            .field("overflow", &self.shared.overflow)
            .field("capacity", &self.tx.max_capacity())
            .finish()
    }
}

impl AuditWriter {
    /// Starts configuring a writer.
    pub fn builder() -> AuditWriterBuilder {
        AuditWriterBuilder::default()
    }

    /// Offers a record to the queue without waiting.
    pub(crate) fn offer(&self, ev: AuditEvent) -> Offer {
        match self.tx.try_send(Msg::Event(ev)) {
            Ok(()) => {
                self.shared.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                Offer::Done
            }
            Err(TrySendError::Full(Msg::Event(ev))) => {
                self.shared.wake_writer();
                // The writer reports the depth per batch; a full queue is reported
                // at once, while the writer may be stuck in a slow sink.
                metrics::gauge!(nhi_guard_core::metrics::AUDIT_QUEUE_DEPTH)
                    .set(self.tx.max_capacity() as f64);
                match self.shared.overflow {
                    Overflow::Backpressure => Offer::Wait(ev),
                    Overflow::Drop => {
                        self.count_dropped();
                        Offer::Done
                    }
                }
            }
            Err(TrySendError::Closed(_) | TrySendError::Full(_)) => {
                self.count_lost();
                Offer::Done
            }
        }
    }

    fn count_dropped(&self) {
        let n = self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!(nhi_guard_core::metrics::AUDIT_DROPPED_TOTAL, "reason" => "queue_full")
            .increment(1);
        if n.is_power_of_two() {
            tracing::warn!(
                target: "nhi_guard::audit",
                dropped_total = n,
                "audit queue full: records dropped (overflow policy `drop`)"
            );
        }
    }

    fn count_lost(&self) {
        let n = self
            .shared
            .counters
            .lost_after_shutdown
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        metrics::counter!(nhi_guard_core::metrics::AUDIT_DROPPED_TOTAL, "reason" => "shutdown").increment(1);
        if n.is_power_of_two() {
            tracing::error!(
                target: "nhi_guard::audit",
                lost_total = n,
                "audit writer has shut down: record not written"
            );
        }
    }

    pub(crate) fn count_sampled_out(&self) {
        self.shared.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
    }

    /// A future for room in the queue.
    pub(crate) fn reserve(&self) -> ReserveFuture {
        Box::pin(self.tx.clone().reserve_owned())
    }

    /// Completes a wait started with [`AuditWriter::reserve`].
    pub(crate) fn finish_wait(&self, permit: Result<OwnedPermit<Msg>, SendError<()>>, ev: AuditEvent) {
        match permit {
            Ok(permit) => {
                permit.send(Msg::Event(ev));
                self.shared.counters.enqueued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.count_lost(),
        }
    }

    /// Enqueues from a drop guard, where waiting is impossible: when the queue is
    /// full under backpressure, a task waits for room instead.
    pub(crate) fn detach(&self, ev: AuditEvent) {
        if let Offer::Wait(ev) = self.offer(ev) {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let this = self.clone();
                    let reserve = self.reserve();
                    handle.spawn(async move {
                        let permit = reserve.await;
                        this.finish_wait(permit, ev);
                    });
                }
                Err(_) => self.count_dropped(),
            }
        }
    }
}

/// The control side of the audit pipeline: statistics, flush, checkpoint and
/// shutdown.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl AuditHandle {
    /// The counters now.
    pub fn stats(&self) -> AuditStats {
        self.shared.counters.stats()
    }

    async fn request(
        &self,
        msg: impl FnOnce(oneshot::Sender<AuditStats>) -> Msg,
    ) -> Result<AuditStats, AuditError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(msg(tx));
        self.shared.wake_writer();
        sent.await.map_err(|_| AuditError::WriterGone)?;
        self.shared.wake_writer();
        rx.await.map_err(|_| AuditError::WriterGone)
    }

    /// Returns once every record enqueued before the call is in the sink and the
    /// sink has flushed (fsynced, for a file with the default policy).
    ///
    /// # Errors
    /// [`AuditError::WriterGone`] after shutdown.
    pub async fn flush(&self) -> Result<AuditStats, AuditError> {
        self.request(Msg::Flush).await
    }

    /// Writes a checkpoint record now (besides the periodic ones) and flushes.
    ///
    /// # Errors
    /// [`AuditError::WriterGone`] after shutdown.
    pub async fn checkpoint(&self) -> Result<AuditStats, AuditError> {
        self.request(Msg::Checkpoint).await
    }

    /// Stops the writer: closes the queue, writes every record already in it,
    /// writes a final checkpoint, closes the sink (fsync for files) and only then
    /// returns the final counters. Records offered afterwards are counted in
    /// [`AuditStats::lost_after_shutdown`].
    ///
    /// # Errors
    /// [`AuditError::WriterGone`] when the writer was already shut down.
    pub async fn shutdown(&self) -> Result<AuditStats, AuditError> {
        self.request(Msg::Shutdown).await
    }
}

/// Configures and starts the writer thread.
#[derive(Debug, Clone)]
#[must_use]
pub struct AuditWriterBuilder {
    capacity: usize,
    overflow: Overflow,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    clock: SharedClock,
    auth: CheckpointAuth,
}

impl Default for AuditWriterBuilder {
    fn default() -> Self {
        Self {
            capacity: 8192,
            overflow: Overflow::Backpressure,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
            auth: CheckpointAuth::default(),
        }
    }
}

impl AuditWriterBuilder {
    /// Queue capacity in records (default 8192).
    ///
    /// # Errors
    /// [`ConfigError`] for `capacity` when 0 or above 2^24.
    pub fn capacity(mut self, records: usize) -> Result<Self, ConfigError> {
        if records == 0 || records > 1 << 24 {
            return Err(ConfigError::new(
                "audit",
                "capacity",
                "must be between 1 and 16777216",
            ));
        }
        self.capacity = records;
        Ok(self)
    }

    /// Authenticates every checkpoint with HMAC-SHA-256 under `key`
    /// (`unmapped.chain.mac`; see [`crate::chain::verify_file_with`]): whoever can
    /// write the log but not read the key can no longer cut its end and append a
    /// checkpoint the verifier accepts.
    pub fn checkpoint_key(mut self, key: CheckpointKey) -> Self {
        self.auth.key = Some(key);
        self
    }

    /// Signs every checkpoint with Ed25519 (`unmapped.chain.sig`; feature
    /// `ed25519`): verifiers then need only the public key
    /// ([`crate::VerifyOptions::public_key`]), and cannot sign themselves.
    #[cfg(feature = "ed25519")]
    pub fn checkpoint_signer(mut self, signer: crate::CheckpointSigner) -> Self {
        self.auth.signer = Some(Arc::new(signer));
        self
    }

    /// What to do when the queue is full (default [`Overflow::Backpressure`]).
    pub fn overflow(mut self, policy: Overflow) -> Self {
        self.overflow = policy;
        self
    }

    /// Writes a checkpoint after every `records` records (default 1000).
    ///
    /// # Errors
    /// [`ConfigError`] for `checkpoint_every` when 0.
    pub fn checkpoint_every(mut self, records: u64) -> Result<Self, ConfigError> {
        if records == 0 {
            return Err(ConfigError::new(
                "audit",
                "checkpoint_every",
                "must be at least 1",
            ));
        }
        self.checkpoint_every = records;
        Ok(self)
    }

    /// Also writes a checkpoint when `interval` has passed (by the writer's
    /// clock) since the last one and records came in between (default 60 s), so a
    /// quiet log is sealed regularly too.
    ///
    /// # Errors
    /// [`ConfigError`] for `checkpoint_interval` when zero.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Result<Self, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::new(
                "audit",
                "checkpoint_interval",
                "must be greater than zero",
            ));
        }
        self.checkpoint_interval = interval;
        Ok(self)
    }

    /// The clock that stamps chain start and checkpoint records.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Starts the writer thread on `sink`. It writes a chain start record at once.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn(self, sink: impl AuditSink) -> std::io::Result<(AuditWriter, AuditHandle)> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            overflow: self.overflow,
            thread: OnceLock::new(),
        });
        let started = self.clock.now();
        let mut writer = Writer {
            sink,
            shared: shared.clone(),
            clock: self.clock,
            buf: Vec::with_capacity(4096),
            scratch: String::with_capacity(256),
            prev: GENESIS.to_owned(),
            seq: 0,
            requests: 0,
            since_checkpoint: 0,
            checkpoint_every: self.checkpoint_every,
            checkpoint_interval: self.checkpoint_interval,
            auth: self.auth,
            // The startup chain start is stamped when `spawn` is called, not when
            // the thread gets to run.
            last_checkpoint: started,
            sealed: false,
            depth: None,
        };
        let join = std::thread::Builder::new()
            .name("nhi-guard-audit".into())
            .spawn(move || writer.run(rx))?;
        let _ = shared.thread.set(join.thread().clone());
        Ok((
            AuditWriter {
                tx: tx.clone(),
                shared: shared.clone(),
            },
            AuditHandle { tx, shared },
        ))
    }
}

struct Writer<K> {
    sink: K,
    shared: Arc<Shared>,
    clock: SharedClock,
    buf: Vec<u8>,
    scratch: String,
    prev: String,
    /// `seq` of the next record.
    seq: u64,
    requests: u64,
    since_checkpoint: u64,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    auth: CheckpointAuth,
    last_checkpoint: std::time::SystemTime,
    sealed: bool,
    /// `nhi_guard_audit_queue_depth`, resolved by the writer thread at its first
    /// batch (after the application installed its recorder).
    depth: Option<metrics::Gauge>,
}

/// Records taken from the queue before the sink is flushed.
const MAX_BATCH: usize = 4096;
/// The writer's first idle wait; doubled up to [`MAX_IDLE`] while nothing comes.
const MIN_IDLE: Duration = Duration::from_millis(1);
/// The longest a record waits in the queue of an idle writer before it is written.
const MAX_IDLE: Duration = Duration::from_millis(16);

impl<K: AuditSink> Writer<K> {
    /// The writer loop. It never registers a waker on the queue: when the queue
    /// is empty it parks with a timeout (1 ms, doubling to 16 ms while idle), so a
    /// request never pays for waking this thread. Control requests and a full
    /// queue unpark it at once.
    fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        let link = self.sink.existing_tip().map(|t| t.sha256);
        let started = self.last_checkpoint;
        self.start_chain("startup", link, started);
        self.flush();
        let mut replies = Vec::new();
        let mut idle = MIN_IDLE;
        let mut taken = 0usize;
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(TryRecvError::Empty) => {
                    if taken > 0 {
                        self.report_depth(rx.len());
                        self.end_batch(&mut replies);
                        taken = 0;
                    } else if self.checkpoint_due() {
                        self.checkpoint(false);
                        self.flush();
                    }
                    std::thread::park_timeout(idle);
                    idle = (idle * 2).min(MAX_IDLE);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            };
            idle = MIN_IDLE;
            if taken == 0 {
                // A batch starts: what waits now is the backlog the writer works off.
                self.report_depth(rx.len() + 1);
            }
            taken += 1;
            match msg {
                Msg::Event(ev) => self.write_event(&ev),
                Msg::Flush(reply) => replies.push(reply),
                Msg::Checkpoint(reply) => {
                    self.checkpoint(false);
                    replies.push(reply);
                }
                Msg::Shutdown(reply) => {
                    replies.push(reply);
                    rx.close();
                    // Drain what is already queued (and sends holding a permit);
                    // `close` ends the stream.
                    while let Some(msg) = rx.blocking_recv() {
                        match msg {
                            Msg::Event(ev) => self.write_event(&ev),
                            Msg::Flush(r) | Msg::Checkpoint(r) | Msg::Shutdown(r) => replies.push(r),
                        }
                    }
                    self.finish();
                    let stats = self.shared.counters.stats();
                    for r in replies.drain(..) {
                        let _ = r.send(stats);
                    }
                    return;
                }
            }
            if taken >= MAX_BATCH {
                self.report_depth(rx.len());
                self.end_batch(&mut replies);
                taken = 0;
            }
        }
        // Every sender is gone: finish as on shutdown.
        self.finish();
    }

    fn report_depth(&mut self, depth: usize) {
        self.depth
            .get_or_insert_with(|| metrics::gauge!(nhi_guard_core::metrics::AUDIT_QUEUE_DEPTH))
            .set(depth as f64);
    }

    fn end_batch(&mut self, replies: &mut Vec<oneshot::Sender<AuditStats>>) {
        if self.checkpoint_due() {
            self.checkpoint(false);
        }
        self.flush();
        if !replies.is_empty() {
            let stats = self.shared.counters.stats();
            for r in replies.drain(..) {
                let _ = r.send(stats);
            }
        }
    }

    /// Records came in since the last checkpoint and its interval has passed.
    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint > 0
            && self
                .clock
                .now()
                .duration_since(self.last_checkpoint)
                .is_ok_and(|d| d >= self.checkpoint_interval)
    }

    fn sink_error(&self, what: &str, err: &std::io::Error) {
        let n = self.shared.counters.sink_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::error!(target: "nhi_guard::audit", error = %err, errors_total = n, "audit sink failed to {what}");
        }
    }

    /// Serialises with `build`, seals, writes. Returns whether the sink took it.
    fn append(
        &mut self,
        kind: RecordKind,
        ev: Option<(&AuditEvent, &ContextState)>,
        build: impl FnOnce(&mut Vec<u8>, &str, u64) -> serde_json::Result<()>,
    ) -> bool {
        self.buf.clear();
        if let Err(e) = build(&mut self.buf, &self.prev, self.seq) {
            self.sink_error("serialise", &std::io::Error::other(e));
            return false;
        }
        let sha256 = seal(&mut self.buf);
        let Ok(json) = std::str::from_utf8(&self.buf) else {
            self.sink_error("serialise", &std::io::Error::other("record is not UTF-8"));
            return false;
        };
        let record = AuditRecord {
            kind,
            seq: self.seq,
            sha256: &sha256,
            json,
            event: ev,
        };
        match self.sink.write(&record) {
            Ok(()) => {
                self.prev = sha256;
                self.seq += 1;
                self.sealed = false;
                true
            }
            Err(e) => {
                self.sink_error("write", &e);
                false
            }
        }
    }

    fn start_chain(&mut self, reason: &'static str, link: Option<String>, now: std::time::SystemTime) {
        self.prev = link.unwrap_or_else(|| GENESIS.to_owned());
        self.seq = 0;
        self.requests = 0;
        self.since_checkpoint = 0;
        self.last_checkpoint = now;
        self.append(RecordKind::ChainStart, None, |buf, prev, seq| {
            write_chain_record(
                buf,
                ChainMark::Start { reason },
                now,
                prev,
                seq,
                &CheckpointAuth::default(),
            )
        });
    }

    fn write_event(&mut self, ev: &AuditEvent) {
        if self.sink.rotation_due() {
            self.rotate();
        }
        let dropped = self.shared.counters.dropped.load(Ordering::Relaxed);
        // The request is over: the context is read in place (no copy). Anyone still
        // holding it waits the few microseconds this record takes.
        let written = ev.ctx.read(|state| {
            let mut scratch = std::mem::take(&mut self.scratch);
            let ok = self.append(RecordKind::Request, Some((ev, state)), |buf, prev, seq| {
                write_api_activity(buf, &mut scratch, ev, state, prev, seq, dropped);
                Ok(())
            });
            self.scratch = scratch;
            ok
        });
        if written {
            self.requests += 1;
            self.shared.counters.written.fetch_add(1, Ordering::Relaxed);
        }
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.checkpoint_every {
            self.checkpoint(false);
        }
    }

    fn checkpoint(&mut self, is_final: bool) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        let mark = ChainMark::Checkpoint {
            requests: self.requests,
            dropped_total: c.dropped.load(Ordering::Relaxed),
            sampled_out_total: c.sampled_out.load(Ordering::Relaxed),
            is_final,
        };
        let now = self.clock.now();
        let seq = self.seq;
        let auth = self.auth.clone();
        if self.append(RecordKind::Checkpoint, None, |buf, prev, seq| {
            write_chain_record(buf, mark, now, prev, seq, &auth)
        }) {
            c.checkpoints.fetch_add(1, Ordering::Relaxed);
            self.sealed = is_final;
            // A copy outside the file, to anchor the chain.
            tracing::info!(
                target: "nhi_guard::audit::checkpoint",
                seq,
                sha256 = %self.prev,
                requests = self.requests,
                r#final = is_final,
                "audit checkpoint"
            );
        }
        self.since_checkpoint = 0;
        self.last_checkpoint = now;
    }

    fn rotate(&mut self) {
        self.checkpoint(true);
        self.flush();
        match self.sink.rotate() {
            Ok(()) => {
                let link = self.prev.clone();
                let now = self.clock.now();
                self.start_chain("rotation", Some(link), now);
            }
            Err(e) => self.sink_error("rotate", &e),
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.sink.flush() {
            self.sink_error("flush", &e);
        }
    }

    fn finish(&mut self) {
        if !self.sealed {
            self.checkpoint(true);
        }
        if let Err(e) = self.sink.close() {
            self.sink_error("close", &e);
        }
    }
}
