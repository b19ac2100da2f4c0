//! Client addresses behind a real nginx. The demo gateway runs in-process (built
//! from `NHI_GUARD_*` variables as `main` builds it, served on 127.0.0.1:0 with
//! each connection's peer address) and trusts `NHI_GUARD_TRUSTED_PROXIES=127.0.0.1/32`:
//! the nginx this test starts on a free loopback port, which proxies to it with
//! nginx's usual `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`.
//! The test's clients connect to nginx from 127.0.0.2 (and .3, .4): addresses
//! that are *not* trusted proxies, as a real client's would be (Linux routes all
//! of 127.0.0.0/8 to the loopback interface).
//!
//! - What nginx sends upstream, seen by an echo server: it appends the client's
//!   real address to a client-sent `X-Forwarded-For` and passes a client-sent
//!   `Forwarded` through untouched.
//! - With the default forwarding header (`X-Forwarded-For`), a client restricted to
//!   `192.0.2.0/24` that claims `Forwarded: for=192.0.2.9`, or a leading
//!   `X-Forwarded-For: 192.0.2.9`, is refused (403 `network_not_allowed`); a client
//!   restricted to its real address is served whatever it claims; the audit log
//!   records 127.0.0.2 for each, never the claimed address.
//! - `NHI_GUARD_FORWARDED_HEADER=forwarded` works behind a proxy that sets
//!   `Forwarded` itself; behind one that only appends `X-Forwarded-For` it is a
//!   misconfiguration that lets the client's own header place it.
//! - The per-address flood shield keys on the real address: rotating spoofed
//!   addresses does not reset it, and another address keeps its own budget.
//!
//! nginx is looked up on `PATH`, then at /usr/sbin/nginx. Without it (or without
//! usable client addresses 127.0.0.2 to .4) the tests are skipped with a message,
//! except under `CI=true`, where they fail.

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

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use axum::extract::ConnectInfo;
use common::nginx::{Nginx, Site};
use common::{Gateway, HttpClient, Reply, Server, client_toml, get, http_client};
use http::{HeaderMap, StatusCode};
use nhi_guard::core::registry::ApiKeyHash;
use nhi_guard_testkit::temp::TempDir;
use serde_json::{Value, json};

/// Where the test's clients really are: loopback, but not a trusted proxy. A
/// client at 127.0.0.1 would itself be a trusted proxy, and its own leading
/// `X-Forwarded-For` rightly believed (the rightmost *untrusted* address wins).
const CLIENT: &str = "127.0.0.2";
/// The flood-shield test's two clients, each its own address.
const FLOODER: &str = "127.0.0.3";
const BYSTANDER: &str = "127.0.0.4";
/// The address a client claims.
const SPOOFED: &str = "192.0.2.9";
/// nginx's standard way to pass the client's address: append it to whatever
/// `X-Forwarded-For` the client sent.
const APPEND_XFF: &str = "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;";

/// Restricted to 192.0.2.0/24: it gets in only by lying about its address.
const PROBE_KEY: &str = "nhik_lab_probe_0c4e7a91d2";
/// Restricted to 127.0.0.2/32: it gets in only when its real address is resolved.
const EDGE_KEY: &str = "nhik_edge_client_6b2f19e0a7";
/// No network restriction.
const OPEN_KEY: &str = "nhik_open_client_93d5c8b14f";

fn inventory() -> String {
    let key = |k: &str| format!("api_keys = [\"{}\"]", ApiKeyHash::of_key(k.as_bytes()));
    [
        client_toml(
            "lab-probe",
            &[key(PROBE_KEY), "networks = [\"192.0.2.0/24\"]".into()],
        ),
        client_toml(
            "edge-client",
            &[key(EDGE_KEY), format!("networks = [\"{CLIENT}/32\"]")],
        ),
        client_toml("open-client", &[key(OPEN_KEY)]),
    ]
    .concat()
}

