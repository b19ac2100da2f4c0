//! Tamper evidence: the hash chain over the records and its verifier.
//!
//! # Canonical form
//!
//! A record's `unmapped.sha256` is the SHA-256, in lower-case hex, of the record's
//! *canonical serialisation without that field*: JSON with no insignificant
//! whitespace, object keys sorted by their UTF-8 bytes, strings escaped as
//! `serde_json` escapes them (`"`, `\`, control characters; nothing else), integers
//! in plain decimal (records hold no floating-point numbers), arrays in order.
//! `unmapped.prev_sha256` is the `sha256` of the record before it in the same chain
//! (64 zeros for the very first chain of a file that starts one, or the last hash
//! of the previous file after rotation), and `unmapped.seq` counts records from 0
//! at the chain start.
//!
//! Each chain begins with a chain-start record (`unmapped.chain.kind = "start"`);
//! checkpoint records (`kind = "checkpoint"`) carry the number of records before
//! them (`count`, equal to their `seq`) and of request records in the chain
//! (`requests`); the writer ends a file (rotation, shutdown) with a checkpoint whose
//! `final` is `true`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, BufRead, Read};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::mac::{CheckpointKey, Claims, checkpoint_mac, same_mac};

/// The `prev_sha256` of the first chain of a new log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex(bytes: &[u8]) -> String {
    let digits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .collect();
    // Hex digits are ASCII: never the empty fallback.
    String::from_utf8(digits).unwrap_or_default()
}

/// Writes the canonical serialisation of `value` (see the module docs).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail; serde_json's escaping is the canonical one.
    let _ = serde_json::to_writer(out, value);
}

/// The hash of a parsed record: SHA-256 over its canonical form without
/// `unmapped.sha256`, in hex.
pub fn record_hash(record: &Value) -> String {
    let mut copy = record.clone();
    if let Some(unmapped) = copy.get_mut("unmapped").and_then(Value::as_object_mut) {
        unmapped.remove("sha256");
    }
    hex(&Sha256::digest(canonical_json(&copy)))
}

/// Hashes `buf` (a canonical record without `sha256`, ending with the `}}` that
/// closes `unmapped` and the record) and splices `"sha256":"…"` in as the last key
/// of `unmapped`, which sorts last in the record. Returns the hash.
pub(crate) fn seal(buf: &mut Vec<u8>) -> String {
    let digest = hex(&Sha256::digest(&buf[..]));
    debug_assert!(buf.ends_with(b"}}"));
    buf.truncate(buf.len().saturating_sub(2));
    buf.extend_from_slice(b",\"sha256\":\"");
    buf.extend_from_slice(digest.as_bytes());
    buf.extend_from_slice(b"\"}}");
    digest
}

/// Where the chain stands: the hash of the last record and the next sequence
/// number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTip {
    /// `sha256` of the last record written.
    pub sha256: String,
    /// `seq` of the last record written.
    pub seq: u64,
}

impl ChainTip {
    /// Reads the tip from the last complete line of a JSON Lines audit log.
    pub fn from_last_line(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        let u = v.get("unmapped")?;
        Some(Self {
            sha256: u.get("sha256")?.as_str()?.to_owned(),
            seq: u.get("seq")?.as_u64()?,
        })
    }
}

/// What kind of break the verifier found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// A line that is not an audit record (not JSON, or without chain fields).
    Malformed,
    /// The last line is incomplete: the file was cut in the middle of a record.
    TornLine,
    /// A record's content does not match its hash, or it was replaced by another
    /// record with a recomputed hash.
    Modified,
    /// Records are missing.
    Deleted,
    /// A record that does not belong here (a copy, or a forged record).
    Inserted,
    /// Records are out of order.
    Reordered,
    /// A checkpoint's counts do not match the records before it.
    CheckpointMismatch,
    /// A rotated file does not link to the file before it.
    FileLink,
    /// A line that is not byte for byte the canonical form of the record it parses
    /// to: a duplicate key (which JSON readers resolve differently, so the line
    /// could say two things), members reordered or re-spaced.
    NotCanonical,
    /// Verified with a key: a checkpoint without a MAC, or whose MAC does not
    /// verify (written by someone who does not hold the key).
    Unauthenticated,
    /// Verified with an expected head: the checkpoint exported earlier is not in
    /// the log, which was truncated or rewritten before it.
    HeadMissing,
}

