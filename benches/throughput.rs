//! Loopback throughput with a real HTTP load generator: wrk against bare axum, the
//! full stack (the same as the `stack` criterion bench: audit to a JSON Lines file,
//! both rate limits, failure limit, risk, identity RS256 with the verified-token
//! cache, scope) and the full stack without audit, on `GET /orders` with the same
//! valid RS256 token.
//!
//! ```text
//! cargo bench --bench stack --bench throughput    # both tables
//! cargo bench --bench throughput                   # this one only
//! NHI_GUARD_WRK_DURATION=10 cargo bench --bench throughput
//! ```
//!
//! Each server binds 127.0.0.1:0 and runs on a tokio runtime with ONE worker thread
//! (its accept loop and connections all on that thread; the audit writer has its own
//! thread, as in production). The servers run one after the other, each loaded with
//! `wrk -t1 -c32 -d<NHI_GUARD_WRK_DURATION, default 5>s --latency` after one request
//! checked to answer 200. The per-address and per-client quotas are never exhausted
//! (10^9/s), so every request is allowed; if wrk reports any non-2xx/3xx response the
//! bench prints it loudly and exits 1, because it would be measuring refusals. Bare
//! axum is measured again at the end: the difference between the two bare rows is the
//! noise of the machine during the run.
//!
//! With nginx installed, two more rows put the same bare handler behind a real
//! nginx (one worker, on free loopback ports): plain `proxy_pass`, and
//! `examples/authz_server/nginx.conf` as documented, whose `auth_request` asks the
//! authz_server example (the full stack without audit) about each request. Both
//! keep connections to the upstream alive. Their ratio to each other is the cost of
//! forward auth; to bare axum, that of the extra hop as well.
//!
//! The table: requests per second, ratio to the first bare run, and wrk's median,
//! mean and 99th percentile latency. Without wrk on `PATH` (Debian: `apt-get install
//! wrk`) it prints a skip message and exits 0. Run by `cargo test --benches` (no
//! `--bench` argument) it only checks that each server answers 200. Other arguments
//! (criterion's, when both benches run in one command) are ignored.

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/authz_server/authz.rs"]
#[allow(dead_code, unreachable_pub)]
mod authz;
mod common;
#[path = "../tests/common/nginx.rs"]
#[allow(dead_code)]
mod nginx;
#[path = "../examples/edge_proxy/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::server::Server;
use http::HeaderValue;

const DEFAULT_SECONDS: u64 = 5;
const CONNECTIONS: u32 = 32;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    let bench_mode = std::env::args().skip(1).any(|a| a == "--bench");
    let wrk_available = Command::new("wrk").arg("--version").output().is_ok();
    if bench_mode && !wrk_available {
        println!("throughput: SKIPPED, wrk not found on PATH (Debian: apt-get install wrk)");
        return;
    }
    let seconds = match std::env::var("NHI_GUARD_WRK_DURATION") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => s,
            _ => {
                eprintln!(
                    "throughput: NHI_GUARD_WRK_DURATION must be a positive number of seconds, got {v:?}"
                );
                std::process::exit(2);
            }
        },
        Err(_) => DEFAULT_SECONDS,
    };

    let registry = common::registry();
    let (auth, keys, _jwks) = common::token_and_keys();
    // Removed at the end, and a killed run's directory at the next start: a full-stack
    // log reaches a gigabyte within a run.
    let dir = nhi_guard_testkit::temp::TempDir::per_process("nhi-guard-throughput");
    // The writer's shutdown is async: a small runtime of our own, apart from the servers'.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut rows = Vec::new();
    let mut audit_report = None;
    for entry in [
        "bare axum",
        "full stack",
        "full stack without audit",
        "bare axum (again)",
    ] {
        let (router, handle) = match entry {
            "full stack" => {
                let (layer, handle) = common::audit(&dir, "full.jsonl");
                let stack = common::full_stack(&registry, &keys, Some(layer));
                (common::app().layer(stack), Some(handle))
            }
            "full stack without audit" => (
                common::app().layer(common::full_stack(&registry, &keys, None)),
                None,
            ),
            _ => (common::app(), None),
        };
        let server = Server::start(router);
        let status = get_status(server.addr, &auth);
        assert_eq!(
            status, 200,
            "{entry}: GET /orders must be allowed before we load it"
        );
        if bench_mode {
            rows.push((entry, wrk(server.addr, &auth, seconds)));
        } else {
            println!("throughput: {entry} answers 200 (test mode, no load)");
        }
        drop(server);
        if let Some(handle) = handle {
            let stats = control.block_on(handle.shutdown()).unwrap();
            audit_report = Some(format!(
                "audit (full stack): {} records enqueued, {} written, {} dropped, {} sampled out, {} sink errors",
                stats.enqueued, stats.written, stats.dropped, stats.sampled_out, stats.sink_errors
            ));
        }
    }
    // Forward auth: the bare handler behind NGINX, without and with `auth_request`
    // asking the authz_server example (the full stack without audit), configured
    // as examples/authz_server/nginx.conf documents it.
    match nginx::nginx_binary() {
        None => {
            println!("throughput: nginx rows SKIPPED, nginx not found (Debian: apt-get install nginx-light)")
        }
        Some(bin) => {
            let upstream = Server::start(common::app());
            let authz = Server::start(authz::routes(
                authz::decider(common::full_stack(&registry, &keys, None)),
                None,
            ));
            let plain = format!(
                "upstream plain {{\n    server {};\n    keepalive 32;\n}}\nserver {{\n    {}\n    \
                 location / {{\n        proxy_pass http://plain;\n        proxy_http_version 1.1;\n        \
                 proxy_set_header Connection \"\";\n    }}\n}}\n",
                upstream.addr,
                nginx::LISTEN_PLACEHOLDER
            );
            let guarded = nginx::documented_site(authz.addr, upstream.addr);
            let proxy = control.block_on(nginx::Nginx::start(
                &bin,
                &[nginx::Site::Server(&plain), nginx::Site::Server(&guarded)],
            ));
            for (site, entry) in ["nginx -> bare axum", "nginx auth_request -> authz_server"]
                .into_iter()
                .enumerate()
            {
                let addr: SocketAddr = proxy.url(site).trim_start_matches("http://").parse().unwrap();
                let status = get_status(addr, &auth);
                assert_eq!(
                    status, 200,
                    "{entry}: GET /orders must be allowed before we load it"
                );
                if bench_mode {
                    rows.push((entry, wrk(addr, &auth, seconds)));
                } else {
                    println!("throughput: {entry} answers 200 (test mode, no load)");
                }
            }
            drop(proxy);
            drop((upstream, authz));
        }
    }
    drop(dir);
    if !bench_mode {
        check_parser();
        return;
    }

    println!();
    println!(
        "throughput: wrk -t1 -c{CONNECTIONS} -d{seconds}s, GET /orders with a valid RS256 token, \
         server on one tokio worker thread"
    );
    println!(
        "{:<36} {:>10} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "server", "req/s", "x bare", "p50", "avg", "p99", "requests"
    );
    let bare = rows[0].1.requests_per_sec;
    let mut refused = false;
    for (entry, r) in &rows {
        println!(
            "{entry:<36} {:>10.0} {:>7.2} {:>10} {:>10} {:>10} {:>10}",
            r.requests_per_sec,
            r.requests_per_sec / bare,
            micros(r.p50_us),
            micros(r.avg_us),
            micros(r.p99_us),
            r.requests
        );
        if r.non_2xx_3xx > 0 {
            refused = true;
            println!(
                "!!! {entry}: wrk saw {} non-2xx/3xx responses: this row measures refusals, not the allow path",
                r.non_2xx_3xx
            );
        }
        if let Some(errors) = &r.socket_errors {
            println!("!!! {entry}: wrk socket errors: {errors}");
        }
    }
    if let Some(report) = audit_report {
        println!("{report}");
    }
    if refused {
        std::process::exit(1);
    }
}

