//! The hash chain and its verifier: every kind of tampering is found at the right
//! line; truncation after the last checkpoint is reported as such; rotation and
//! restarts keep the chain linked.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use http::Request;
use nhi_guard_audit::chain::record_hash;
use nhi_guard_audit::{
    AuditLayer, AuditWriter, BreakKind, CheckpointKey, JsonLinesFile, Tail, Verification, VerifyOptions,
    verify_file, verify_file_with, verify_files,
};
use nhi_guard_testkit::temp::TempFile;
use serde_json::Value;
use support::*;
use tower::{ServiceBuilder, ServiceExt};

async fn run(layer: AuditLayer, n: usize) {
    let modes = ["", "scope", "rate", "risk", "shadow", "error", "created"];
    for i in 0..n {
        let mut r: Request<String> = request(
            ["GET", "POST", "PATCH", "DELETE", "OPTIONS"][i % 5],
            "/orders/9?page=3",
        )
        .header("authorization", format!("Bearer {VALID_TOKEN}"))
        .header("user-agent", "sync/1.0 \"quoted\" \\back é")
        .header("x-test-mode", modes[i % modes.len()])
        .body(String::new())
        .unwrap();
        r.extensions_mut()
            .insert(nhi_guard_core::address::PeerAddr(([10, 0, 0, 1], 5000).into()));
        let _ = ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(handler::<String>)
            .oneshot(r)
            .await;
    }
}