impl BreakKind {
    /// A stable name (`modified`, `deleted`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TornLine => "torn_line",
            Self::Modified => "modified",
            Self::Deleted => "deleted",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::CheckpointMismatch => "checkpoint_mismatch",
            Self::FileLink => "file_link",
            Self::NotCanonical => "not_canonical",
            Self::Unauthenticated => "unauthenticated",
            Self::HeadMissing => "head_missing",
        }
    }
}

/// The first place where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 1-based line number of the first record that does not verify.
    pub line: u64,
    /// What was found.
    pub kind: BreakKind,
    /// A human explanation.
    pub detail: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {} ({})", self.line, self.kind.as_str(), self.detail)
    }
}

/// How the log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tail {
    /// The file holds no records.
    Empty,
    /// The last record is a final checkpoint: nothing can have been cut off
    /// without breaking the chain.
    Sealed,
    /// Records follow the last checkpoint (or there is none) and no final
    /// checkpoint ends the file: the writer is still running or stopped without
    /// shutting down, or the file was truncated after the last checkpoint.
    Unsealed {
        /// Line of the last checkpoint, if any.
        last_checkpoint_line: Option<u64>,
        /// Records after it.
        records_after: u64,
    },
}

/// The verifier's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Records read (all kinds).
    pub records: u64,
    /// Request (API Activity) records among them.
    pub requests: u64,
    /// Chain starts.
    pub chains: u64,
    /// Checkpoints.
    pub checkpoints: u64,
    /// The first break, if any. Verification stops there.
    pub first_break: Option<ChainBreak>,
    /// How the file ends (meaningful when there is no break).
    pub tail: Tail,
    /// The tip of the chain (last valid record).
    pub tip: Option<ChainTip>,
    /// `prev_sha256` of the first record (links a rotated file to the one before).
    pub first_prev: Option<String>,
    /// `sha256` of the last checkpoint before any break: the chain's head. Kept
    /// outside the log, it is the expected head of a later verification
    /// ([`VerifyOptions::expected_head`]), which then finds a truncation even to
    /// an earlier, genuine checkpoint.
    pub head: Option<String>,
}

/// What [`verify_file_with`] checks besides the chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Every checkpoint must carry a MAC that verifies under this key (the
    /// writer's [`crate::AuditWriterBuilder::checkpoint_key`]).
    pub key: Option<CheckpointKey>,
    /// A head exported earlier ([`Verification::head`]) must be a checkpoint of
    /// the log.
    pub expected_head: Option<String>,
    /// Every checkpoint must carry an Ed25519 signature that this public key
    /// verifies (the writer's [`crate::AuditWriterBuilder::checkpoint_signer`];
    /// feature `ed25519`).
    #[cfg(feature = "ed25519")]
    pub public_key: Option<crate::CheckpointPublicKey>,
}

impl Verification {
    /// No break was found.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }

    /// No break, and the file ends with a final checkpoint.
    pub fn is_sealed(&self) -> bool {
        self.is_intact() && self.tail == Tail::Sealed
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(b) = &self.first_break {
            return write!(f, "BROKEN at {b}");
        }
        write!(
            f,
            "intact: {} records ({} requests, {} chains, {} checkpoints)",
            self.records, self.requests, self.chains, self.checkpoints
        )?;
        match self.tail {
            Tail::Empty => write!(f, "; empty"),
            Tail::Sealed => write!(f, "; sealed by a final checkpoint"),
            Tail::Unsealed {
                last_checkpoint_line: Some(line),
                records_after,
            } => write!(
                f,
                "; UNSEALED: {records_after} records after the last checkpoint (line {line}); \
                 records may have been truncated after it, or the writer did not shut down"
            ),
            Tail::Unsealed {
                last_checkpoint_line: None,
                records_after,
            } => write!(
                f,
                "; UNSEALED: no checkpoint, {records_after} records; the file may have been truncated"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Start,
    Checkpoint {
        requests: u64,
        count: u64,
        is_final: bool,
        dropped: u64,
        sampled: u64,
        mac: Option<String>,
        sig: Option<String>,
    },
    Request,
}

#[derive(Debug)]
struct Entry {
    line: u64,
    seq: u64,
    prev: String,
    sha: String,
    hash_ok: bool,
    kind: Kind,
}

fn parse_entry(line_no: u64, text: &str) -> Result<Entry, (BreakKind, String)> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| (BreakKind::Malformed, format!("not JSON: {e}")))?;
    // The writer writes every record in its canonical form: any other spelling of
    // it (a duplicate key, whose value readers pick differently, reordered or
    // re-spaced members) was not written by it.
    if canonical_json(&v) != text.as_bytes() {
        let duplicate = v.as_object().is_some_and(|_| has_duplicate_key(text));
        return Err((
            BreakKind::NotCanonical,
            if duplicate {
                "a key appears twice in one object: the line can be read two ways".into()
            } else {
                "the line is not the canonical form of its record (members reordered or re-spaced)".into()
            },
        ));
    }
    parse_fields(line_no, &v).map_err(|e| (BreakKind::Malformed, e))
}

/// Whether some object of `text` (valid JSON) has a key twice.
fn has_duplicate_key(text: &str) -> bool {
    struct Check;
    impl<'de> serde::de::Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON without duplicate keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                map.next_value::<Nested>()?;
            }
            Ok(())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<Nested>()?.is_some() {}
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    struct Nested;
    impl<'de> serde::Deserialize<'de> for Nested {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Check).map(|()| Nested)
        }
    }
    serde_json::from_str::<Nested>(text).is_err()
}

fn parse_fields(line_no: u64, v: &Value) -> Result<Entry, String> {
    let u = v.get("unmapped").ok_or("no `unmapped` object")?;
    let seq = u.get("seq").and_then(Value::as_u64).ok_or("no `unmapped.seq`")?;
    let prev = u
        .get("prev_sha256")
        .and_then(Value::as_str)
        .ok_or("no `unmapped.prev_sha256`")?
        .to_owned();
    let sha = u
        .get("sha256")
        .and_then(Value::as_str)
        .ok_or("no `unmapped.sha256`")?
        .to_owned();
    let kind = match u.get("chain") {
        Some(c) => match c.get("kind").and_then(Value::as_str) {
            Some("start") => Kind::Start,
            Some("checkpoint") => Kind::Checkpoint {
                requests: c
                    .get("requests")
                    .and_then(Value::as_u64)
                    .ok_or("checkpoint without `requests`")?,
                count: c
                    .get("count")
                    .and_then(Value::as_u64)
                    .ok_or("checkpoint without `count`")?,
                is_final: c.get("final").and_then(Value::as_bool).unwrap_or(false),
                dropped: c.get("dropped_total").and_then(Value::as_u64).unwrap_or(0),
                sampled: c.get("sampled_out_total").and_then(Value::as_u64).unwrap_or(0),
                mac: c.get("mac").and_then(Value::as_str).map(str::to_owned),
                sig: c.get("sig").and_then(Value::as_str).map(str::to_owned),
            },
            _ => return Err("unknown `unmapped.chain.kind`".into()),
        },
        None => Kind::Request,
    };
    let hash_ok = record_hash(v) == sha;
    Ok(Entry {
        line: line_no,
        seq,
        prev,
        sha,
        hash_ok,
        kind,
    })
}

