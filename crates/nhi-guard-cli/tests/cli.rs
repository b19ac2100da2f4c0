//! The `nhi-guard` binary, run as a user runs it: arguments, standard input, its
//! output and exit status.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use nhi_guard_audit::{AuditLayer, AuditWriter, JsonLinesFile};
use nhi_guard_core::registry::ApiKeyHash;
use nhi_guard_testkit::temp::TempDir;
use tower::{ServiceBuilder, ServiceExt};

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nhi-guard"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nhi-guard");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("nhi-guard ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn key_new_prints_a_fresh_key_and_its_inventory_line() {
    let out = run(&["key", "new"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (key, hash) = (lines[0], lines[1]);
    assert!(
        key.starts_with("nhik_") && key.len() == "nhik_".len() + 43,
        "{key}"
    );
    assert_eq!(hash, ApiKeyHash::of_key(key.as_bytes()).to_string());
    // Another run, another key; a prefix of one's own.
    let again = text(&run(&["key", "new"], None).stdout);
    assert_ne!(again.lines().next(), Some(key));
    let live = text(&run(&["key", "new", "--prefix", "nhik_live_"], None).stdout);
    assert!(live.starts_with("nhik_live_"), "{live}");
    let bad = run(&["key", "new", "--prefix", "a b"], None);
    assert_eq!(bad.status.code(), Some(64));
    assert!(
        text(&bad.stderr).starts_with("nhi-guard: --prefix \"a b\""),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn key_hash_reads_the_key_on_standard_input() {
    let out = run(&["key", "hash"], Some("  nhik_demo_key_123 \n"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        ApiKeyHash::of_key(b"nhik_demo_key_123").to_string()
    );
    assert!(!text(&out.stdout).contains("nhik_demo"), "the key is not echoed");
    let empty = run(&["key", "hash"], Some("\n"));
    assert_eq!(empty.status.code(), Some(1));
    assert!(text(&empty.stderr).contains("standard input must hold one key"));
}

#[test]
fn inventory_lint_prints_the_error_or_the_warnings() {
    let dir = TempDir::unique("nhi-guard-cli-lint");
    let good = dir.join("clients.toml");
    std::fs::write(
        &good,
        "[[client]]\nid = \"etl\"\nowner = \"data@example.com\"\npurpose = \"Nightly export\"\n\
         expires = \"2099-01-01T00:00:00Z\"\nscopes = [\"orders:read\"]\n\n\
         [[client]]\nid = \"old-sync\"\nowner = \"ops@example.com\"\npurpose = \"Retired sync\"\n\
         expires = \"2001-01-01T00:00:00Z\"\nscopes = [\"orders:read\"]\n",
    )
    .expect("write");
    let path = good.to_str().expect("path");
    let out = run(&["inventory", "lint", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("warning: client \"old-sync\" expired on 2001-01-01"),
        "{stdout}"
    );
    assert!(stdout.contains(": 2 clients, 0 tiers, 1 warnings"), "{stdout}");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[client]]\nid = \"etl\"\nowner = \"data@example.com\"\npurpose = \"x\"\n\
         expires = \"2099-01-01T00:00:00Z\"\nscopse = [\"orders:read\"]\n",
    )
    .expect("write");
    let out = run(&["inventory", "lint", bad.to_str().expect("path")], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("scopse"),
        "{stderr}"
    );

    let missing = run(&["inventory", "lint", "/nonexistent/clients.toml"], None);
    assert_eq!(missing.status.code(), Some(3));
    assert_eq!(run(&["inventory", "lint"], None).status.code(), Some(64));
    assert_eq!(
        run(&["inventory", "lint", path, "--warn-days", "x"], None)
            .status
            .code(),
        Some(64)
    );
}

#[tokio::test]
async fn audit_verify_checks_the_chain() {
    let dir = TempDir::unique("nhi-guard-cli-audit");
    let log = dir.join("audit.jsonl");
    let (writer, handle) = AuditWriter::builder()
        .spawn(JsonLinesFile::open(log.clone()).expect("log"))
        .expect("writer");
    let svc = ServiceBuilder::new().layer(AuditLayer::new(writer)).service_fn(
        |_req: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        },
    );
    for _ in 0..3 {
        let req = http::Request::get("/orders")
            .body(String::new())
            .expect("request");
        let _ = svc.clone().oneshot(req).await;
    }
    handle.shutdown().await.expect("sealed");
    let path = log.to_str().expect("path");
    let out = run(&["audit", "verify", path], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).starts_with(path), "{}", text(&out.stdout));

    // One edited byte breaks the chain.
    let content = std::fs::read_to_string(&log).expect("log");
    assert!(content.contains("\"GET\""), "{content}");
    std::fs::write(&log, content.replacen("\"GET\"", "\"PUT\"", 1)).expect("tamper");
    let out = run(&["audit", "verify", path], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        run(&["audit", "verify", "/nonexistent.jsonl"], None)
            .status
            .code(),
        Some(3)
    );
    assert_eq!(run(&["audit", "verify"], None).status.code(), Some(64));
    assert_eq!(run(&["frobnicate"], None).status.code(), Some(64));
}

#[tokio::test]
async fn audit_verify_authenticates_checkpoints_and_finds_the_head() {
    let dir = TempDir::unique("nhi-guard-cli-audit-key");
    let key_file = dir.join("audit.key");
    std::fs::write(
        &key_file,
        "c2VjcmV0LWtleS1mb3ItdGhlLWF1ZGl0LWNoZWNrcG9pbnRzCg==\n",
    )
    .expect("key");
    let key = nhi_guard_audit::CheckpointKey::from_file(&key_file).expect("key");
    let log = dir.join("audit.jsonl");
    let (writer, handle) = AuditWriter::builder()
        .checkpoint_key(key)
        .spawn(JsonLinesFile::open(log.clone()).expect("log"))
        .expect("writer");
    let svc = ServiceBuilder::new().layer(AuditLayer::new(writer)).service_fn(
        |_req: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        },
    );
    for _ in 0..2 {
        let req = http::Request::get("/orders")
            .body(String::new())
            .expect("request");
        let _ = svc.clone().oneshot(req).await;
    }
    handle.shutdown().await.expect("sealed");
    let (path, key) = (log.to_str().expect("path"), key_file.to_str().expect("path"));
    let out = run(&["audit", "verify", "--key", key, path], None);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let head = stdout
        .lines()
        .find_map(|l| l.strip_prefix("head: "))
        .unwrap_or_else(|| panic!("no head printed: {stdout}"))
        .to_owned();
    assert!(!stdout.contains("c2VjcmV0"), "the key is never printed");
    assert_eq!(
        run(&["audit", "verify", "--key", key, "--head", &head, path], None)
            .status
            .code(),
        Some(0)
    );

    // Another key: the checkpoints do not verify.
    let other = dir.join("other.key");
    std::fs::write(&other, [b'x'; 40]).expect("key");
    let out = run(
        &["audit", "verify", "--key", other.to_str().expect("path"), path],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("unauthenticated"),
        "{}",
        text(&out.stdout)
    );
    // A head this log never had: missing.
    let out = run(&["audit", "verify", "--head", &"0".repeat(64), path], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("head_missing"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        run(&["audit", "verify", "--head", "abc", path], None)
            .status
            .code(),
        Some(64)
    );
    assert_eq!(
        run(&["audit", "verify", "--key", "/nonexistent.key", path], None)
            .status
            .code(),
        Some(3)
    );
}