/// A sealed log of `n` requests with a checkpoint every 5.
async fn write_log(name: &str, n: usize) -> TempFile {
    let path = tmp_dir(name).file("audit.jsonl");
    let (w, h) = AuditWriter::builder()
        .checkpoint_every(5)
        .unwrap()
        .spawn(JsonLinesFile::open(path.to_path_buf()).unwrap())
        .unwrap();
    let layer = AuditLayer::new(w)
        .allow_header("user-agent")
        .unwrap()
        .allow_query_param("page")
        .unwrap();
    run(layer, n).await;
    h.shutdown().await.unwrap();
    scan_file(&path);
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rewrite(path: &Path, lines: &[String]) -> Verification {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
    verify_file(path).unwrap()
}

fn broken_at(v: &Verification) -> (u64, BreakKind) {
    let b = v
        .first_break
        .as_ref()
        .unwrap_or_else(|| panic!("no break found: {v}"));
    (b.line, b.kind)
}

#[tokio::test]
async fn an_untouched_log_is_intact_and_sealed() {
    // start, r1..r5, ck, r6..r10, ck, r11, r12, final ck
    let path = write_log("intact", 12).await;
    let v = verify_file(&path).unwrap();
    assert!(v.is_sealed(), "{v}");
    assert_eq!((v.records, v.requests, v.chains, v.checkpoints), (16, 12, 1, 3));
    let l = lines(&path);
    assert_eq!(l.len(), 16);
    // The writer's serialisation is the canonical form: re-canonicalising every
    // parsed record gives back the exact line with the same hash.
    for line in &l {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(record_hash(&v), v["unmapped"]["sha256"].as_str().unwrap());
        assert_eq!(nhi_guard_audit::chain::canonical_json(&v), line.as_bytes());
    }
}

#[tokio::test]
async fn a_modified_record_is_found() {
    let path = write_log("modified", 12).await;
    let mut l = lines(&path);
    assert!(l[2].contains("\"decision\":\"denied\""));
    l[2] = l[2].replace("\"decision\":\"denied\"", "\"decision\":\"allowed\"");
    assert_eq!(broken_at(&rewrite(&path, &l)), (3, BreakKind::Modified));
}

#[tokio::test]
async fn a_modified_and_rehashed_record_is_found() {
    let path = write_log("rehashed", 12).await;
    let mut l = lines(&path);
    let mut v: Value = serde_json::from_str(&l[2]).unwrap();
    v["unmapped"]["nhi_guard"]["decision"] = "allowed".into();
    let h = record_hash(&v);
    v["unmapped"]["sha256"] = h.into();
    l[2] = serde_json::to_string(&v).unwrap();
    let report = rewrite(&path, &l);
    assert_eq!(broken_at(&report), (3, BreakKind::Modified), "{report}");
}

#[tokio::test]
async fn a_deleted_record_is_found() {
    let path = write_log("deleted", 12).await;
    let mut l = lines(&path);
    l.remove(3);
    let report = rewrite(&path, &l);
    assert_eq!(broken_at(&report), (4, BreakKind::Deleted), "{report}");
    // Deleting the chain start too.
    let path = write_log("deleted-start", 12).await;
    let mut l = lines(&path);
    l.remove(0);
    assert_eq!(broken_at(&rewrite(&path, &l)), (1, BreakKind::Deleted));
}

#[tokio::test]
async fn inserted_records_are_found() {
    // A copy of a record (replay).
    let path = write_log("inserted-copy", 12).await;
    let mut l = lines(&path);
    let copy = l[2].clone();
    l.insert(3, copy);
    assert_eq!(broken_at(&rewrite(&path, &l)), (4, BreakKind::Inserted));
    // A valid record of another log.
    let other = lines(&write_log("inserted-other", 3).await);
    let path = write_log("inserted-foreign", 12).await;
    let mut l = lines(&path);
    l.insert(5, other[2].clone());
    assert_eq!(broken_at(&rewrite(&path, &l)), (6, BreakKind::Inserted));
}

#[tokio::test]
async fn reordered_records_are_found() {
    let path = write_log("reordered", 12).await;
    let mut l = lines(&path);
    l.swap(2, 3);
    assert_eq!(broken_at(&rewrite(&path, &l)), (3, BreakKind::Reordered));
    // Moved further away.
    let path = write_log("reordered-far", 12).await;
    let mut l = lines(&path);
    let moved = l.remove(2);
    l.insert(9, moved);
    assert_eq!(broken_at(&rewrite(&path, &l)), (3, BreakKind::Reordered));
}

#[tokio::test]
async fn truncation_after_the_last_checkpoint_is_reported_as_such() {
    let path = write_log("truncated", 12).await;
    let l = lines(&path);
    // Cut the final checkpoint only.
    let v = rewrite(&path, &l[..15]);
    assert!(v.is_intact());
    assert_eq!(
        v.tail,
        Tail::Unsealed {
            last_checkpoint_line: Some(13),
            records_after: 2
        }
    );
    assert!(v.to_string().contains("truncated after it"), "{v}");
    // Cut everything after the second periodic checkpoint.
    let v = rewrite(&path, &l[..13]);
    assert!(v.is_intact() && !v.is_sealed());
    assert_eq!(
        v.tail,
        Tail::Unsealed {
            last_checkpoint_line: Some(13),
            records_after: 0
        }
    );
    // Cut before a checkpoint: records are missing before it.
    let mut cut = l[..9].to_vec();
    cut.extend_from_slice(&l[11..]);
    assert_eq!(broken_at(&rewrite(&path, &cut)), (10, BreakKind::Deleted));
    // Cut in the middle of the last line.
    let mut text = l.join("\n");
    text.truncate(text.len() - 40);
    std::fs::write(&path, text).unwrap();
    assert_eq!(broken_at(&verify_file(&path).unwrap()), (16, BreakKind::TornLine));
}

#[tokio::test]
async fn a_forged_checkpoint_count_is_found() {
    let path = write_log("checkpoint", 12).await;
    let mut l = lines(&path);
    let mut v: Value = serde_json::from_str(&l[6]).unwrap();
    assert_eq!(v["unmapped"]["chain"]["kind"], "checkpoint");
    v["unmapped"]["chain"]["requests"] = 4.into();
    v["unmapped"]["sha256"] = record_hash(&v).into();
    l[6] = serde_json::to_string(&v).unwrap();
    // The checkpoint's own count is wrong (and the next record no longer links).
    assert_eq!(broken_at(&rewrite(&path, &l)), (7, BreakKind::CheckpointMismatch));
}

#[tokio::test]
async fn rotated_files_each_start_a_chain_linked_to_the_previous_file() {
    let dir = tmp_dir("rotation");
    let path = dir.join("audit.jsonl");
    let file = JsonLinesFile::open(&path)
        .unwrap()
        .rotate_at(6_000)
        .unwrap()
        .keep_rotated(50)
        .unwrap();
    let oldest = file.rotated_path(1);
    let (w, h) = AuditWriter::builder()
        .checkpoint_every(7)
        .unwrap()
        .spawn(file)
        .unwrap();
    run(AuditLayer::new(w), 40).await;
    h.shutdown().await.unwrap();
    assert!(oldest.exists());
    let mut files: Vec<PathBuf> = (1..50)
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .filter(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.clone());
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        scan_file(f);
    }
    let reports = verify_files(&files).unwrap();
    assert_eq!(reports.len(), files.len());
    assert!(reports.iter().all(Verification::is_sealed));
    assert!(reports.iter().all(|r| r.chains == 1));
    assert_eq!(reports.iter().map(|r| r.requests).sum::<u64>(), 40);
    // A rotated file removed from the middle: the next one does not link.
    let mut gap = files.clone();
    gap.remove(1);
    let reports = verify_files(&gap).unwrap();
    let last = reports.last().unwrap();
    assert_eq!(broken_at(last), (1, BreakKind::FileLink));
}