/// Verifies a JSON Lines audit log read from `reader`. Stops at the first break.
///
/// # Errors
/// Only I/O errors of the reader; everything wrong with the content is reported
/// in the [`Verification`].
pub fn verify_reader(reader: impl BufRead) -> io::Result<Verification> {
    verify_reader_with(reader, &VerifyOptions::default())
}

/// [`verify_reader`] with the checks of `options`.
///
/// # Errors
/// Only I/O errors of the reader.
pub fn verify_reader_with(mut reader: impl BufRead, options: &VerifyOptions) -> io::Result<Verification> {
    let mut entries = Vec::new();
    let mut report = Verification {
        records: 0,
        requests: 0,
        chains: 0,
        checkpoints: 0,
        first_break: None,
        tail: Tail::Empty,
        tip: None,
        first_prev: None,
        head: None,
    };
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut parse_break = None;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.ends_with(b"\n");
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() && complete {
            continue;
        }
        match parse_entry(line_no, text) {
            Ok(e) => entries.push(e),
            Err((kind, detail)) => {
                let kind = if complete { kind } else { BreakKind::TornLine };
                let detail = if complete {
                    detail
                } else {
                    "the file ends in the middle of a record: it was truncated".into()
                };
                parse_break = Some(ChainBreak {
                    line: line_no,
                    kind,
                    detail,
                });
                break;
            }
        }
    }
    let walk_break = walk(&entries, &mut report);
    report.first_break = match (walk_break, parse_break) {
        (Some(w), _) => Some(w),
        (None, p) => p,
    };
    let limit = report.first_break.as_ref().map_or(u64::MAX, |b| b.line);
    let verified = || entries.iter().take_while(|e| e.line < limit);
    let is_checkpoint = |e: &&Entry| matches!(e.kind, Kind::Checkpoint { .. });
    report.head = verified().filter(is_checkpoint).last().map(|e| e.sha.clone());
    if let Some(b) = verified().find_map(|e| unauthenticated(options, e)) {
        report.first_break = Some(b);
    }
    if let Some(head) = &options.expected_head
        && report.first_break.is_none()
        && !verified().filter(is_checkpoint).any(|e| e.sha == *head)
    {
        report.first_break = Some(ChainBreak {
            line: line_no + 1,
            kind: BreakKind::HeadMissing,
            detail: format!(
                "the expected head {head} is not a checkpoint of this log: it was truncated or rewritten before it"
            ),
        });
    }
    Ok(report)
}

/// The break a checkpoint makes under `options`, if its MAC or signature is
/// missing or wrong.
fn unauthenticated(options: &VerifyOptions, e: &Entry) -> Option<ChainBreak> {
    let Kind::Checkpoint {
        requests,
        is_final,
        dropped,
        sampled,
        mac,
        sig,
        ..
    } = &e.kind
    else {
        return None;
    };
    let claims = Claims {
        prev_sha256: &e.prev,
        seq: e.seq,
        requests: *requests,
        dropped_total: *dropped,
        sampled_out_total: *sampled,
        is_final: *is_final,
    };
    let brk = |detail: &str| {
        Some(ChainBreak {
            line: e.line,
            kind: BreakKind::Unauthenticated,
            detail: detail.into(),
        })
    };
    if let Some(key) = &options.key {
        match mac {
            Some(m) if same_mac(m, &checkpoint_mac(key, &claims)) => {}
            Some(_) => {
                return brk("the checkpoint's MAC does not verify under the key: it was written without it");
            }
            None => return brk("the checkpoint carries no MAC: it was written without the key"),
        }
    }
    #[cfg(feature = "ed25519")]
    if let Some(public) = &options.public_key {
        match sig {
            Some(s) if public.verifies(&claims, s) => {}
            Some(_) => return brk("the checkpoint's signature does not verify under the public key"),
            None => {
                return brk("the checkpoint carries no signature: it was written without the signing key");
            }
        }
    }
    let _ = sig;
    None
}

