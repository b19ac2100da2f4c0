//! The audit control of nhi-guard: one tamper-evident OCSF record per request,
//! explaining every decision, with nothing lost silently.
//!
//! [`AuditLayer`] is the outermost layer of the stack. It creates the request's
//! [`SecurityContext`](nhi_guard_core::SecurityContext), lets the inner layers and
//! the handler run, then reads the final context — who called (client, owner,
//! credential kind and fingerprint), from where, what (method, route template,
//! status), which control decided and why, risk score and signals, scopes required /
//! granted / missing, rate-limit outcome, latency — and queues one record. A record
//! is written for every request: allowed, denied by any control, failed in the
//! handler, panicked, or cancelled (a drop guard writes it).
//!
//! - Format: OCSF API Activity (class 6003); see the crate README for the mapping
//!   and the stable extension fields under `unmapped.nhi_guard`.
//! - Delivery: an [`AuditWriter`] feeds a dedicated thread through a bounded queue;
//!   when the queue is full the response waits ([`Overflow::Backpressure`], the
//!   default) or the record is dropped and counted ([`Overflow::Drop`]). Sinks:
//!   [`TracingSink`], [`JsonLinesFile`] (size rotation, fsync policy),
//!   [`StdoutSink`], [`ChannelSink`], or your own [`AuditSink`].
//!   [`AuditHandle::shutdown`] returns once the sink has everything.
//! - Tamper evidence: each record carries `prev_sha256` and its own `sha256`
//!   ([`chain`] defines the canonical form), chains restart with a chain start
//!   record after rotation, and checkpoint records seal them; [`verify_file`]
//!   finds the first modified, deleted, inserted or reordered record.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use nhi_guard_audit::{AuditLayer, AuditWriter, ChannelSink, Overflow};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # tokio_test_block_on(async {
//! let (sink, mut records) = ChannelSink::new(64).unwrap();
//! let (writer, handle) = AuditWriter::builder()
//!     .capacity(1024).unwrap()
//!     .overflow(Overflow::Backpressure)
//!     .spawn(sink)
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(AuditLayer::new(writer).service_name("orders-api").allow_header("user-agent").unwrap())
//!     .service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("ok")))
//!     });
//!
//! let res = svc.oneshot(Request::get("/orders?page=2").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! handle.shutdown().await.unwrap();
//!
//! let start = records.recv().await.unwrap(); // the chain start
//! let request = records.recv().await.unwrap();
//! let v: serde_json::Value = serde_json::from_str(&request.json).unwrap();
//! assert_eq!(v["class_uid"], 6003);
//! assert_eq!(v["type_uid"], 600302); // API Activity: Read
//! assert_eq!(v["unmapped"]["prev_sha256"], start.sha256.as_str());
//! assert!(v["http_request"]["url"].get("query_string").is_none()); // not allow-listed
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! Customised: a rotating JSON Lines file, drop-and-count on overflow, 10 % of
//! allowed requests kept, the raw path when no route template is known.
//!
//! ```no_run
//! use nhi_guard_audit::{AuditLayer, AuditWriter, FsyncPolicy, JsonLinesFile, Overflow};
//!
//! let file = JsonLinesFile::open("/var/log/orders-api/audit.jsonl")?
//!     .rotate_at(64 << 20)?
//!     .keep_rotated(10)?
//!     .fsync(FsyncPolicy::Batch);
//! let (writer, handle) = AuditWriter::builder()
//!     .capacity(65_536)?
//!     .overflow(Overflow::Drop)
//!     .checkpoint_every(10_000)?
//!     .spawn(file)?;
//! let layer = AuditLayer::new(writer)
//!     .sample_allowed(0.1)?
//!     .raw_path_fallback(true)
//!     .allow_query_param("page")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod chain;
mod error;
mod event;
mod future;
mod json;
mod layer;
mod mac;
pub mod ocsf;
mod service;
mod sink;
mod writer;

pub use crate::chain::{
    BreakKind, ChainBreak, ChainTip, Tail, Verification, VerifyOptions, verify_file, verify_file_with,
    verify_files, verify_files_with, verify_reader, verify_reader_with,
};
pub use crate::error::{AuditError, ConfigError};
pub use crate::future::ResponseFuture;
pub use crate::layer::AuditLayer;
pub use crate::mac::CheckpointKey;
#[cfg(feature = "ed25519")]
pub use crate::mac::{CheckpointPublicKey, CheckpointSigner};
pub use crate::service::Audit;
pub use crate::sink::{
    AuditEntry, AuditRecord, AuditSink, ChannelSink, FsyncPolicy, JsonLinesFile, RecordKind, StdoutSink,
    TracingSink,
};
pub use crate::writer::{AuditHandle, AuditStats, AuditWriter, AuditWriterBuilder, Overflow};