// ---------------------------------------------------------------------------
// Prerequisites: nginx, and loopback addresses besides 127.0.0.1.
// ---------------------------------------------------------------------------

fn prerequisites(test: &str) -> Option<PathBuf> {
    common::nginx::prerequisites(test, &[CLIENT, FLOODER, BYSTANDER])
}

// ---------------------------------------------------------------------------

/// An upstream answering with the peer address and forwarding headers it received.
async fn echo_server() -> Server {
    async fn echo(ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap) -> axum::Json<Value> {
        let all = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap_or("<not ASCII>").to_owned())
                .collect()
        };
        axum::Json(json!({
            "peer": peer.ip().to_string(),
            "x-forwarded-for": all("x-forwarded-for"),
            "forwarded": all("forwarded"),
        }))
    }
    Server::start(axum::Router::new().fallback(echo)).await
}

/// A gateway trusting 127.0.0.1 (nginx) with the test inventory, its audit log
/// in `dir`, and `extra` variables.
async fn gateway(dir: &TempDir, extra: &[(&str, &str)]) -> Gateway {
    let clients = dir.join("clients.toml");
    std::fs::write(&clients, inventory()).expect("inventory");
    let (clients, audit) = (
        clients.to_string_lossy().into_owned(),
        dir.join("audit.jsonl").to_string_lossy().into_owned(),
    );
    let mut vars = vec![
        ("NHI_GUARD_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("NHI_GUARD_CLIENTS", clients.as_str()),
        ("NHI_GUARD_AUDIT_LOG", audit.as_str()),
    ];
    vars.extend_from_slice(extra);
    Gateway::start(&vars).await.expect("the gateway starts")
}

/// A client whose connections leave from `ip`.
fn client_at(ip: &str) -> HttpClient {
    http_client(Some(ip.parse::<IpAddr>().expect("client address")))
}

async fn orders(client: &HttpClient, base: &str, key: Option<&str>, claims: &[(&str, &str)]) -> Reply {
    let mut headers = claims.to_vec();
    headers.extend(key.map(|k| ("x-api-key", k)));
    get(client, &format!("{base}/orders"), &headers).await
}

/// The request is refused because the client calls from outside its networks.
fn assert_network_refused(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.text);
    assert_eq!(
        (&r.body["control"], &r.body["reason"]),
        (&json!("identity"), &json!("network_not_allowed")),
        "{what}: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_a_client_cannot_move_itself_with_forwarding_headers() {
    let Some(bin) = prerequisites("behind_nginx_a_client_cannot_move_itself_with_forwarding_headers") else {
        return;
    };
    let dir = TempDir::unique("nhi-guard-gateway-nginx");
    // The default forwarding header: X-Forwarded-For.
    let gw = gateway(&dir, &[]).await;
    let echo = echo_server().await;
    let nginx = Nginx::start(
        &bin,
        &[
            Site::Proxy {
                upstream: gw.server.addr,
                directives: APPEND_XFF,
            },
            Site::Proxy {
                upstream: echo.addr,
                directives: APPEND_XFF,
            },
        ],
    )
    .await;
    let (proxied, echoed) = (nginx.url(0), nginx.url(1));
    let client = client_at(CLIENT);

    // What nginx sends upstream: it connects from 127.0.0.1, appends the client's
    // real address to whatever X-Forwarded-For the client sent, and passes the
    // client's Forwarded header through untouched.
    for (sent, xff, forwarded) in [
        (vec![], json!([CLIENT]), json!([])),
        (
            vec![("x-forwarded-for", SPOOFED)],
            json!([format!("{SPOOFED}, {CLIENT}")]),
            json!([]),
        ),
        (
            vec![("forwarded", "for=192.0.2.9")],
            json!([CLIENT]),
            json!(["for=192.0.2.9"]),
        ),
    ] {
        let r = get(&client, &echoed, &sent).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["peer"], "127.0.0.1", "{sent:?}: {}", r.text);
        assert_eq!(r.body["x-forwarded-for"], xff, "{sent:?}: {}", r.text);
        assert_eq!(r.body["forwarded"], forwarded, "{sent:?}: {}", r.text);
    }

    // The gateway resolves the rightmost X-Forwarded-For address that is not a
    // trusted proxy: the one nginx appended. A client restricted to its real
    // address is served, whatever it claims.
    let r = orders(&client, &proxied, Some(EDGE_KEY), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = orders(
        &client,
        &proxied,
        Some(EDGE_KEY),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "a leading claim does not move it away: {}",
        r.text
    );

    // A client restricted to 192.0.2.0/24 claiming to be there is refused.
    let r = orders(
        &client,
        &proxied,
        Some(PROBE_KEY),
        &[("forwarded", "for=192.0.2.9")],
    )
    .await;
    assert_network_refused(&r, "Forwarded: for=192.0.2.9");
    let r = orders(
        &client,
        &proxied,
        Some(PROBE_KEY),
        &[("x-forwarded-for", SPOOFED)],
    )
    .await;
    assert_network_refused(&r, "X-Forwarded-For: 192.0.2.9");
    let r = orders(
        &client,
        &proxied,
        Some(PROBE_KEY),
        &[
            ("x-forwarded-for", "192.0.2.10, 192.0.2.9"),
            ("forwarded", "for=\"192.0.2.9:443\";proto=https"),
            ("x-real-ip", SPOOFED),
        ],
    )
    .await;
    assert_network_refused(&r, "every header at once");
    assert!(
        !r.text.contains("192.0.2"),
        "the refusal repeats no address: {}",
        r.text
    );
    // Straight to the gateway (its peer is not a trusted proxy) the headers are
    // not read at all.
    let r = orders(
        &client,
        &gw.base(),
        Some(PROBE_KEY),
        &[("x-forwarded-for", SPOOFED)],
    )
    .await;
    assert_network_refused(&r, "direct, X-Forwarded-For: 192.0.2.9");
    // An unrestricted client is served through nginx with the same claims.
    let r = orders(&client, &proxied, Some(OPEN_KEY), &[("x-forwarded-for", SPOOFED)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The audit log places every request at the client's real address; only the
    // direct one records the socket's port (the others are forwarded addresses).
    let records = gw.finish().await;
    assert_eq!(records.len(), 7, "{records:#?}");
    for (i, rec) in records.iter().enumerate() {
        assert_eq!(rec["src_endpoint"]["ip"], CLIENT, "record {i}: {rec}");
        assert!(!rec.to_string().contains("192.0.2"), "record {i}: {rec}");
        assert_eq!(
            rec["src_endpoint"]["port"].is_number(),
            i == 5,
            "record {i}: {rec}"
        );
    }
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["unmapped"]["nhi_guard"]["reason"] == "network_not_allowed")
        .collect();
    assert_eq!(refused.len(), 4, "{records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_header_must_name_the_header_the_proxy_sets() {
    let Some(bin) = prerequisites("forwarded_header_must_name_the_header_the_proxy_sets") else {
        return;
    };
    let dir = TempDir::unique("nhi-guard-gateway-nginx-forwarded");
    let gw = gateway(&dir, &[("NHI_GUARD_FORWARDED_HEADER", "forwarded")]).await;
    let nginx = Nginx::start(
        &bin,
        &[
            // Right: nginx sets Forwarded itself, replacing any the client sent
            // (proxy_set_header replaces a request header of the same name).
            Site::Proxy {
                upstream: gw.server.addr,
                directives: r#"proxy_set_header Forwarded "for=$remote_addr";"#,
            },
            // Wrong: nginx appends X-Forwarded-For and passes the client's
            // Forwarded header through, while the gateway reads Forwarded.
            Site::Proxy {
                upstream: gw.server.addr,
                directives: APPEND_XFF,
            },
        ],
    )
    .await;
    let (sets_forwarded, appends_xff) = (nginx.url(0), nginx.url(1));
    let client = client_at(CLIENT);

    let r = orders(&client, &sets_forwarded, Some(EDGE_KEY), &[]).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the real address, from Forwarded: {}",
        r.text
    );
    let r = orders(
        &client,
        &sets_forwarded,
        Some(EDGE_KEY),
        &[("forwarded", "for=10.1.2.3")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = orders(
        &client,
        &sets_forwarded,
        Some(PROBE_KEY),
        &[("forwarded", "for=192.0.2.9")],
    )
    .await;
    assert_network_refused(&r, "Forwarded: for=192.0.2.9, replaced by nginx");
    let r = orders(
        &client,
        &sets_forwarded,
        Some(PROBE_KEY),
        &[("x-forwarded-for", SPOOFED)],
    )
    .await;
    assert_network_refused(&r, "X-Forwarded-For, not read when configured `forwarded`");

    // The misconfiguration NHI_GUARD_FORWARDED_HEADER exists to rule out: the
    // variable must name the header the proxy actually sets. Named `forwarded`
    // behind a proxy that only appends X-Forwarded-For, the gateway reads the
    // header the client wrote: an honest client is placed at the proxy, and a
    // client restricted to 192.0.2.0/24 gets in by claiming to be there.
    let r = orders(&client, &appends_xff, Some(EDGE_KEY), &[]).await;
    assert_network_refused(&r, "misconfigured: no Forwarded, the proxy's own address");
    let r = orders(
        &client,
        &appends_xff,
        Some(PROBE_KEY),
        &[("forwarded", "for=192.0.2.9")],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "misconfigured: the client's claim is believed: {}",
        r.text
    );

    let records = gw.finish().await;
    let placed: Vec<&str> = records
        .iter()
        .map(|r| r["src_endpoint"]["ip"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        placed,
        [CLIENT, CLIENT, CLIENT, CLIENT, "127.0.0.1", SPOOFED],
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_flood_shield_keys_on_the_real_address_behind_nginx() {
    let Some(bin) = prerequisites("the_address_flood_shield_keys_on_the_real_address_behind_nginx") else {
        return;
    };
    let dir = TempDir::unique("nhi-guard-gateway-nginx-limit");
    // Three anonymous requests per address, then 429: the gateway's clock stands
    // still, so the budget never refills during the test.
    let gw = gateway(&dir, &[("NHI_GUARD_ADDRESS_LIMIT", "1:3")]).await;
    let nginx = Nginx::start(
        &bin,
        &[Site::Proxy {
            upstream: gw.server.addr,
            directives: APPEND_XFF,
        }],
    )
    .await;
    let proxied = nginx.url(0);
    let (flooder, bystander) = (client_at(FLOODER), client_at(BYSTANDER));

    // Every request of the flooder claims another address, in both headers.
    for i in 0..4 {
        let (xff, fwd) = (format!("192.0.2.{i}"), format!("for=198.51.100.{i}"));
        let r = orders(
            &flooder,
            &proxied,
            None,
            &[("x-forwarded-for", xff.as_str()), ("forwarded", fwd.as_str())],
        )
        .await;
        if i < 3 {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "request {i}: {}", r.text);
        } else {
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "request {i}: {}", r.text);
            assert_eq!(r.body["violated-policies"], json!(["per-address"]), "{}", r.text);
        }
    }
    // Another address behind the same proxy has its own budget.
    let r = orders(&bystander, &proxied, None, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // A verified client is governed by its tier, not by the flooded address.
    let r = orders(&flooder, &proxied, Some(OPEN_KEY), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let records = gw.finish().await;
    let placed = common::placed(&records);
    assert_eq!(
        placed,
        [
            (FLOODER, 401),
            (FLOODER, 401),
            (FLOODER, 401),
            (FLOODER, 429),
            (BYSTANDER, 401),
            (FLOODER, 200),
        ],
        "{records:#?}"
    );
}