/// The status code of one `GET /orders` with the token, over a plain socket.
fn get_status(addr: SocketAddr, auth: &HeaderValue) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET /orders HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        auth.to_str().unwrap()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    // "HTTP/1.1 200 OK"
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// What we read from wrk's report.
#[derive(Debug, Default)]
struct WrkReport {
    requests_per_sec: f64,
    requests: u64,
    avg_us: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx_3xx: u64,
    socket_errors: Option<String>,
}

fn wrk(addr: SocketAddr, auth: &HeaderValue, seconds: u64) -> WrkReport {
    let out = Command::new("wrk")
        .args([
            "-t1".to_owned(),
            format!("-c{CONNECTIONS}"),
            format!("-d{seconds}s"),
            "--latency".to_owned(),
            "-H".to_owned(),
            format!("Authorization: {}", auth.to_str().unwrap()),
            format!("http://{addr}/orders"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&stdout).unwrap_or_else(|| panic!("could not read wrk's report:\n{stdout}"))
}

/// Reads wrk 4's report (`--latency`); `None` when a required line is missing.
fn parse_wrk(text: &str) -> Option<WrkReport> {
    let mut r = WrkReport::default();
    let (mut rps, mut avg, mut p50, mut p99, mut total) = (None, None, None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse().ok(),
            ["Latency", v, ..] if *v != "Distribution" => avg = duration_us(v),
            ["50%", v] => p50 = duration_us(v),
            ["99%", v] => p99 = duration_us(v),
            [n, "requests", "in", ..] => total = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx_3xx = n.parse().ok()?,
            ["Socket", "errors:", ..] => r.socket_errors = Some(line["Socket errors: ".len()..].to_owned()),
            _ => {}
        }
    }
    r.requests_per_sec = rps?;
    r.avg_us = avg?;
    r.p50_us = p50?;
    r.p99_us = p99?;
    r.requests = total?;
    Some(r)
}

/// Test mode: the parser reads a real wrk 4.1 report (taken against a server answering 404).
fn check_parser() {
    let sample = "Running 1s test @ http://127.0.0.1:18765/nonexistent
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.57ms    9.49ms  59.72ms   87.04%
    Req/Sec   828.50    480.34     1.89k    70.00%
  Latency Distribution
     50%    3.80ms
     75%   10.09ms
     90%   20.86ms
     99%   43.40ms
  824 requests in 1.00s, 418.44KB read
  Socket errors: connect 0, read 2, write 0, timeout 0
  Non-2xx or 3xx responses: 824
Requests/sec:    822.81
Transfer/sec:    417.83KB
";
    let r = parse_wrk(sample).unwrap();
    assert!((r.requests_per_sec - 822.81).abs() < 1e-9);
    assert_eq!(r.requests, 824);
    assert!((r.avg_us - 7570.0).abs() < 1e-6);
    assert!((r.p50_us - 3800.0).abs() < 1e-6);
    assert!((r.p99_us - 43400.0).abs() < 1e-6);
    assert_eq!(r.non_2xx_3xx, 824);
    assert_eq!(
        r.socket_errors.as_deref(),
        Some("connect 0, read 2, write 0, timeout 0")
    );
    assert_eq!(duration_us("85.00us"), Some(85.0));
    assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_none());
    println!("throughput: wrk report parser ok (test mode)");
}

/// wrk's durations ("85.00us", "1.20ms", "2.00s", "1.50m") in microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

/// Microseconds as "85 µs" or "1.20 ms".
fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1_000.0)
    }
}