#[tokio::test]
async fn appending_after_a_restart_links_the_new_chain() {
    let path = tmp_dir("restart").file("audit.jsonl");
    for n in [3, 2] {
        let (w, h) = AuditWriter::builder()
            .spawn(JsonLinesFile::open(path.to_path_buf()).unwrap())
            .unwrap();
        run(AuditLayer::new(w), n).await;
        h.shutdown().await.unwrap();
    }
    let v = verify_file(&path).unwrap();
    assert!(v.is_sealed(), "{v}");
    assert_eq!((v.chains, v.requests, v.checkpoints), (2, 5, 2));
    // Deleting the tail of the first run is found at the second chain start.
    let mut l = lines(&path);
    l.remove(3);
    l.remove(3);
    let report = rewrite(&path, &l);
    assert_eq!(broken_at(&report), (4, BreakKind::Deleted), "{report}");
}

#[tokio::test]
async fn a_line_that_can_be_read_two_ways_is_found() {
    let path = write_log("duplicate-key", 12).await;
    let mut l = lines(&path);
    assert!(l[2].contains("\"decision\":\"denied\""));
    // A reader that keeps the first of two keys sees "allowed"; serde_json keeps
    // the last, so the hash still matches: only the canonical form gives it away.
    l[2] = l[2].replace(
        "\"decision\":\"denied\"",
        "\"decision\":\"allowed\",\"decision\":\"denied\"",
    );
    let report = rewrite(&path, &l);
    assert_eq!(broken_at(&report), (3, BreakKind::NotCanonical), "{report}");
    assert!(
        report.first_break.as_ref().unwrap().detail.contains("twice"),
        "{report}"
    );
}

#[tokio::test]
async fn a_reformatted_line_is_found() {
    let path = write_log("respaced", 12).await;
    let mut l = lines(&path);
    // The same record, pretty-printed on one line: same value, same hash.
    let v: Value = serde_json::from_str(&l[4]).unwrap();
    l[4] = serde_json::to_string_pretty(&v).unwrap().replace('\n', " ");
    let report = rewrite(&path, &l);
    assert_eq!(broken_at(&report), (5, BreakKind::NotCanonical), "{report}");
}