fn walk(entries: &[Entry], report: &mut Verification) -> Option<ChainBreak> {
    let by_sha: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.sha.as_str(), i))
        .collect();
    let mut seen = HashSet::new();
    let mut chain_requests = 0u64;
    let mut last_checkpoint: Option<u64> = None;
    let mut after_checkpoint = 0u64;
    let mut sealed = false;
    report.first_prev = entries.first().map(|e| e.prev.clone());
    for (i, e) in entries.iter().enumerate() {
        let brk = |kind, detail: String| {
            Some(ChainBreak {
                line: e.line,
                kind,
                detail,
            })
        };
        if !e.hash_ok {
            return brk(
                BreakKind::Modified,
                "the record's content does not match its sha256".into(),
            );
        }
        match i.checked_sub(1).map(|j| &entries[j]) {
            None => {
                if e.kind != Kind::Start {
                    return brk(
                        BreakKind::Deleted,
                        format!(
                            "the file does not begin with a chain start (first record has seq {}): records before it were deleted",
                            e.seq
                        ),
                    );
                }
                if e.seq != 0 {
                    return brk(BreakKind::Modified, "a chain start with seq other than 0".into());
                }
            }
            Some(p) => {
                let expected = if e.kind == Kind::Start { 0 } else { p.seq + 1 };
                if e.prev != p.sha || e.seq != expected {
                    return Some(classify(entries, &by_sha, &seen, i, expected));
                }
            }
        }
        if e.kind == Kind::Start {
            seen.clear();
            chain_requests = 0;
        }
        seen.insert(e.seq);
        report.records += 1;
        sealed = false;
        match e.kind {
            Kind::Start => {
                report.chains += 1;
                after_checkpoint += 1;
            }
            Kind::Request => {
                report.requests += 1;
                chain_requests += 1;
                after_checkpoint += 1;
            }
            Kind::Checkpoint {
                requests,
                count,
                is_final,
                ..
            } => {
                if count != e.seq || requests != chain_requests {
                    return brk(
                        BreakKind::CheckpointMismatch,
                        format!(
                            "checkpoint says {count} records / {requests} requests, the chain holds {} / {chain_requests}",
                            e.seq
                        ),
                    );
                }
                report.checkpoints += 1;
                last_checkpoint = Some(e.line);
                after_checkpoint = 0;
                sealed = is_final;
            }
        }
        report.tip = Some(ChainTip {
            sha256: e.sha.clone(),
            seq: e.seq,
        });
    }
    report.tail = if entries.is_empty() {
        Tail::Empty
    } else if sealed {
        Tail::Sealed
    } else {
        Tail::Unsealed {
            last_checkpoint_line: last_checkpoint,
            records_after: after_checkpoint,
        }
    };
    None
}

fn classify(
    entries: &[Entry],
    by_sha: &HashMap<&str, usize>,
    seen: &HashSet<u64>,
    i: usize,
    expected: u64,
) -> ChainBreak {
    let e = &entries[i];
    let p = &entries[i - 1];
    let pred = by_sha.get(e.prev.as_str()).copied();
    let mk = |line, kind, detail: String| ChainBreak { line, kind, detail };
    // Its predecessor comes later in the file: it was moved up.
    if let Some(j) = pred
        && j > i
    {
        return mk(
            e.line,
            BreakKind::Reordered,
            format!(
                "this record follows the record on line {}, which comes after it",
                entries[j].line
            ),
        );
    }
    // The record that should come here comes later.
    let rightful = entries[i + 1..]
        .iter()
        .take_while(|x| x.kind != Kind::Start || expected == 0)
        .position(|x| x.prev == p.sha && x.seq == expected);
    if let Some(k) = rightful {
        let what = if seen.contains(&e.seq) || pred.is_some() {
            "a copy of an earlier record"
        } else {
            "a record that is not part of this chain"
        };
        return mk(
            e.line,
            BreakKind::Inserted,
            format!(
                "{what} was inserted after line {}; the chain continues on line {}",
                p.line,
                entries[i + 1 + k].line
            ),
        );
    }
    if e.kind == Kind::Start {
        return mk(
            e.line,
            BreakKind::Deleted,
            format!(
                "this chain start does not link to line {}: records between them were deleted",
                p.line
            ),
        );
    }
    if e.seq == expected {
        return mk(
            p.line,
            BreakKind::Modified,
            format!(
                "the record on line {} does not match the prev_sha256 of the record after it: it was replaced",
                p.line
            ),
        );
    }
    if e.seq > expected {
        return mk(
            e.line,
            BreakKind::Deleted,
            format!(
                "{} record(s) missing between line {} and this one",
                e.seq - expected,
                p.line
            ),
        );
    }
    mk(
        e.line,
        BreakKind::Inserted,
        format!("seq {} does not continue seq {} of line {}", e.seq, p.seq, p.line),
    )
}

