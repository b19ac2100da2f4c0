//! The gateway as a process manager runs it: a child process started from this test
//! binary, under concurrent load over real sockets, stopped with SIGTERM and SIGINT
//! and reloaded with SIGHUP. Every response a client received has its audit record,
//! the log is sealed, the exit status is 0; a reload under load refuses and drops
//! nothing.

#![cfg(unix)]

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;
#[path = "../examples/gateway/server.rs"]
#[allow(dead_code, unreachable_pub)]
mod server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nhi_guard::core::registry::ApiKeyHash;
use nhi_guard_testkit::temp::TempDir;

/// Set in the child's environment: run the gateway instead of returning.
const CHILD: &str = "NHI_GUARD_TEST_GATEWAY_CHILD";
const LOAD_KEY: &str = "nhik_load_generator_5b9e01c7d2";
const LATE_KEY: &str = "nhik_late_joiner_3c0fa9e6b1";

/// Not a test of its own: the gateway program, run by the tests below in a child
/// process (`<this binary> gateway_child --exact --ignored`), configured by the
/// environment they give it. Returns at once anywhere else.
#[test]
#[ignore = "the gateway child process of the signal tests in this file"]
fn gateway_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(async {
            guard::init_tracing();
            server::run(|k| std::env::var(k).ok()).await
        })
        .expect("the gateway stops cleanly");
}

fn inventory(with_late_joiner: bool) -> String {
    let client = |id: &str, key: &str| {
        format!(
            "[[client]]\nid = \"{id}\"\nowner = \"qa@example.com\"\npurpose = \"Drives the signal tests\"\n\
             expires = \"2099-01-01T00:00:00Z\"\nscopes = [\"orders:read\"]\ntier = \"load\"\n\
             api_keys = [\"{}\"]\n\n",
            ApiKeyHash::of_key(key.as_bytes())
        )
    };
    let mut toml = String::from("[tiers.load]\nper_second = 1000000\nburst = 1000000\n\n");
    toml.push_str(&client("load-generator", LOAD_KEY));
    if with_late_joiner {
        toml.push_str(&client("late-joiner", LATE_KEY));
    }
    toml
}

/// The child gateway: killed on drop if it is still running.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    stderr: mpsc::Receiver<String>,
    dir: TempDir,
}

impl Gateway {
    /// Starts the gateway on a free loopback port with an inventory and an audit
    /// log in a fresh directory; returns once it printed `listening on`.
    fn start(name: &str) -> Self {
        let dir = TempDir::unique(&format!("nhi-guard-gateway-{name}"));
        std::fs::write(dir.join("clients.toml"), inventory(false)).expect("inventory");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "gateway_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("NHI_GUARD_LISTEN", "127.0.0.1:0")
            .env("NHI_GUARD_CLIENTS", dir.join("clients.toml"))
            .env("NHI_GUARD_AUDIT_LOG", dir.join("audit.jsonl"))
            .env("NHI_GUARD_RISK_MODE", "off")
            .env("NHI_GUARD_SHUTDOWN_GRACE", "20")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the gateway child");
        let (out_tx, out_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        // Read to the end whoever listens: a closed pipe would fail the child's
        // last writes (and its exit status).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        let mut printed = Vec::new();
        let addr = loop {
            match out_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    // libtest's `test gateway_child ... ` may lead the line.
                    if let Some((_, url)) = line.split_once("listening on http://") {
                        break url.trim().parse().expect("listen address");
                    }
                    printed.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let errors: Vec<String> = stderr.try_iter().collect();
                    panic!(
                        "the gateway did not start ({e}); stdout:\n{}\nstderr:\n{}",
                        printed.join("\n"),
                        errors.join("\n")
                    );
                }
            }
        };
        Self {
            child,
            addr,
            stderr,
            dir,
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for a stderr line containing `needle`, returning every line seen.
    fn wait_for_log(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.stderr.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(e) => panic!("no log line with {needle:?} ({e}); saw:\n{}", seen.join("\n")),
            }
        }
    }

    fn wait(&mut self) -> ExitStatus {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the gateway did not exit within a minute of the signal");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Concurrent keep-alive clients calling `GET /orders` until told to stop or the
/// gateway goes away.
struct Load {
    ok: Arc<AtomicU64>,
    other: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize, key: &'static str) -> Self {
        let ok = Arc::new(AtomicU64::new(0));
        let other = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (ok, other, stop) = (ok.clone(), other.clone(), stop.clone());
                tokio::spawn(async move {
                    let client: Client<HttpConnector, Empty<Bytes>> =
                        Client::builder(TokioExecutor::new()).build_http();
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get(format!("http://{addr}/orders"))
                            .header("x-api-key", key)
                            .body(Empty::new())
                            .expect("request");
                        match client.request(req).await {
                            Ok(res) => {
                                let status = res.status();
                                // A response counts as received once its body is in.
                                if res.into_body().collect().await.is_err() {
                                    return;
                                }
                                if status == StatusCode::OK {
                                    ok.fetch_add(1, Ordering::SeqCst);
                                } else {
                                    other.lock().expect("lock").push(status.to_string());
                                }
                            }
                            // The gateway stopped accepting: this client is done.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Self {
            ok,
            other,
            stop,
            tasks,
        }
    }

    async fn until_ok(&self, n: u64) {
        while self.ok.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the clients (or waits for them to find the gateway gone) and returns
    /// the number of 200 responses received.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("client task");
        }
        let other = self.other.lock().expect("lock").clone();
        assert!(other.is_empty(), "responses other than 200: {other:?}");
        self.ok.load(Ordering::SeqCst)
    }
}

/// The audit log's request records for `GET /orders` that were allowed, after
/// checking the chain is intact and sealed.
fn audited_orders(gw: &Gateway) -> u64 {
    let path = gw.dir.join("audit.jsonl");
    let verification = nhi_guard::audit::verify_file(&path).expect("readable log");
    assert!(verification.is_intact(), "{:?}", verification.first_break);
    assert!(
        verification.is_sealed(),
        "the log ends with its final checkpoint: {:?}",
        verification.tail
    );
    let text = std::fs::read_to_string(&path).expect("log");
    assert!(!text.contains(LOAD_KEY), "an API key reached the audit log");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|r| {
            r["api"]["operation"] == "GET /orders" && r["unmapped"]["nhi_guard"]["decision"] == "allowed"
        })
        .count() as u64
}

