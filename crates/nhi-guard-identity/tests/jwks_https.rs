//! The JWKS manager against a real HTTPS issuer on 127.0.0.1:0 whose certificate
//! comes from a CA made in the test (rcgen): discovery, key fetch, verification
//! through the identity layer and rotation over TLS; a certificate from an unknown
//! CA refused with a clear error and counted; a `jwks_uri` downgrade to http
//! refused; the platform store honouring `SSL_CERT_FILE` (in a child process, as
//! the variable is read from the environment).
//!
//! The CA is the testkit's (`nhi_guard_testkit::tls::TestCa`, feature `tls`);
//! [`HttpsIssuer`] serves documents over TLS with its certificate.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_util::debugging::DebuggingRecorder;
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::metrics::{ISSUER_METADATA_FETCHES_TOTAL, JWKS_FETCHES_TOTAL};
use nhi_guard_identity::{Algorithm, HttpFetcher, IdentityLayer, Issuer, JwksConfig, RemoteKeys};
use nhi_guard_testkit::metrics::Snapshot;
use nhi_guard_testkit::temp::TempDir;
use nhi_guard_testkit::tls::TestCa;
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;
use tower::{Layer, ServiceExt, service_fn};

// ---------------------------------------------------------------------------
// A reusable HTTPS issuer: a test CA and a hyper server over tokio-rustls.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Served {
    /// path -> JSON body; other paths answer 404.
    docs: HashMap<String, String>,
    /// path -> requests served (after a completed TLS handshake).
    hits: HashMap<String, usize>,
}

