//! The demo gateway in front of real HTTPS issuers, configured as a user configures
//! it: `NHI_GUARD_ISSUER=https://127.0.0.1:PORT` (one, or a comma-separated list),
//! `NHI_GUARD_CA_FILE` naming a PEM bundle, `NHI_GUARD_CLIENTS` naming an inventory
//! file. Each issuer is a hyper server over tokio-rustls on 127.0.0.1:0 with a
//! certificate from a CA made in the test (rcgen), serving OpenID Connect discovery
//! and its JWKS; its tokens are signed with its own key. The gateway serves over
//! HTTP on 127.0.0.1:0 and is called with hyper's client.
//!
//! - The issuer's CA in `NHI_GUARD_CA_FILE`: discovery and keys over TLS, a token
//!   of the issuer is served (200), a token signed by a key it never published is
//!   not (401).
//! - Without it (or with another CA, or a file that is no PEM bundle) the gateway
//!   refuses to start with a message naming the variable; for an untrusted
//!   certificate the message names `NHI_GUARD_ISSUER`, the issuer and says the
//!   certificate is not trusted, and no request reached the issuer.
//! - Two issuers, each client bound to one: each client's token from its own issuer
//!   is served; issuer 2's token naming issuer 1's client is refused (401
//!   `client_issuer_mismatch`) and audited; an inventory with a client that lists
//!   no issuer stops start-up naming the client.

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

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gateway, HttpClient, client_toml, get, http_client};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nhi_guard::identity::DemoIssuer;
use nhi_guard_testkit::temp::TempDir;
use nhi_guard_testkit::tls::TestCa;
use serde_json::json;
use tokio_rustls::TlsAcceptor;

/// The `aud` every token here carries (`NHI_GUARD_AUDIENCE`).
const AUDIENCE: &str = "orders-api";
const DISCOVERY: &str = "/.well-known/openid-configuration";
const JWKS: &str = "/jwks.json";

// ---------------------------------------------------------------------------
// An HTTPS issuer: a test CA and a hyper server over tokio-rustls (the pattern of
// crates/nhi-guard-identity/tests/jwks_https.rs).
// ---------------------------------------------------------------------------

/// A token issuer at `https://127.0.0.1:PORT`: OpenID Connect discovery at
/// `/.well-known/openid-configuration`, its JWKS at `/jwks.json`, tokens signed
/// with its key. The server stops with its connections when dropped.
struct HttpsIssuer {
    keys: DemoIssuer,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsIssuer {
    async fn start(ca: &TestCa) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let base = format!("https://{addr}");
        let keys = DemoIssuer::new(base.as_str(), AUDIENCE).expect("signing key");
        let docs: Arc<HashMap<&'static str, String>> = Arc::new(HashMap::from([
            (
                DISCOVERY,
                json!({"issuer": base, "jwks_uri": format!("{base}{JWKS}")}).to_string(),
            ),
            (JWKS, keys.jwks_json()),
        ]));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let acceptor = TlsAcceptor::from(ca.server_config());
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            // Dropped (so every connection aborted) when the accept loop is aborted.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, docs, counted) = (acceptor.clone(), docs.clone(), counted.clone());
                connections.spawn(async move {
                    // A client refusing the certificate ends here: nothing is served.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let path = req.uri().path().to_owned();
                        *counted.lock().expect("lock").entry(path.clone()).or_default() += 1;
                        let res = match docs.get(path.as_str()) {
                            Some(body) => Response::builder()
                                .header("content-type", "application/json")
                                .body(body.clone()),
                            None => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(String::new()),
                        };
                        async move { Ok::<_, Infallible>(res.expect("response")) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { keys, hits, task }
    }

    /// `https://127.0.0.1:PORT`: the issuer identifier, `iss` of its tokens.
    fn base(&self) -> &str {
        self.keys.iss()
    }

    /// Requests served for `path` (after a completed TLS handshake).
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().expect("lock").get(path).copied().unwrap_or(0)
    }

    /// An RFC 9068 access token of this issuer for `client`, scope `orders:read`.
    fn token(&self, client: &str) -> String {
        self.keys.mint(client, "orders:read", Duration::from_secs(300))
    }
}

impl Drop for HttpsIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------

/// A directory holding the files the variables name.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new(name: &str) -> Self {
        Self {
            dir: TempDir::unique(&format!("nhi-guard-gateway-https-{name}")),
        }
    }

    /// Writes `name` and returns its path as the variable's value.
    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