#[tokio::test]
async fn a_crash_mid_write_is_repaired_on_restart() {
    let path = write_log("torn", 4).await;
    // The process died while writing a record: half a line at the end.
    let mut l = lines(&path);
    let half = l[2][..l[2].len() / 2].to_owned();
    let mut text = l.join("\n");
    text.push('\n');
    text.push_str(&half);
    std::fs::write(&path, &text).unwrap();
    assert_eq!(broken_at(&verify_file(&path).unwrap()).1, BreakKind::TornLine);

    // Restarted: the torn record is cut off (and kept aside), the new chain links
    // to the last complete record, and the whole log verifies.
    let (w, h) = AuditWriter::builder()
        .spawn(JsonLinesFile::open(path.to_path_buf()).unwrap())
        .unwrap();
    run(AuditLayer::new(w), 3).await;
    h.shutdown().await.unwrap();
    let v = verify_file(&path).unwrap();
    assert!(v.is_sealed(), "{v}");
    assert_eq!((v.chains, v.requests), (2, 7), "{v}");
    let mut kept = path.to_path_buf().into_os_string();
    kept.push(".torn");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), format!("{half}\n"));
    std::fs::remove_file(&kept).unwrap();
    l = lines(&path);
    assert!(!l.iter().any(|line| line.as_str() == half));
}

/// A sealed log of `n` requests whose checkpoints (every 5) carry a MAC.
async fn write_keyed_log(name: &str, n: usize, key: &CheckpointKey) -> TempFile {
    let path = tmp_dir(name).file("audit.jsonl");
    let (w, h) = AuditWriter::builder()
        .checkpoint_every(5)
        .unwrap()
        .checkpoint_key(key.clone())
        .spawn(JsonLinesFile::open(path.to_path_buf()).unwrap())
        .unwrap();
    run(AuditLayer::new(w), n).await;
    h.shutdown().await.unwrap();
    path
}

fn key(byte: u8) -> CheckpointKey {
    CheckpointKey::new(vec![byte; 32]).unwrap()
}

fn with_key(key: &CheckpointKey) -> VerifyOptions {
    VerifyOptions {
        key: Some(key.clone()),
        ..Default::default()
    }
}

/// The attack the chain alone cannot see: cut the log after line `keep` and append
/// a final checkpoint recomputed to match (counts, link, hash), with the MAC of
/// the checkpoint it copies.
fn cut_and_forge_final_checkpoint(path: &Path, keep: usize) -> Vec<String> {
    let l = lines(path);
    let mut forged: Value = serde_json::from_str(l.last().unwrap()).unwrap();
    let last: Value = serde_json::from_str(&l[keep - 1]).unwrap();
    let seq = last["unmapped"]["seq"].as_u64().unwrap() + 1;
    let requests = l[..keep]
        .iter()
        .filter(|x| x.contains("\"class_uid\":6003"))
        .count();
    forged["unmapped"]["prev_sha256"] = last["unmapped"]["sha256"].clone();
    forged["unmapped"]["seq"] = seq.into();
    forged["unmapped"]["chain"]["count"] = seq.into();
    forged["unmapped"]["chain"]["requests"] = requests.into();
    forged["unmapped"]["sha256"] = record_hash(&forged).into();
    let mut out = l[..keep].to_vec();
    out.push(String::from_utf8(nhi_guard_audit::chain::canonical_json(&forged)).unwrap());
    out
}

#[tokio::test]
async fn a_truncation_sealed_with_a_recomputed_checkpoint_is_found_with_the_key() {
    let k = key(7);
    let path = write_keyed_log("keyed-truncation", 12, &k).await;
    let genuine = verify_file_with(&path, &with_key(&k)).unwrap();
    assert!(genuine.is_sealed(), "{genuine}");
    assert_eq!(genuine.checkpoints, 3);

    // start, r1..r5, ck (7), r6..r10, ck (13), r11, r12, final ck (16): keep r1..r8.
    let forged = cut_and_forge_final_checkpoint(&path, 10);
    let without_key = rewrite(&path, &forged);
    assert!(
        without_key.is_sealed(),
        "the chain alone accepts the forgery: {without_key}"
    );
    let report = verify_file_with(&path, &with_key(&k)).unwrap();
    assert_eq!(broken_at(&report), (11, BreakKind::Unauthenticated), "{report}");
    // Another key does not verify even the genuine checkpoints.
    let other = verify_file_with(&path, &with_key(&key(8))).unwrap();
    assert_eq!(broken_at(&other), (7, BreakKind::Unauthenticated), "{other}");
}