/// Documents served over HTTPS (HTTP/1.1) on 127.0.0.1:0; the server stops
/// with its connections when dropped.
struct HttpsIssuer {
    addr: SocketAddr,
    state: Arc<Mutex<Served>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsIssuer {
    async fn start(tls: Arc<rustls::ServerConfig>) -> Self {
        let state = Arc::new(Mutex::new(Served::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(tls);
        let served = state.clone();
        let task = tokio::spawn(async move {
            // Dropped (so every connection aborted) when the accept loop is aborted.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let served = served.clone();
                connections.spawn(async move {
                    // A client refusing our certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let served = served.clone();
                        async move { Ok::<_, Infallible>(Self::answer(&served, req.uri().path())) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn answer(served: &Mutex<Served>, path: &str) -> Response<String> {
        let mut st = served.lock().unwrap();
        *st.hits.entry(path.to_owned()).or_default() += 1;
        match st.docs.get(path) {
            Some(body) => Response::builder()
                .header("content-type", "application/json")
                .body(body.clone())
                .unwrap(),
            None => Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(String::new())
                .unwrap(),
        }
    }

    /// `https://127.0.0.1:PORT`: the issuer identifier.
    fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `127.0.0.1:PORT`: the `host` label of its metrics.
    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn set(&self, path: &str, body: &Value) {
        self.state
            .lock()
            .unwrap()
            .docs
            .insert(path.into(), body.to_string());
    }

    fn hits(&self, path: &str) -> usize {
        self.state.lock().unwrap().hits.get(path).copied().unwrap_or(0)
    }

    /// Serves OpenID Connect discovery for itself, with its JWKS at `/jwks.json`.
    fn serve_openid_configuration(&self) {
        let base = self.base();
        self.set(
            "/.well-known/openid-configuration",
            &json!({"issuer": base, "jwks_uri": format!("{base}/jwks.json")}),
        );
    }
}

impl Drop for HttpsIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------

fn config(clock: &Arc<ManualClock>) -> JwksConfig {
    JwksConfig {
        clock: clock.clone(),
        ..JwksConfig::default()
    }
}

/// A fetcher trusting `ca` (and the platform's store).
fn fetcher_trusting(ca: &TestCa) -> Arc<HttpFetcher> {
    Arc::new(
        HttpFetcher::builder()
            .add_root_certificates_pem(ca.pem().as_bytes())
            .unwrap()
            .build(),
    )
}

fn layer(issuer: &str, remote: Arc<RemoteKeys>) -> IdentityLayer {
    IdentityLayer::builder(registry())
        .issuer(
            Issuer::new(issuer)
                .audience(AUD)
                .algorithms([Algorithm::RS256, Algorithm::ES256])
                .remote_keys(remote),
        )
        .build()
        .unwrap()
}

/// A token from `issuer` for svc-a.
fn token(key: &TestKey, issuer: &str) -> String {
    let mut c = claims("svc-a", "orders:read");
    c["iss"] = json!(issuer);
    key.sign(&c)
}

async fn call(layer: &IdentityLayer, token: &str) -> (StatusCode, String) {
    let res = layer
        .layer(service_fn(echo))
        .oneshot(bearer(token))
        .await
        .unwrap();
    let status = res.status();
    (status, body_string(res.into_body()).await)
}

#[tokio::test]
async fn discovery_key_fetch_and_verification_over_https() {
    let ca = TestCa::new("issuer test CA");
    let server = HttpsIssuer::start(ca.server_config()).await;
    let k1 = TestKey::es256("k1");
    server.set("/jwks.json", &jwks(&[&k1]));
    server.serve_openid_configuration();
    let base = server.base();

    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::discover_with_fetcher(&base, config(&clock), fetcher_trusting(&ca))
        .await
        .unwrap();
    assert_eq!(remote.url().to_string(), format!("{base}/jwks.json"));
    // RFC 8414's location first (not served here), then OpenID Connect's.
    assert_eq!(server.hits("/.well-known/oauth-authorization-server"), 1);
    assert_eq!(server.hits("/.well-known/openid-configuration"), 1);
    remote.refresh().await.unwrap();
    assert_eq!(server.hits("/jwks.json"), 1);
    assert!(remote.keys().get("k1").is_some());

    let l = layer(&base, remote);
    let (status, body) = call(&l, &token(&k1, &base)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "svc-a orders:read");
    // A token naming another issuer is still refused.
    let (status, _) = call(&l, &token(&k1, "https://localhost")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn rotation_over_tls_refetches_for_the_new_kid() {
    let ca = TestCa::new("issuer test CA");
    let server = HttpsIssuer::start(ca.server_config()).await;
    let k1 = TestKey::es256("k1");
    let k2 = TestKey::rs256("k2");
    server.set("/jwks.json", &jwks(&[&k1]));
    server.serve_openid_configuration();
    let base = server.base();
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::discover_with_fetcher(&base, config(&clock), fetcher_trusting(&ca))
        .await
        .unwrap();
    remote.refresh().await.unwrap();
    let l = layer(&base, remote.clone());
    let t1 = token(&k1, &base);
    assert_eq!(call(&l, &t1).await.0, StatusCode::OK);

    // The issuer rotates to k2 and drops k1.
    server.set("/jwks.json", &jwks(&[&k2]));
    let (status, body) = call(&l, &token(&k2, &base)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(server.hits("/jwks.json"), 2, "one refetch for the new kid");
    assert_eq!(remote.stats().unknown_kid_fetches, 1);
    assert!(remote.keys().get("k1").is_none());

    let (status, body) = call(&l, &t1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("token_key_unknown"), "{body}");
}

#[tokio::test]
async fn certificate_from_an_unknown_ca_is_refused_clearly_and_counted() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // A current-thread runtime: the fetch records its counters in this thread.
    let _local = metrics::set_default_local_recorder(&recorder);

    let server_ca = TestCa::new("the issuer's CA");
    let other_ca = TestCa::new("another CA");
    let server = HttpsIssuer::start(server_ca.server_config()).await;
    let k1 = TestKey::es256("k1");
    server.set("/jwks.json", &jwks(&[&k1]));
    server.serve_openid_configuration();
    let base = server.base();
    let clock = Arc::new(ManualClock::now());

    let expect_untrusted = |err: &str| {
        assert!(err.contains("not trusted"), "{err}");
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert!(err.contains(&server.host()), "{err}");
    };

    // A fetcher trusting another CA (and the platform's store).
    let remote = RemoteKeys::with_fetcher(
        &format!("{base}/jwks.json"),
        config(&clock),
        fetcher_trusting(&other_ca),
    )
    .unwrap();
    let err = remote.refresh().await.unwrap_err().to_string();
    expect_untrusted(&err);
    assert!(err.contains("add_root_certificates_pem"), "{err}");
    assert_eq!(remote.stats().failures, 1);
    assert!(remote.keys().is_empty());
    // The handshake failed: no request reached the server.
    assert_eq!(server.hits("/jwks.json"), 0);

    // The default fetcher (the platform's store only) refuses it too.
    let remote = RemoteKeys::new(&format!("{base}/jwks.json"), config(&clock)).unwrap();
    expect_untrusted(&remote.refresh().await.unwrap_err().to_string());

    // Discovery fails with the same sentence for both metadata locations.
    let err = RemoteKeys::discover(&base, config(&clock))
        .await
        .unwrap_err()
        .to_string();
    expect_untrusted(&err);
    assert!(err.contains("oauth-authorization-server") && err.contains("openid-configuration"));

    let seen = Snapshot::take(&snap);
    let host = server.host();
    let jwks_fetches = |outcome| {
        seen.counter(
            JWKS_FETCHES_TOTAL,
            &[("host", host.as_str()), ("outcome", outcome)],
        )
    };
    assert_eq!((jwks_fetches("ok"), jwks_fetches("error")), (0, 2));
    let metadata = |outcome| {
        seen.counter(
            ISSUER_METADATA_FETCHES_TOTAL,
            &[("host", host.as_str()), ("outcome", outcome)],
        )
    };
    assert_eq!((metadata("ok"), metadata("error")), (0, 2));

    // Told to trust the issuer's CA, the same URL works.
    let remote = RemoteKeys::with_fetcher(
        &format!("{base}/jwks.json"),
        config(&clock),
        fetcher_trusting(&server_ca),
    )
    .unwrap();
    remote.refresh().await.unwrap();
    assert!(remote.keys().get("k1").is_some());
}

#[tokio::test]
async fn jwks_uri_downgrading_to_http_is_refused() {
    let ca = TestCa::new("issuer test CA");
    let server = HttpsIssuer::start(ca.server_config()).await;
    let k1 = TestKey::es256("k1");
    server.set("/jwks.json", &jwks(&[&k1]));
    let base = server.base();
    let plain = format!("http://{}/jwks.json", server.addr);
    server.set(
        "/.well-known/openid-configuration",
        &json!({"issuer": base, "jwks_uri": plain}),
    );
    let clock = Arc::new(ManualClock::now());
    let err = RemoteKeys::discover_with_fetcher(&base, config(&clock), fetcher_trusting(&ca))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("downgrades"), "{err}");
    assert!(err.contains(&plain), "names the jwks_uri: {err}");
    assert!(err.contains(&base), "names the issuer: {err}");
    assert_eq!(
        server.hits("/jwks.json"),
        0,
        "the downgraded URL is never fetched"
    );

    // An https jwks_uri on another host of the same issuer is fine.
    server.set(
        "/.well-known/openid-configuration",
        &json!({"issuer": base, "jwks_uri": format!("https://localhost:{}/jwks.json", server.addr.port())}),
    );
    let remote = RemoteKeys::discover_with_fetcher(&base, config(&clock), fetcher_trusting(&ca))
        .await
        .unwrap();
    remote.refresh().await.unwrap();
    assert!(remote.keys().get("k1").is_some());

    // The metadata's issuer must still equal the configured one exactly.
    let err = RemoteKeys::discover_with_fetcher(
        &format!("https://localhost:{}", server.addr.port()),
        config(&clock),
        fetcher_trusting(&ca),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not match the configured issuer"), "{err}");
}

#[tokio::test]
async fn without_trust_anchors_https_fails_clearly_and_http_still_works() {
    let ca = TestCa::new("issuer test CA");
    let server = HttpsIssuer::start(ca.server_config()).await;
    server.set("/jwks.json", &jwks(&[&TestKey::es256("k1")]));
    let fetcher = Arc::new(HttpFetcher::builder().platform_roots(false).build());
    let clock = Arc::new(ManualClock::now());
    let remote = RemoteKeys::with_fetcher(
        &format!("{}/jwks.json", server.base()),
        config(&clock),
        fetcher.clone(),
    )
    .unwrap();
    let err = remote.refresh().await.unwrap_err().to_string();
    assert!(err.contains("no trust anchors"), "{err}");
    assert!(err.contains("add_root_certificates_pem"), "{err}");
    assert_eq!(server.hits("/jwks.json"), 0);

    // The same fetcher speaks plain http.
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(|| async { jwks(&[&TestKey::es256("k2")]).to_string() }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let plain = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let remote =
        RemoteKeys::with_fetcher(&format!("http://{addr}/jwks.json"), config(&clock), fetcher).unwrap();
    remote.refresh().await.unwrap();
    assert!(remote.keys().get("k2").is_some());
    plain.abort();
}

// ---------------------------------------------------------------------------
// SSL_CERT_FILE: the platform store is read from the environment, so these run
// the `child_*` tests below in a child process of this test binary, against an
// issuer served by the parent.
// ---------------------------------------------------------------------------

const ENV_ISSUER: &str = "NHI_GUARD_TEST_HTTPS_ISSUER";
const ENV_CA_FILE: &str = "NHI_GUARD_TEST_CA_FILE";

/// Runs the ignored test `name` of this binary with `SSL_CERT_FILE=cert_file`
/// and the issuer's address; asserts it ran and passed.
async fn run_child(name: &str, cert_file: &std::path::Path, issuer: &str, ca_file: &std::path::Path) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", name, "--ignored", "--test-threads=1"])
        .env("SSL_CERT_FILE", cert_file)
        .env_remove("SSL_CERT_DIR")
        .env(ENV_ISSUER, issuer)
        .env(ENV_CA_FILE, ca_file);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child {name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

struct ChildSetup {
    server: HttpsIssuer,
    _dir: TempDir,
    ca_file: std::path::PathBuf,
}

async fn child_setup() -> ChildSetup {
    let ca = TestCa::new("issuer test CA");
    let server = HttpsIssuer::start(ca.server_config()).await;
    server.set("/jwks.json", &jwks(&[&TestKey::es256("k1")]));
    server.serve_openid_configuration();
    let dir = TempDir::unique("nhi-guard-jwks-https");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    ChildSetup {
        server,
        _dir: dir,
        ca_file,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_is_trusted_by_the_default_fetcher() {
    let setup = child_setup().await;
    run_child(
        "child_default_fetcher_discovers_over_https",
        &setup.ca_file,
        &setup.server.base(),
        &setup.ca_file,
    )
    .await;
    assert_eq!(setup.server.hits("/jwks.json"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unloadable_platform_store_with_added_anchors_still_works() {
    let setup = child_setup().await;
    let missing = setup.ca_file.with_file_name("missing.pem");
    run_child(
        "child_without_platform_store",
        &missing,
        &setup.server.base(),
        &setup.ca_file,
    )
    .await;
    assert_eq!(
        setup.server.hits("/jwks.json"),
        1,
        "only the fetcher with anchors got through"
    );
}

#[tokio::test]
#[ignore = "run by ssl_cert_file_is_trusted_by_the_default_fetcher in a child process"]
async fn child_default_fetcher_discovers_over_https() {
    let issuer = std::env::var(ENV_ISSUER).expect("run by the parent test");
    // RemoteKeys::discover's default fetcher: the platform store is SSL_CERT_FILE.
    let remote = RemoteKeys::discover(&issuer, JwksConfig::default())
        .await
        .unwrap();
    remote.refresh().await.unwrap();
    assert!(remote.keys().get("k1").is_some());
}

#[tokio::test]
#[ignore = "run by unloadable_platform_store_with_added_anchors_still_works in a child process"]
async fn child_without_platform_store() {
    let issuer = std::env::var(ENV_ISSUER).expect("run by the parent test");
    let ca_file = std::env::var(ENV_CA_FILE).expect("run by the parent test");
    // SSL_CERT_FILE names a missing file: the platform store cannot be loaded.
    let err = RemoteKeys::new(&format!("{issuer}/jwks.json"), JwksConfig::default())
        .unwrap()
        .refresh()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no trust anchors"), "{err}");
    assert!(err.contains("missing.pem"), "names what failed: {err}");
    assert!(err.contains("SSL_CERT_FILE"), "{err}");

    // Anchors added from a PEM file make https work without the platform store.
    let pem = std::fs::read(ca_file).unwrap();
    let fetcher = HttpFetcher::builder()
        .add_root_certificates_pem(&pem)
        .unwrap()
        .build();
    let remote = RemoteKeys::discover_with_fetcher(&issuer, JwksConfig::default(), Arc::new(fetcher))
        .await
        .unwrap();
    remote.refresh().await.unwrap();
    assert!(remote.keys().get("k1").is_some());
}