/// Verifies one audit log file.
///
/// # Errors
/// I/O errors opening or reading the file.
pub fn verify_file(path: impl AsRef<Path>) -> io::Result<Verification> {
    verify_file_with(path, &VerifyOptions::default())
}

/// [`verify_file`] with the checks of `options`: every checkpoint authenticated
/// under a key, an exported head present.
///
/// # Errors
/// I/O errors opening or reading the file.
pub fn verify_file_with(path: impl AsRef<Path>, options: &VerifyOptions) -> io::Result<Verification> {
    let file = std::fs::File::open(path)?;
    verify_reader_with(io::BufReader::with_capacity(1 << 16, file), options)
}

/// Verifies rotated files given oldest first (`audit.jsonl.2`, `audit.jsonl.1`,
/// `audit.jsonl`): each file on its own, and that each file's first record links
/// to the last record of the file before it. Returns one report per file; the
/// first break found ends the check (later files are not read).
///
/// # Errors
/// I/O errors opening or reading a file.
pub fn verify_files<P: AsRef<Path>>(paths: &[P]) -> io::Result<Vec<Verification>> {
    verify_files_with(paths, &VerifyOptions::default())
}

/// [`verify_files`] with the checks of `options`: the key for every file; the
/// expected head in any of them (it is reported missing on the newest file).
///
/// # Errors
/// I/O errors opening or reading a file.
pub fn verify_files_with<P: AsRef<Path>>(
    paths: &[P],
    options: &VerifyOptions,
) -> io::Result<Vec<Verification>> {
    let keyed = VerifyOptions {
        expected_head: None,
        ..options.clone()
    };
    let mut out: Vec<Verification> = Vec::new();
    for path in paths {
        let mut v = verify_file_with(path, &keyed)?;
        if v.is_intact()
            && let Some(prev) = out.last()
            && let (Some(tip), Some(first)) = (&prev.tip, &v.first_prev)
            && tip.sha256 != *first
        {
            v.first_break = Some(ChainBreak {
                line: 1,
                kind: BreakKind::FileLink,
                detail: "the chain start does not link to the last record of the previous file".into(),
            });
        }
        let broken = !v.is_intact();
        out.push(v);
        if broken {
            break;
        }
    }
    if let Some(head) = &options.expected_head
        && out.len() == paths.len()
        && out.iter().all(Verification::is_intact)
    {
        let mut found = false;
        for path in paths {
            let v = verify_file_with(
                path,
                &VerifyOptions {
                    expected_head: Some(head.clone()),
                    ..VerifyOptions::default()
                },
            )?;
            found |= v.is_intact();
        }
        if !found && let Some(newest) = out.last_mut() {
            newest.first_break = Some(ChainBreak {
                line: newest.records + 1,
                kind: BreakKind::HeadMissing,
                detail: format!(
                    "the expected head {head} is not a checkpoint of these logs: they were truncated or rewritten before it"
                ),
            });
        }
    }
    Ok(out)
}