/// `GET /orders` with a bearer token.
async fn orders(client: &HttpClient, gw: &Gateway, token: &str) -> common::Reply {
    get(
        client,
        &format!("{}/orders", gw.base()),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Owned variables as the pairs `Gateway::start` takes.
fn refs<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Builds the gateway and expects start-up to fail.
async fn start_up_error(vars: &[(&str, &str)]) -> String {
    match Gateway::start(vars).await {
        Ok(_) => panic!("the gateway started with {vars:?}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_issuer_is_trusted_through_nhi_guard_ca_file() {
    let ca = TestCa::new("identity provider test CA");
    let issuer = HttpsIssuer::start(&ca).await;
    let files = Files::new("trusted");
    // One issuer: the inventory need not name it (existing inventories keep working).
    let vars = [
        ("NHI_GUARD_ISSUER", issuer.base()),
        ("NHI_GUARD_AUDIENCE", AUDIENCE),
        ("NHI_GUARD_CA_FILE", &files.write("ca.pem", ca.pem())),
        (
            "NHI_GUARD_CLIENTS",
            &files.write("clients.toml", &client_toml("orders-sync", &[])),
        ),
        ("NHI_GUARD_AUDIT_LOG", &files.path("audit.jsonl")),
    ];
    let gw = Gateway::start(&vars).await.expect("the gateway starts");
    // Discovery and the first key fetch went over TLS at start-up; the background
    // refresh waits for the interval that fetch asked for instead of fetching again.
    assert_eq!(issuer.hits(DISCOVERY), 1);
    assert_eq!(issuer.hits(JWKS), 1);

    let client = http_client(None);
    let r = orders(&client, &gw, &issuer.token("orders-sync")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["orders"][0]["id"], "ord-1001", "{}", r.text);

    // A token carrying the issuer's name, signed by a key it never published.
    let forger = DemoIssuer::new(issuer.base(), AUDIENCE).expect("another key");
    let forged = forger.mint("orders-sync", "orders:read", Duration::from_secs(300));
    let r = orders(&client, &gw, &forged).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(
        r.header("www-authenticate").contains(r#"error="invalid_token""#),
        "{r:?}"
    );
    assert_eq!(r.body["control"], "identity", "{}", r.text);

    let records = gw.finish().await;
    let decisions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            let g = &r["unmapped"]["nhi_guard"];
            (
                g["decision"].as_str().unwrap_or_default(),
                g["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(decisions.len(), 2, "{records:?}");
    assert_eq!(decisions[0].0, "allowed", "{records:?}");
    assert_eq!(decisions[1].0, "denied", "{records:?}");
    let all: String = records.iter().map(ToString::to_string).collect();
    assert!(!all.contains(&forged), "a token reached the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_issuers_ca_the_gateway_refuses_to_start() {
    let ca = TestCa::new("identity provider test CA");
    let other = TestCa::new("some other CA");
    let issuer = HttpsIssuer::start(&ca).await;
    let files = Files::new("untrusted");
    let clients = files.write("clients.toml", &client_toml("orders-sync", &[]));
    // The configuration of the test, with `NHI_GUARD_CA_FILE=ca_file` when given.
    let vars = |ca_file: Option<&str>| {
        let mut vars = vec![
            ("NHI_GUARD_ISSUER", issuer.base().to_owned()),
            ("NHI_GUARD_AUDIENCE", AUDIENCE.to_owned()),
            ("NHI_GUARD_CLIENTS", clients.clone()),
        ];
        vars.extend(ca_file.map(|f| ("NHI_GUARD_CA_FILE", f.to_owned())));
        vars
    };

    // Without NHI_GUARD_CA_FILE only the platform's anchors are trusted, and the
    // test CA is not among them; with another CA's certificate neither.
    let other_ca = files.write("other-ca.pem", other.pem());
    for ca_file in [None, Some(other_ca.as_str())] {
        let err = start_up_error(&refs(&vars(ca_file))).await;
        assert!(err.starts_with("NHI_GUARD_ISSUER"), "{err}");
        assert!(err.contains(issuer.base()), "names the issuer: {err}");
        assert!(err.contains("not trusted"), "{err}");
        assert!(err.contains("set NHI_GUARD_CA_FILE"), "says what to do: {err}");
    }
    // The handshakes failed: no request reached the issuer.
    assert_eq!((issuer.hits(DISCOVERY), issuer.hits(JWKS)), (0, 0));

    // A CA file that cannot be read, or holds no certificate, names the variable.
    let not_pem = files.write("not-a-bundle.pem", "this is not PEM\n");
    for ca_file in [files.path("missing.pem"), not_pem] {
        let err = start_up_error(&refs(&vars(Some(&ca_file)))).await;
        assert!(err.starts_with("NHI_GUARD_CA_FILE="), "{err}");
        assert!(err.contains(&ca_file), "names the file: {err}");
    }
    assert_eq!(issuer.hits(DISCOVERY), 0);

    // The same configuration with the issuer's CA starts.
    let ca_file = files.write("ca.pem", ca.pem());
    let gw = Gateway::start(&refs(&vars(Some(&ca_file))))
        .await
        .expect("starts with the issuer's CA");
    let r = orders(&http_client(None), &gw, &issuer.token("orders-sync")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_https_issuers_each_client_bound_to_its_own() {
    // Two identity providers with certificates from two CAs, trusted through one
    // PEM bundle.
    let (ca1, ca2) = (TestCa::new("provider 1 CA"), TestCa::new("provider 2 CA"));
    let (iss1, iss2) = (HttpsIssuer::start(&ca1).await, HttpsIssuer::start(&ca2).await);
    let files = Files::new("two-issuers");
    let bundle = files.write("ca-bundle.pem", &format!("{}{}", ca1.pem(), ca2.pem()));
    let issuers = format!("{},{}", iss1.base(), iss2.base());
    let inventory = format!(
        "{}{}",
        client_toml("client-a", &[format!("issuers = [\"{}\"]", iss1.base())]),
        client_toml("client-b", &[format!("issuers = [\"{}\"]", iss2.base())]),
    );
    let vars = [
        ("NHI_GUARD_ISSUER", issuers.as_str()),
        ("NHI_GUARD_AUDIENCE", AUDIENCE),
        ("NHI_GUARD_CA_FILE", &bundle),
        ("NHI_GUARD_CLIENTS", &files.write("clients.toml", &inventory)),
        ("NHI_GUARD_AUDIT_LOG", &files.path("audit.jsonl")),
    ];
    let gw = Gateway::start(&vars).await.expect("the gateway starts");
    // Each issuer was discovered over TLS.
    assert_eq!((iss1.hits(DISCOVERY), iss2.hits(DISCOVERY)), (1, 1));

    let client = http_client(None);
    let r = orders(&client, &gw, &iss1.token("client-a")).await;
    assert_eq!(r.status, StatusCode::OK, "client A from issuer 1: {}", r.text);
    let r = orders(&client, &gw, &iss2.token("client-b")).await;
    assert_eq!(r.status, StatusCode::OK, "client B from issuer 2: {}", r.text);

    // Issuer 2 (validly signed, trusted) names issuer 1's client.
    let r = orders(&client, &gw, &iss2.token("client-a")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert!(
        r.header("www-authenticate").contains(r#"error="invalid_token""#),
        "{r:?}"
    );
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(r.body["reason"], "client_issuer_mismatch", "{}", r.text);
    assert!(
        !r.text.contains("127.0.0.1"),
        "the body names no issuer: {}",
        r.text
    );

    let records = gw.finish().await;
    assert_eq!(records.len(), 3, "{records:?}");
    let g = &records[2]["unmapped"]["nhi_guard"];
    assert_eq!(
        (&g["decision"], &g["control"], &g["reason"]),
        (
            &json!("denied"),
            &json!("identity"),
            &json!("client_issuer_mismatch")
        ),
        "{}",
        records[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_issuers_a_client_without_issuers_stops_start_up() {
    let (ca1, ca2) = (TestCa::new("provider 1 CA"), TestCa::new("provider 2 CA"));
    let (iss1, iss2) = (HttpsIssuer::start(&ca1).await, HttpsIssuer::start(&ca2).await);
    let files = Files::new("no-issuers");
    let bundle = files.write("ca-bundle.pem", &format!("{}{}", ca1.pem(), ca2.pem()));
    let issuers = format!("{},{}", iss1.base(), iss2.base());
    let inventory = format!(
        "{}{}",
        client_toml("client-a", &[format!("issuers = [\"{}\"]", iss1.base())]),
        client_toml("legacy-batch", &[]),
    );
    let clients = files.write("clients.toml", &inventory);
    let vars = [
        ("NHI_GUARD_ISSUER", issuers.as_str()),
        ("NHI_GUARD_AUDIENCE", AUDIENCE),
        ("NHI_GUARD_CA_FILE", bundle.as_str()),
        ("NHI_GUARD_CLIENTS", clients.as_str()),
    ];
    let err = start_up_error(&vars).await;
    // Either issuer could mint a token naming it: the operator must say which.
    assert!(
        err.starts_with(&format!("NHI_GUARD_CLIENTS={clients}")),
        "names the variable and the file: {err}"
    );
    assert!(err.contains("`legacy-batch`"), "names the client: {err}");
    assert!(err.contains("issuers"), "names the field: {err}");

    // The same inventory is fine with a single issuer.
    let vars = [
        ("NHI_GUARD_ISSUER", iss1.base()),
        ("NHI_GUARD_AUDIENCE", AUDIENCE),
        ("NHI_GUARD_CA_FILE", bundle.as_str()),
        ("NHI_GUARD_CLIENTS", clients.as_str()),
    ];
    let gw = Gateway::start(&vars)
        .await
        .expect("one issuer, no binding needed");
    let r = orders(&http_client(None), &gw, &iss1.token("legacy-batch")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}