async fn stop_under_load(signal: &str) {
    let mut gw = Gateway::start(&signal.to_lowercase());
    let load = Load::start(gw.addr, 16, LOAD_KEY);
    load.until_ok(2000).await;
    gw.signal(signal);
    let status = tokio::task::block_in_place(|| gw.wait());
    let received = load.finish().await;
    let log: Vec<String> = gw.stderr.try_iter().collect();
    assert!(
        status.success(),
        "exit status after {signal}: {status}\n{}",
        log.join("\n")
    );
    assert!(received >= 2000);
    assert_eq!(
        audited_orders(&gw),
        received,
        "every answered request, and only those, has its record"
    );
    assert!(
        log.iter().any(|l| l.contains("audit log flushed and sealed")),
        "{}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|l| l.contains(LOAD_KEY)),
        "an API key reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_requests_seals_the_log_and_exits_0() {
    stop_under_load("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_same_way() {
    stop_under_load("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_without_refusing_or_dropping_a_request() {
    let mut gw = Gateway::start("hup");
    let probe = |key: &'static str| {
        let addr = gw.addr;
        async move {
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let req = Request::get(format!("http://{addr}/orders"))
                .header("x-api-key", key)
                .body(Empty::new())
                .expect("request");
            client.request(req).await.expect("response").status()
        }
    };
    assert_eq!(probe(LATE_KEY).await, StatusCode::UNAUTHORIZED);
    // The inventory holds no `admin` client: the gateway started anyway, warning
    // about the routes nobody can call yet.
    tokio::task::block_in_place(|| {
        let seen = gw.wait_for_log("GET /metrics");
        assert!(
            seen.iter()
                .any(|l| l.contains("no client in the inventory can pass this policy rule yet")),
            "{}",
            seen.join("\n")
        );
    });
    let load = Load::start(gw.addr, 16, LOAD_KEY);
    load.until_ok(500).await;
    let mut probes = 1;
    for round in 0..4 {
        let with_late = round % 2 == 0;
        std::fs::write(gw.dir.join("clients.toml"), inventory(with_late)).expect("inventory");
        gw.signal("HUP");
        tokio::task::block_in_place(|| {
            gw.wait_for_log("inventory reloaded");
            // The reload warns again about the rules its inventory leaves unreachable.
            gw.wait_for_log("GET /metrics");
        });
        let expected = if with_late {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(probe(LATE_KEY).await, expected, "after reload {round}");
        probes += 1;
        let seen = load.ok.load(Ordering::SeqCst);
        load.until_ok(seen + 200).await;
    }
    // A file that does not load leaves the current inventory serving.
    std::fs::write(gw.dir.join("clients.toml"), "[[client]]\nid = \"broken\"\n").expect("inventory");
    gw.signal("HUP");
    tokio::task::block_in_place(|| gw.wait_for_log("inventory reload failed"));
    assert_eq!(probe(LOAD_KEY).await, StatusCode::OK);
    let seen = load.ok.load(Ordering::SeqCst);
    load.until_ok(seen + 200).await;

    gw.signal("TERM");
    let status = tokio::task::block_in_place(|| gw.wait());
    let received = load.finish().await;
    assert!(status.success(), "{status}");
    // The load generator's requests plus the successful probes (the first probe
    // and the ones after a reload that dropped the late joiner were refused).
    let audited = audited_orders(&gw);
    assert_eq!(audited, received + 2 + 1, "probes: {probes}");
}
