//! The `nhi-guard` command against a running demo gateway over real HTTP: the
//! gateway is built from `NHI_GUARD_*` variables as its `main` builds it and served
//! on 127.0.0.1 (examples/gateway's modules and the workspace's tests/common); the
//! command is the real binary, with the operator's token in a file.
//!
//! `report` fetches the least-privilege report with the ungoverned callers and the
//! risk decisions, as JSON and as an HTML page rendered in headless Chromium;
//! `revoke` revokes a client, lists and lifts the revocation, and the gateway's
//! answers change with it; refusals and unreachable gateways exit with their own
//! status and one line naming the endpoint, never the credential.

#[path = "../../../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "support/chromium.rs"]
#[allow(dead_code)]
mod chromium;
#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../../../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod guard;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Gateway, get, http_client};
use http::StatusCode;
use nhi_guard_testkit::temp::TempDir;
use nhi_guard_testkit::tls::{TestCa, TlsFront};
use serde_json::Value;

/// What one run of the command gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `nhi-guard args…` off the runtime's threads (the gateway keeps serving),
/// with no credential in its environment.
async fn nhi_guard(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_nhi-guard"))
            .args(&args)
            .env_remove("NHI_GUARD_TOKEN")
            .env_remove("NHI_GUARD_API_KEY")
            .env_remove("NHI_GUARD_GATEWAY")
            .env_remove("NHI_GUARD_CA_FILE")
            .output()
            .expect("run nhi-guard");
        Run {
            code: out.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("joined")
}

fn key(client: &str) -> &'static str {
    app::DEMO_API_KEYS
        .iter()
        .find(|(c, _)| *c == client)
        .expect("demo key")
        .1
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The workspace's target directory, where the screenshot stays for people to see.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_revoke_against_a_running_gateway() {
    let dir = TempDir::unique("nhi-guard-cli-gateway");
    let audit = dir.join("audit.jsonl");
    let gw = Gateway::start(&[("NHI_GUARD_AUDIT_LOG", s(&audit))])
        .await
        .expect("the gateway starts");
    let base = gw.base();
    // The clients call from their own addresses (the command, from 127.0.0.1): the
    // risk layer rightly throttles an address that presents several invalid
    // credentials, as the stranger's does and the partner's does once revoked.
    let stranger = http_client(Some([127, 0, 0, 2].into()));
    let partner_host = http_client(Some([127, 0, 0, 3].into()));
    let partner = || {
        let (client, url) = (&partner_host, format!("{base}/inventory/sku-1"));
        async move { get(client, &url, &[("x-api-key", key("partner-feed"))]).await }
    };

    // Traffic: a governed client, an ungoverned token and an unknown key.
    assert_eq!(partner().await.status, StatusCode::OK);
    let demo = gw.guard.demo.as_ref().expect("demo issuer");
    let shadow = demo.mint("shadow-etl", "orders:read", Duration::from_secs(600));
    let r = get(
        &stranger,
        &format!("{base}/orders"),
        &[("authorization", &format!("Bearer {shadow}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = get(
        &stranger,
        &format!("{base}/orders"),
        &[("x-api-key", "nhik_nobody_knows_this_key")],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);

    let ops = demo.mint("ops-console", "admin", Duration::from_secs(600));
    let token = write(&dir, "ops.token", &format!("{ops}\n"));
    let gateway = ["--gateway", base.as_str(), "--token-file", s(&token)];

    // report: one JSON document.
    let run = nhi_guard(&[&["report"][..], &gateway].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let doc: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(doc["gateway"], base.as_str());
    let clients = doc["clients_report"]["clients"].as_array().expect("clients");
    let partner_feed = clients
        .iter()
        .find(|c| c["client_id"] == "partner-feed")
        .expect("partner-feed reported");
    assert_eq!(partner_feed["never_seen"], false, "{partner_feed}");
    assert_eq!(partner_feed["used"][0]["scope"], "inventory:read");
    assert_eq!(
        doc["clients_report"]["ungoverned"]["clients"][0]["client_id"],
        "shadow-etl"
    );
    assert_eq!(
        doc["clients_report"]["ungoverned"]["api_keys"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(
        doc["risk_decisions"]["decisions"].is_array(),
        "{}",
        doc["risk_decisions"]
    );
    assert!(!run.stdout.contains(&ops) && !run.stderr.contains(&ops));
    // The query reaches the gateway; a bad one is its 400, exit 4.
    let run = nhi_guard(&[&["report", "--unused-days", "7"][..], &gateway].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = nhi_guard(&[&["report", "--since", "yesterday"][..], &gateway].concat()).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr.contains("/admin/clients?since=yesterday: 400"),
        "{}",
        run.stderr
    );

    // report --html: the page a browser shows.
    let page = dir.join("report.html");
    let run = nhi_guard(&[&["report", "--html", s(&page)][..], &gateway].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("4 clients, 1 ungoverned clients, 1 ungoverned keys"),
        "{}",
        run.stderr
    );
    let html = std::fs::read_to_string(&page).expect("page written");
    for id in ["inventory-sync", "reporting-bot", "partner-feed", "ops-console"] {
        assert!(
            html.contains(&format!("data-client-id=\"{id}\"")),
            "{id} has no row"
        );
    }
    assert!(html.contains("shadow-etl"));
    let shots = target_dir().join("nhi-guard-report");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let png = shots.join("gateway-report.png");
    if chromium::screenshot(&page, &png).is_some() {
        let bytes = std::fs::read(&png).expect("screenshot");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let dom = chromium::dump_dom(&page).expect("browser");
        assert!(dom.contains("partner-feed") && dom.contains("shadow-etl"));
        eprintln!(
            "report screenshot: {}",
            png.canonicalize().expect("path").display()
        );
    }

    // revoke client: partner-feed is refused at once; list shows it; lift restores.
    let run = nhi_guard(&[&["revoke", "client", "partner-feed"][..], &gateway].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let revocation: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(revocation["kind"], "client_id");
    assert_eq!(revocation["created_by"], "ops-console");
    let id = revocation["id"].as_str().expect("id").to_owned();
    let r = partner().await;
    assert_eq!(
        (r.status, &r.body["reason"]),
        (StatusCode::UNAUTHORIZED, &Value::from("client_revoked"))
    );
    let run = nhi_guard(&[&["revoke", "list"][..], &gateway].concat()).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(&id), "{}", run.stdout);
    let run = nhi_guard(&[&["revoke", "lift", id.as_str()][..], &gateway].concat()).await;
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, format!("lifted {id}").as_str()),
        "{}",
        run.stderr
    );
    assert_eq!(partner().await.status, StatusCode::OK);
    let run = nhi_guard(&[&["revoke", "lift", id.as_str()][..], &gateway].concat()).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("DELETE {base}/admin/revocations/{id}: 404")),
        "{}",
        run.stderr
    );
    let run = nhi_guard(&[&["revoke", "api-key", "sha256:abc"][..], &gateway].concat()).await;
    assert_eq!(run.code, 64, "{}", run.stderr);

    // A token without the admin scope: refused, exit 4, the endpoint named, the
    // token nowhere.
    let weak = demo.mint("reporting-bot", "orders:read", Duration::from_secs(600));
    let weak_file = write(&dir, "weak.token", &weak);
    let run = nhi_guard(&["report", "--gateway", &base, "--token-file", s(&weak_file)]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("nhi-guard: GET {base}/admin/clients: 403")),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(!run.stderr.contains(&weak));
    // An API key as the credential works the same way.
    let key_file = write(&dir, "ops.key", key("ops-console"));
    let run = nhi_guard(&[
        "revoke",
        "list",
        "--gateway",
        &base,
        "--api-key-file",
        s(&key_file),
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // No credential: a usage error; a missing token file: 3; nobody listening: 5.
    let run = nhi_guard(&["report", "--gateway", &base]).await;
    assert_eq!(run.code, 64, "{}", run.stderr);
    assert!(run.stderr.contains("NHI_GUARD_TOKEN"), "{}", run.stderr);
    let missing = dir.join("missing.token");
    let run = nhi_guard(&["report", "--gateway", &base, "--token-file", s(&missing)]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("missing.token"), "{}", run.stderr);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let nowhere = format!("http://{closed}");
    let run = nhi_guard(&["revoke", "list", "--gateway", &nowhere, "--token-file", s(&token)]).await;
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("nhi-guard: GET {nowhere}/admin/revocations: ")),
        "{}",
        run.stderr
    );

    // Over https, with the gateway's CA given by --ca-file (a TLS front on
    // 127.0.0.1 with a certificate of a CA made here): it answers; without the CA
    // file the certificate is not trusted (exit 5, the endpoint named).
    let ca = TestCa::new("gateway test CA");
    let front = TlsFront::start(&ca, gw.server.addr).await;
    let ca_file = write(&dir, "ca.pem", ca.pem());
    let https = front.base();
    let run = nhi_guard(&[
        "revoke",
        "list",
        "--gateway",
        &https,
        "--token-file",
        s(&token),
        "--ca-file",
        s(&ca_file),
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("\"revocations\""), "{}", run.stdout);
    let run = nhi_guard(&["revoke", "list", "--gateway", &https, "--token-file", s(&token)]).await;
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("nhi-guard: GET {https}/admin/revocations: ")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("certificate"), "{}", run.stderr);
    drop(front);

    // Each change made through the command is its own audit record naming the
    // operator.
    let records = gw.finish().await;
    let changes: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["api"]["operation"].as_str().is_some_and(|o| {
                o.starts_with("POST /admin/revocations") || o.starts_with("DELETE /admin/revocations")
            })
        })
        .collect();
    assert!(changes.len() >= 2, "{changes:?}");
    for change in changes {
        assert_eq!(change["actor"]["user"]["uid"], "ops-console", "{change}");
    }
}