#[tokio::test]
async fn checkpoints_without_a_mac_fail_a_keyed_verification() {
    let path = write_log("unkeyed", 6).await;
    let report = verify_file_with(&path, &with_key(&key(7))).unwrap();
    assert_eq!(broken_at(&report), (7, BreakKind::Unauthenticated), "{report}");
    assert!(report.first_break.unwrap().detail.contains("no MAC"));
}

#[tokio::test]
async fn a_truncation_to_an_earlier_genuine_checkpoint_is_found_with_the_exported_head() {
    let k = key(7);
    let path = write_keyed_log("keyed-head", 12, &k).await;
    let full = verify_file_with(&path, &with_key(&k)).unwrap();
    let head = full.head.clone().expect("a head");
    let l = lines(&path);
    let last: Value = serde_json::from_str(l.last().unwrap()).unwrap();
    assert_eq!(
        head,
        last["unmapped"]["sha256"].as_str().unwrap(),
        "the head is the last checkpoint"
    );
    let options = VerifyOptions {
        key: Some(k.clone()),
        expected_head: Some(head),
        ..Default::default()
    };
    assert!(verify_file_with(&path, &options).unwrap().is_sealed());
    // Cut after the genuine checkpoint on line 13: every MAC verifies, only the
    // head shows what is missing.
    let report = rewrite(&path, &l[..13]);
    assert!(report.is_intact(), "{report}");
    let report = verify_file_with(&path, &options).unwrap();
    assert_eq!(broken_at(&report), (14, BreakKind::HeadMissing), "{report}");
}

#[cfg(feature = "ed25519")]
mod ed25519 {
    use nhi_guard_audit::{CheckpointPublicKey, CheckpointSigner};

    use super::*;

    fn with_public_key(key: CheckpointPublicKey) -> VerifyOptions {
        VerifyOptions {
            public_key: Some(key),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn signed_checkpoints_verify_with_the_public_key_only() {
        let dir = tmp_dir("signed");
        // The signing key as openssl would store it, read back from its file.
        let pem = dir.join("audit-signing.pem");
        std::fs::write(
            &pem,
            CheckpointSigner::generate().unwrap().to_pkcs8_pem().unwrap(),
        )
        .unwrap();
        let signer = CheckpointSigner::from_pem_file(&pem).unwrap();
        let public = signer.public_key();
        assert!(!format!("{signer:?}").contains("PRIVATE"), "{signer:?}");
        let path = dir.file("audit.jsonl");
        let (w, h) = AuditWriter::builder()
            .checkpoint_every(5)
            .unwrap()
            .checkpoint_signer(signer)
            .spawn(JsonLinesFile::open(path.to_path_buf()).unwrap())
            .unwrap();
        run(AuditLayer::new(w), 12).await;
        h.shutdown().await.unwrap();

        // The public key, from PEM or hex, is all a verifier holds.
        let from_pem = CheckpointPublicKey::parse(&public.to_pem()).unwrap();
        let from_hex = CheckpointPublicKey::parse(&public.hex()).unwrap();
        assert_eq!((from_pem, from_hex), (public, public));
        let report = verify_file_with(&path, &with_public_key(public)).unwrap();
        assert!(report.is_sealed(), "{report}");

        // Cut and sealed again with a recomputed checkpoint: the copied signature
        // does not cover it.
        let forged = cut_and_forge_final_checkpoint(&path, 10);
        assert!(rewrite(&path, &forged).is_sealed(), "the chain alone accepts it");
        let report = verify_file_with(&path, &with_public_key(public)).unwrap();
        assert_eq!(broken_at(&report), (11, BreakKind::Unauthenticated), "{report}");
        // Another key pair verifies nothing.
        let other = CheckpointSigner::generate().unwrap().public_key();
        let report = verify_file_with(&path, &with_public_key(other)).unwrap();
        assert_eq!(broken_at(&report), (7, BreakKind::Unauthenticated), "{report}");
        // An unsigned log fails a signature check.
        let unsigned = write_log("unsigned", 6).await;
        let report = verify_file_with(&unsigned, &with_public_key(public)).unwrap();
        assert!(report.first_break.unwrap().detail.contains("no signature"));
    }
}