/// Reads the tip of an existing log (its last complete line), to link a new chain
/// to it when appending. The file must end with a newline (see [`repair_tail`]);
/// the last line may be of any length.
pub(crate) fn read_tip(file: &mut std::fs::File) -> io::Result<Option<ChainTip>> {
    use std::io::{Seek, SeekFrom};
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    // The last line starts after the newline before the final one.
    let start = match last_newline_before(file, len - 1)? {
        Some(nl) => nl + 1,
        None => 0,
    };
    file.seek(SeekFrom::Start(start))?;
    let mut line = Vec::new();
    file.take(len - start).read_to_end(&mut line)?;
    Ok(ChainTip::from_last_line(
        String::from_utf8_lossy(&line).trim_end(),
    ))
}

/// The offset of the last `\n` before byte `end`, read backwards in blocks.
fn last_newline_before(file: &mut std::fs::File, end: u64) -> io::Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    const BLOCK: u64 = 1 << 16;
    let mut hi = end;
    let mut block = Vec::new();
    while hi > 0 {
        let lo = hi.saturating_sub(BLOCK);
        file.seek(SeekFrom::Start(lo))?;
        block.clear();
        file.by_ref().take(hi - lo).read_to_end(&mut block)?;
        if let Some(i) = block.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// Cuts a torn last line (a crash in the middle of a write) off the end of a log,
/// so that what is appended next starts on a line of its own and the log stays
/// verifiable. Returns the bytes cut, for the caller to keep as evidence.
pub(crate) fn repair_tail(file: &mut std::fs::File) -> io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(Vec::new());
    }
    let keep = match last_newline_before(file, len)? {
        Some(nl) => nl + 1,
        None => 0,
    };
    file.seek(SeekFrom::Start(keep))?;
    let mut torn = Vec::new();
    file.by_ref().take(len - keep).read_to_end(&mut torn)?;
    file.set_len(keep)?;
    file.sync_data()?;
    Ok(torn)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&bytes), expected);
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let v: Value = serde_json::from_str(r#"{ "b": [1, {"z": "é\n", "a": null}], "a": true }"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":true,"b":[1,{"a":null,"z":"é\n"}]}"#
        );
    }

    #[test]
    fn the_tip_is_found_behind_a_last_line_of_any_length() {
        let dir = nhi_guard_testkit::temp::TempDir::unique("nhi-guard-audit-long-tip");
        let path = dir.join("audit.jsonl");
        let long = "x".repeat(300_000);
        let text = format!(
            "{{\"unmapped\":{{\"seq\":0,\"sha256\":\"aa\"}}}}\n{{\"pad\":\"{long}\",\"unmapped\":{{\"seq\":1,\"sha256\":\"bb\"}}}}\n"
        );
        std::fs::write(&path, &text).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let tip = read_tip(&mut file).unwrap().unwrap();
        assert_eq!((tip.sha256.as_str(), tip.seq), ("bb", 1));
        // A torn record after it, longer than a block too, is cut off whole.
        let torn = format!("{{\"pad\":\"{long}");
        std::fs::write(&path, format!("{text}{torn}")).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(repair_tail(&mut file).unwrap(), torn.as_bytes());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert_eq!(read_tip(&mut file).unwrap().unwrap().seq, 1);
        assert!(repair_tail(&mut file).unwrap().is_empty(), "nothing more to cut");
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        assert!(has_duplicate_key(r#"{"a":1,"b":{"c":1,"c":2}}"#));
        assert!(has_duplicate_key(r#"{"a":[{"x":1,"x":1}]}"#));
        assert!(!has_duplicate_key(
            r#"{"a":1,"b":{"a":1},"c":[1,"a",null,true,1.5]}"#
        ));
    }

    #[test]
    fn seal_appends_the_hash_as_the_last_key() {
        let mut buf = br#"{"a":1,"unmapped":{"prev_sha256":"00","seq":0}}"#.to_vec();
        let h = seal(&mut buf);
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["unmapped"]["sha256"], h.as_str());
        assert_eq!(record_hash(&v), h);
    }
}
