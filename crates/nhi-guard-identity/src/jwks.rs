//! The JWKS manager: fetches an issuer's key set over HTTP, refreshes it in the
//! background (honouring `Cache-Control: max-age` and `ETag`), refetches on an
//! unknown `kid` at most once per cooldown (single flight), keeps serving stale
//! keys while the issuer is down up to a maximum staleness, and never blocks
//! readers (the current set is behind an `ArcSwap`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::SystemTime;

use nhi_guard_core::clock::{SharedClock, SystemClock};

use crate::keys::KeySet;

const TARGET: &str = "nhi_guard::identity::jwks";

/// Largest JWKS or metadata document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// A fetched document.
#[derive(Debug, Clone)]
pub enum FetchResponse {
    /// `200 OK` with a body.
    Document {
        /// The body.
        body: Bytes,
        /// The `ETag`, if any.
        etag: Option<String>,
        /// `Cache-Control: max-age`, if any.
        max_age: Option<Duration>,
    },
    /// `304 Not Modified` (the `ETag` sent still matches).
    NotModified {
        /// `Cache-Control: max-age`, if any.
        max_age: Option<Duration>,
    },
}

/// A failed fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// The boxed future a [`JwksFetcher`] returns.
pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<FetchResponse, FetchError>> + Send + 'a>>;

/// Fetches documents over HTTP(S). The default, [`HttpFetcher`], speaks `https`
/// (public issuers) and plain `http` (loopback and in-cluster issuers); implement
/// this trait to fetch through another client (a proxy, a service mesh API).
pub trait JwksFetcher: Send + Sync + fmt::Debug + 'static {
    /// GETs `url`, sending `If-None-Match: etag` when given.
    fn fetch<'a>(&'a self, url: &'a Uri, etag: Option<&'a str>) -> FetchFuture<'a>;
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// How a fetcher reaches the issuer.
#[derive(Clone)]
enum Transport {
    /// `https` and `http` over one pooled client.
    Tls(HttpsClient),
    /// Plain `http` only; `https` URLs are refused with this reason (no trust
    /// anchors, or rustls refused the configuration).
    PlainOnly(Client<HttpConnector, Empty<Bytes>>, Arc<str>),
}

/// The built-in fetcher: HTTP/1.1 over hyper-util's pooled client, `https` through
/// rustls (aws-lc-rs provider) and plain `http`, with a timeout and a body limit
/// ([`MAX_DOCUMENT_BYTES`]).
///
/// [`HttpFetcher::new`] (what [`RemoteKeys::new`] and [`RemoteKeys::discover`]
/// use) trusts the platform's certificate store, read by `rustls-native-certs`:
/// the system bundle, or only the PEM file named by `SSL_CERT_FILE` (and the
/// directories of `SSL_CERT_DIR`) when set, as OpenSSL does.
/// [`HttpFetcher::builder`] adds trust anchors of your own (a private CA) or drops
/// the platform's.
///
/// A fetcher left without any trust anchor (the platform store could not be
/// loaded, for example in a container image without a CA bundle, and none was
/// added) still builds and still fetches plain `http`; each `https` fetch then
/// fails with an error that says why and how to add anchors.
///
/// A certificate that does not chain to a trusted anchor is refused with an error
/// naming the host and saying the certificate is not trusted.
///
/// An issuer whose certificate comes from a private CA (a PEM bundle), discovered
/// with a fetcher trusting that CA as well as the platform's:
///
/// ```no_run
/// use std::sync::Arc;
/// use nhi_guard_identity::{HttpFetcher, JwksConfig, RemoteKeys};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = JwksConfig::default();
/// let pem = std::fs::read("/etc/nhi-guard/issuer-ca.pem")?;
/// let fetcher = HttpFetcher::builder()
///     .timeout(config.timeout)
///     .add_root_certificates_pem(&pem)?
///     .build();
/// let keys = RemoteKeys::discover_with_fetcher("https://auth.internal", config, Arc::new(fetcher)).await?;
/// keys.refresh().await?;
/// keys.spawn_refresh();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpFetcher {
    transport: Transport,
    timeout: Duration,
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let https: &dyn fmt::Debug = match &self.transport {
            Transport::Tls(_) => &"enabled",
            Transport::PlainOnly(_, reason) => reason,
        };
        f.debug_struct("HttpFetcher")
            .field("timeout", &self.timeout)
            .field("https", https)
            .finish()
    }
}

impl Default for HttpFetcher {
    /// As [`HttpFetcher::new`] with a 5 s timeout.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl HttpFetcher {
    /// A fetcher giving up after `timeout` (connect, TLS handshake, headers and body
    /// together), trusting the platform's certificate store. Same as
    /// `HttpFetcher::builder().timeout(timeout).build()`.
    pub fn new(timeout: Duration) -> Self {
        Self::builder().timeout(timeout).build()
    }

    /// A builder: timeout and trust anchors.
    pub fn builder() -> HttpFetcherBuilder {
        HttpFetcherBuilder::new()
    }

    /// A fetcher speaking `https` with a rustls configuration of your own (its
    /// verifier decides which issuers are trusted: private roots, pinning, client
    /// certificates). Its ALPN list is replaced by HTTP/1.1's (none), as the
    /// fetcher speaks HTTP/1.1.
    pub fn with_tls(timeout: Duration, tls: Arc<rustls::ClientConfig>) -> Self {
        let mut tls = Arc::unwrap_or_clone(tls);
        tls.alpn_protocols.clear();
        Self {
            transport: Transport::Tls(https_client(timeout, tls)),
            timeout,
        }
    }
}

fn http_connector(timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.enforce_http(false);
    connector
}

fn client_builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    // Key sets are fetched minutes apart: an idle connection is dropped after 30 s
    // instead of being found dead on the next fetch.
    builder
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1);
    builder
}

fn https_client(timeout: Duration, tls: rustls::ClientConfig) -> HttpsClient {
    let connector = HttpsConnector::from((http_connector(timeout), Arc::new(tls)));
    client_builder().build(connector)
}

/// Builds an [`HttpFetcher`]: its timeout and the trust anchors `https` issuers are
/// verified against.
///
/// By default the anchors are the platform's certificate store (see
/// [`HttpFetcher`]); [`add_root_certificates_pem`](Self::add_root_certificates_pem)
/// adds more (a private CA), [`platform_roots(false)`](Self::platform_roots) leaves
/// only those.
#[derive(Clone)]
#[must_use]
pub struct HttpFetcherBuilder {
    timeout: Duration,
    platform_roots: bool,
    extra_roots: rustls::RootCertStore,
}

impl fmt::Debug for HttpFetcherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcherBuilder")
            .field("timeout", &self.timeout)
            .field("platform_roots", &self.platform_roots)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl Default for HttpFetcherBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpFetcherBuilder {
    /// Timeout 5 s, the platform's trust anchors.
    pub fn new() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            platform_roots: true,
            extra_roots: rustls::RootCertStore::empty(),
        }
    }

    /// Gives up on a fetch after `timeout`: connect, TLS handshake, headers and body
    /// together (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the platform's certificate store is trusted (default `true`). With
    /// `false`, only the anchors added with
    /// [`add_root_certificates_pem`](Self::add_root_certificates_pem) are.
    pub fn platform_roots(mut self, enabled: bool) -> Self {
        self.platform_roots = enabled;
        self
    }

    /// Trusts every certificate (`-----BEGIN CERTIFICATE-----` section) of `pem` as
    /// a root, in addition to the platform's. Other sections (keys) are ignored.
    ///
    /// # Errors
    /// When `pem` is not valid PEM, holds no certificate, or holds a certificate
    /// that is not a usable X.509 trust anchor. The error says which.
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, FetcherConfigError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;

        let mut added = 0usize;
        for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| {
                FetcherConfigError::new(
                    FetcherConfigErrorKind::InvalidPem,
                    format!("root certificates: PEM section {} is not valid: {e}", i + 1),
                )
            })?;
            self.extra_roots.add(cert).map_err(|e| {
                FetcherConfigError::new(
                    FetcherConfigErrorKind::InvalidCertificate,
                    format!(
                        "root certificates: certificate {} is not a usable trust anchor: {e}",
                        i + 1
                    ),
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(FetcherConfigError::new(
                FetcherConfigErrorKind::NoCertificate,
                "root certificates: no `BEGIN CERTIFICATE` section in the PEM data".into(),
            ));
        }
        Ok(self)
    }

    /// The fetcher. Loads the platform's certificate store now (when enabled).
    ///
    /// Never fails: without any trust anchor the fetcher still fetches plain
    /// `http`, and each `https` fetch fails saying why (see [`HttpFetcher`]).
    pub fn build(self) -> HttpFetcher {
        let mut roots = self.extra_roots;
        let added = roots.len();
        let mut platform_error = None;
        if self.platform_roots {
            let loaded = rustls_native_certs::load_native_certs();
            let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
            let (platform, ignored) = roots.add_parsable_certificates(loaded.certs);
            tracing::debug!(
                target: TARGET,
                platform,
                ignored,
                added,
                errors = ?errors,
                "JWKS fetcher trust anchors loaded"
            );
            if platform == 0 {
                let why = if errors.is_empty() {
                    String::from("it holds no certificate")
                } else {
                    errors.join("; ")
                };
                platform_error = Some(why);
            }
        }
        let transport = if roots.is_empty() {
            let reason = match &platform_error {
                Some(why) => format!(
                    "https is unavailable: no trust anchors (the platform certificate store \
                     could not be loaded: {why}; and no root certificate was added): set \
                     SSL_CERT_FILE to a PEM bundle or add the issuer's CA with \
                     HttpFetcherBuilder::add_root_certificates_pem"
                ),
                None => String::from(
                    "https is unavailable: no trust anchors (the platform store is disabled \
                     and no root certificate was added with \
                     HttpFetcherBuilder::add_root_certificates_pem)",
                ),
            };
            if self.platform_roots {
                tracing::warn!(target: TARGET, reason = %reason, "JWKS fetcher without trust anchors");
            }
            Transport::PlainOnly(
                client_builder().build(http_connector(self.timeout)),
                reason.into(),
            )
        } else {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
            {
                Ok(config) => Transport::Tls(https_client(
                    self.timeout,
                    config.with_root_certificates(roots).with_no_client_auth(),
                )),
                Err(e) => Transport::PlainOnly(
                    client_builder().build(http_connector(self.timeout)),
                    format!("https is unavailable: rustls refused the configuration: {e}").into(),
                ),
            }
        };
        HttpFetcher {
            transport,
            timeout: self.timeout,
        }
    }
}

/// An invalid [`HttpFetcherBuilder`] setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetcherConfigError {
    kind: FetcherConfigErrorKind,
    message: String,
}

impl FetcherConfigError {
    fn new(kind: FetcherConfigErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    /// What was wrong.
    pub fn kind(&self) -> FetcherConfigErrorKind {
        self.kind
    }
}

/// The kind of a [`FetcherConfigError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetcherConfigErrorKind {
    /// The PEM data does not parse.
    InvalidPem,
    /// The PEM data holds no certificate.
    NoCertificate,
    /// A certificate is not a usable X.509 trust anchor.
    InvalidCertificate,
}

/// `scheme://host[:port]/path` of `url`: never its userinfo or query, which may
/// carry a secret. For logs and errors.
pub(crate) struct Redacted<'a>(pub(crate) &'a Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        if let Some(scheme) = url.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(host) = url.host() {
            f.write_str(host)?;
        }
        if let Some(port) = url.port_u16() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())
    }
}

/// A URL as configured or received, for logs and errors: the text cut before any
/// `?` or `#` and without userinfo (anything up to an `@` in the authority), so
/// that it reads as given otherwise (no `/` added to an issuer).
fn redacted_text(text: &str) -> String {
    let text = text.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = text.split_once("://").map_or(("", text), |(s, r)| (s, r));
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// `host[:port]` of `url`, naming the server in an error.
fn host_port(url: &Uri) -> String {
    metrics_host(url)
}

/// The rustls error somewhere in `e`'s chain (through `io::Error` wrappers, whose
/// `source` skips the error they wrap).
fn find_tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    for _ in 0..16 {
        let e = cur?;
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// `e` and its sources, each once (an `io::Error` displays the error it wraps).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    for _ in 0..16 {
        let Some(e) = cur else { break };
        let text = e.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

/// A client error as a sentence naming the server: a refused certificate says it
/// is not trusted and how to trust its CA.
fn describe_request_error(url: &Uri, e: &hyper_util::client::legacy::Error) -> FetchError {
    let host = host_port(url);
    if let Some(tls) = find_tls_error(e) {
        return FetchError(match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => format!(
                "TLS handshake with {host} failed: the server's certificate is not trusted \
                 ({tls}): its CA is not among the trusted roots; add it with SSL_CERT_FILE or \
                 HttpFetcherBuilder::add_root_certificates_pem"
            ),
            rustls::Error::InvalidCertificate(_) => {
                format!("TLS handshake with {host} failed: the server's certificate is not trusted ({tls})")
            }
            _ => format!("TLS handshake with {host} failed: {tls}"),
        });
    }
    if e.is_connect() {
        let cause = std::error::Error::source(e).map_or_else(|| e.to_string(), error_chain);
        return FetchError(format!("connecting to {host} failed: {cause}"));
    }
    FetchError(format!("request to {host} failed: {}", error_chain(e)))
}

async fn read_response<B>(res: http::Response<B>) -> Result<FetchResponse, FetchError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: fmt::Display + Send + Sync + 'static + Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max_age = max_age(res.headers());
    match res.status() {
        StatusCode::NOT_MODIFIED => return Ok(FetchResponse::NotModified { max_age }),
        StatusCode::OK => {}
        other => return Err(FetchError(format!("status {other}"))),
    }
    let etag = res
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(res.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|e| FetchError(format!("reading body: {e}")))?
        .to_bytes();
    Ok(FetchResponse::Document { body, etag, max_age })
}

impl JwksFetcher for HttpFetcher {
    fn fetch<'a>(&'a self, url: &'a Uri, etag: Option<&'a str>) -> FetchFuture<'a> {
        Box::pin(async move {
            let mut req = Request::get(url.clone()).header(header::ACCEPT, "application/json");
            if let Some(tag) = etag {
                req = req.header(header::IF_NONE_MATCH, tag);
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| FetchError(format!("{}: {e}", Redacted(url))))?;
            let work = async {
                let res = match (url.scheme_str(), &self.transport) {
                    (Some("http" | "https"), Transport::Tls(client)) => client.request(req).await,
                    (Some("http"), Transport::PlainOnly(client, _)) => client.request(req).await,
                    (Some("https"), Transport::PlainOnly(_, reason)) => {
                        return Err(FetchError(format!("{}: {reason}", Redacted(url))));
                    }
                    (other, _) => {
                        return Err(FetchError(format!(
                            "{}: scheme {:?} not supported (http or https)",
                            Redacted(url),
                            other.unwrap_or("")
                        )));
                    }
                };
                read_response(res.map_err(|e| describe_request_error(url, &e))?).await
            };
            tokio::time::timeout(self.timeout, work).await.map_err(|_| {
                FetchError(format!(
                    "fetching from {} timed out after {:?}",
                    host_port(url),
                    self.timeout
                ))
            })?
        })
    }
}

fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut out = None;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for directive in v.split(',') {
            let d = directive.trim();
            if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
                out = Some(Duration::ZERO);
            } else if let Some((name, value)) = d.split_once('=')
                && name.trim().eq_ignore_ascii_case("max-age")
                && let Ok(secs) = value.trim().trim_matches('"').parse::<u64>()
            {
                out = Some(Duration::from_secs(secs));
            }
        }
    }
    out
}

/// Tuning of a [`RemoteKeys`]. The defaults suit most issuers.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// Refresh interval when the response has no `max-age` (default 5 min).
    pub default_refresh: Duration,
    /// Lower bound of the refresh interval, whatever `max-age` says (default 30 s).
    pub min_refresh: Duration,
    /// Upper bound of the refresh interval (default 1 h).
    pub max_refresh: Duration,
    /// Retry interval after a failed fetch (default 30 s).
    pub retry: Duration,
    /// Minimum time between two fetches triggered by unknown `kid`s (default 30 s).
    pub unknown_kid_cooldown: Duration,
    /// How long the last good set keeps being used while fetches fail
    /// (default 24 h). Past it, tokens of this issuer are answered with 503.
    pub max_staleness: Duration,
    /// Timeout of one fetch (default 5 s).
    pub timeout: Duration,
    /// The clock measuring staleness and the cooldown (tests use a `ManualClock`).
    pub clock: SharedClock,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            default_refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(30),
            max_refresh: Duration::from_secs(3600),
            retry: Duration::from_secs(30),
            unknown_kid_cooldown: Duration::from_secs(30),
            max_staleness: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Debug)]
struct Snapshot {
    keys: Arc<KeySet>,
    /// When the set was last confirmed (200 or 304); `None` before the first.
    confirmed: Option<SystemTime>,
    etag: Option<String>,
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JwksStats {
    /// HTTP requests made for the key set.
    pub fetches: u64,
    /// Of which answered `304 Not Modified`.
    pub not_modified: u64,
    /// Of which failed.
    pub failures: u64,
    /// Fetches triggered by an unknown `kid`.
    pub unknown_kid_fetches: u64,
}

/// An issuer's key set fetched from a JWKS URL and kept fresh.
///
/// Create it with [`RemoteKeys::new`] (or [`RemoteKeys::discover`]), load it once
/// with [`RemoteKeys::refresh`] and start the background refresh with
/// [`RemoteKeys::spawn_refresh`]. Reads on the request path are lock-free.
pub struct RemoteKeys {
    url: Uri,
    /// The URL's `host[:port]`: the `host` label of the JWKS metrics (never the
    /// path or query, which could carry a secret).
    metrics_host: String,
    config: JwksConfig,
    fetcher: Arc<dyn JwksFetcher>,
    current: ArcSwap<Snapshot>,
    /// Serialises fetches: the single flight.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Completed fetch attempts, to let waiters see that one happened.
    attempts: AtomicU64,
    last_unknown_kid_fetch: Mutex<Option<SystemTime>>,
    stats: Mutex<JwksStats>,
    /// When the background refresh fetches next: the interval the last fetch asked
    /// for (or the retry interval after a failure), from its end.
    next_refresh: Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("url", &format_args!("{}", Redacted(&self.url)))
            .field("keys", &self.current.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// Keys from `jwks_url`, fetched with the built-in [`HttpFetcher`].
    ///
    /// # Errors
    /// When the URL does not parse.
    pub fn new(jwks_url: &str, config: JwksConfig) -> Result<Arc<Self>, FetchError> {
        let fetcher = Arc::new(HttpFetcher::new(config.timeout));
        Self::with_fetcher(jwks_url, config, fetcher)
    }

    /// Keys from `jwks_url`, fetched with `fetcher`.
    ///
    /// # Errors
    /// When the URL does not parse.
    pub fn with_fetcher(
        jwks_url: &str,
        config: JwksConfig,
        fetcher: Arc<dyn JwksFetcher>,
    ) -> Result<Arc<Self>, FetchError> {
        let url: Uri = jwks_url
            .parse()
            .map_err(|e| FetchError(format!("jwks url {:?}: {e}", redacted_text(jwks_url))))?;
        let metrics_host = metrics_host(&url);
        Ok(Arc::new(Self {
            url,
            metrics_host,
            config,
            fetcher,
            current: ArcSwap::from_pointee(Snapshot {
                keys: Arc::new(KeySet::empty()),
                confirmed: None,
                etag: None,
            }),
            fetch_lock: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_unknown_kid_fetch: Mutex::new(None),
            stats: Mutex::new(JwksStats::default()),
            next_refresh: Mutex::new(None),
        }))
    }

    /// Discovers the JWKS URL from the issuer's metadata: RFC 8414
    /// (`/.well-known/oauth-authorization-server`), then OpenID Connect
    /// (`/.well-known/openid-configuration`), fetched with the built-in
    /// [`HttpFetcher`] (`https` against the platform's trust anchors, or plain
    /// `http`). The metadata's `issuer` must equal `issuer` exactly, and the
    /// `jwks_uri` of an `https` issuer must be `https` too.
    ///
    /// # Errors
    /// When neither document can be fetched or names an acceptable `jwks_uri`.
    pub async fn discover(issuer: &str, config: JwksConfig) -> Result<Arc<Self>, FetchError> {
        let fetcher: Arc<dyn JwksFetcher> = Arc::new(HttpFetcher::new(config.timeout));
        Self::discover_with_fetcher(issuer, config, fetcher).await
    }

    /// As [`RemoteKeys::discover`], with `fetcher`.
    ///
    /// # Errors
    /// As [`RemoteKeys::discover`].
    pub async fn discover_with_fetcher(
        issuer: &str,
        config: JwksConfig,
        fetcher: Arc<dyn JwksFetcher>,
    ) -> Result<Arc<Self>, FetchError> {
        let mut errors = Vec::new();
        for url in metadata_urls(issuer)? {
            let fetched = fetch_metadata(&*fetcher, &url, issuer).await;
            metrics::counter!(
                nhi_guard_core::metrics::ISSUER_METADATA_FETCHES_TOTAL,
                "host" => metrics_host(&url),
                "outcome" => if fetched.is_ok() { "ok" } else { "error" }
            )
            .increment(1);
            match fetched {
                Ok(jwks_uri) => {
                    tracing::info!(
                        target: TARGET,
                        issuer = %redacted_text(issuer),
                        metadata = %Redacted(&url),
                        jwks_uri = %Redacted(&jwks_uri),
                        "issuer metadata discovered"
                    );
                    return Self::with_fetcher(&jwks_uri.to_string(), config, fetcher);
                }
                Err(e) => errors.push(format!("{}: {e}", Redacted(&url))),
            }
        }
        Err(FetchError(format!("discovery failed: {}", errors.join("; "))))
    }

    /// The JWKS URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The current key set, whatever its age.
    pub fn keys(&self) -> Arc<KeySet> {
        self.current.load().keys.clone()
    }

    /// Fetch counters.
    pub fn stats(&self) -> JwksStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key set, if it was confirmed within the maximum staleness.
    pub(crate) fn usable_keys(&self) -> Option<Arc<KeySet>> {
        let snap = self.current.load();
        let confirmed = snap.confirmed?;
        (self.since(confirmed) <= self.config.max_staleness).then(|| snap.keys.clone())
    }

    /// Whether an unknown `kid` may trigger a fetch now (the cooldown since the
    /// last such fetch has passed).
    pub(crate) fn unknown_kid_fetch_allowed(&self) -> bool {
        let last = *self
            .last_unknown_kid_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|t| self.since(t) >= self.config.unknown_kid_cooldown)
    }

    fn since(&self, t: SystemTime) -> Duration {
        self.config
            .clock
            .now()
            .duration_since(t)
            .unwrap_or(Duration::ZERO)
    }

    /// The number of completed fetch attempts so far.
    pub(crate) fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    /// Fetches again because a token named an unknown `kid`: at most one fetch per
    /// cooldown; concurrent callers wait for the fetch in flight instead of
    /// starting their own.
    pub(crate) async fn refetch_for_unknown_kid(&self, seen_attempts: u64) {
        let _flight = self.fetch_lock.lock().await;
        if self.attempts() != seen_attempts {
            // Someone fetched while we waited: use their result.
            return;
        }
        {
            let mut last = self
                .last_unknown_kid_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| self.since(t) < self.config.unknown_kid_cooldown) {
                return;
            }
            *last = Some(self.config.clock.now());
        }
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unknown_kid_fetches += 1;
        tracing::info!(target: TARGET, url = %Redacted(&self.url), "unknown kid: refetching the key set");
        let _ = self.fetch_locked().await;
    }

    /// Fetches the key set now (waiting for a fetch in flight first). Returns
    /// the refresh interval the response asks for.
    ///
    /// # Errors
    /// When the fetch fails or the document is not a JWK Set; the previous set is
    /// kept.
    pub async fn refresh(&self) -> Result<Duration, FetchError> {
        let _flight = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<Duration, FetchError> {
        let snap = self.current.load_full();
        let result = self.fetcher.fetch(&self.url, snap.etag.as_deref()).await;
        let outcome = match result {
            Ok(FetchResponse::NotModified { max_age }) => {
                self.bump(|s| s.not_modified += 1);
                let now = self.config.clock.now();
                self.current.store(Arc::new(Snapshot {
                    keys: snap.keys.clone(),
                    confirmed: Some(now),
                    etag: snap.etag.clone(),
                }));
                tracing::debug!(target: TARGET, url = %Redacted(&self.url), "key set not modified");
                self.count_fetch("not_modified");
                nhi_guard_core::metrics::jwks_success(&self.metrics_host, now);
                Ok(self.interval(max_age))
            }
            Ok(FetchResponse::Document { body, etag, max_age }) => match KeySet::from_jwks(&body) {
                Ok((keys, skipped)) => {
                    self.bump(|_| {});
                    tracing::info!(
                        target: TARGET,
                        url = %Redacted(&self.url),
                        keys = keys.len(),
                        skipped = skipped.len(),
                        "key set fetched"
                    );
                    self.count_fetch("ok");
                    metrics::gauge!(nhi_guard_core::metrics::JWKS_KEYS, "host" => self.metrics_host.clone())
                        .set(keys.len() as f64);
                    let now = self.config.clock.now();
                    nhi_guard_core::metrics::jwks_success(&self.metrics_host, now);
                    self.current.store(Arc::new(Snapshot {
                        keys: Arc::new(keys),
                        confirmed: Some(now),
                        etag,
                    }));
                    Ok(self.interval(max_age))
                }
                Err(e) => Err(FetchError(e.to_string())),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = &outcome {
            self.bump(|s| s.failures += 1);
            self.count_fetch("error");
            tracing::warn!(target: TARGET, url = %Redacted(&self.url), error = %e, "key set fetch failed; keeping the previous set");
        }
        let wait = outcome.as_ref().map_or(self.config.retry, |interval| *interval);
        *self.next_refresh.lock().unwrap_or_else(PoisonError::into_inner) =
            tokio::time::Instant::now().checked_add(wait);
        self.attempts.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    fn count_fetch(&self, outcome: &'static str) {
        metrics::counter!(
            nhi_guard_core::metrics::JWKS_FETCHES_TOTAL,
            "host" => self.metrics_host.clone(),
            "outcome" => outcome
        )
        .increment(1);
    }

    fn bump(&self, f: impl FnOnce(&mut JwksStats)) {
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        s.fetches += 1;
        f(&mut s);
    }

    fn interval(&self, max_age: Option<Duration>) -> Duration {
        // max/min rather than clamp: a configuration with min > max must not panic.
        max_age
            .unwrap_or(self.config.default_refresh)
            .min(self.config.max_refresh)
            .max(self.config.min_refresh)
    }

    /// Starts the background refresh on the current tokio runtime: fetch, wait
    /// for `max-age` (bounded) or the retry interval after a failure, repeat. A set
    /// already fetched (by [`RemoteKeys::refresh`] at start-up, or a refetch for an
    /// unknown `kid`) is not fetched again before the interval that fetch asked
    /// for. The task ends when the last handle to these keys is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                let due = *this.next_refresh.lock().unwrap_or_else(PoisonError::into_inner);
                drop(this);
                if let Some(due) = due {
                    tokio::time::sleep_until(due).await;
                }
                let Some(this) = weak.upgrade() else { return };
                // The outcome sets the next due time; a failure is logged and counted.
                let _ = this.refresh().await;
            }
        })
    }
}

fn metadata_urls(issuer: &str) -> Result<Vec<Uri>, FetchError> {
    let uri: Uri = issuer
        .parse()
        .map_err(|e| FetchError(format!("issuer {issuer:?} is not a URL: {e}")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(FetchError(format!("issuer {issuer:?} is not an absolute URL")));
    };
    let path = uri.path().trim_end_matches('/');
    let oauth = format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}");
    let oidc = format!("{scheme}://{authority}{path}/.well-known/openid-configuration");
    [oauth, oidc]
        .into_iter()
        .map(|u| u.parse().map_err(|e| FetchError(format!("{u}: {e}"))))
        .collect()
}

/// The `host` label of a fetch: host and port, never the path or query (which may
/// carry a tenant or a secret).
fn metrics_host(url: &Uri) -> String {
    match (url.host(), url.port_u16()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => String::from("unknown"),
    }
}

async fn fetch_metadata(fetcher: &dyn JwksFetcher, url: &Uri, issuer: &str) -> Result<Uri, FetchError> {
    let body = match fetcher.fetch(url, None).await? {
        FetchResponse::Document { body, .. } => body,
        FetchResponse::NotModified { .. } => return Err(FetchError("unexpected 304".into())),
    };
    let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| FetchError(e.to_string()))?;
    match doc.get("issuer").and_then(|v| v.as_str()) {
        Some(named) if named == issuer => {}
        Some(named) => {
            return Err(FetchError(format!(
                "metadata `issuer` {:?} does not match the configured issuer {:?}",
                redacted_text(named),
                redacted_text(issuer)
            )));
        }
        None => return Err(FetchError("metadata has no `issuer`".into())),
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .ok_or_else(|| FetchError("metadata has no `jwks_uri`".into()))?;
    jwks_uri_for(issuer, jwks_uri)
}

/// The metadata's `jwks_uri`, if acceptable for `issuer`: an absolute `http` or
/// `https` URL, and `https` when the issuer is (a downgrade would let anyone on the
/// path replace the keys the issuer's TLS protects).
fn jwks_uri_for(issuer: &str, jwks_uri: &str) -> Result<Uri, FetchError> {
    let uri: Uri = jwks_uri.parse().map_err(|e| {
        FetchError(format!(
            "metadata `jwks_uri` {:?} is not a URL: {e}",
            redacted_text(jwks_uri)
        ))
    })?;
    let scheme = uri.scheme_str();
    if !matches!(scheme, Some("http" | "https")) || uri.host().is_none() {
        return Err(FetchError(format!(
            "metadata `jwks_uri` {} is not an absolute http(s) URL",
            Redacted(&uri)
        )));
    }
    let issuer_https = issuer
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if issuer_https && scheme != Some("https") {
        return Err(FetchError(format!(
            "metadata `jwks_uri` {} downgrades the https issuer {} to plain http: refused",
            Redacted(&uri),
            redacted_text(issuer)
        )));
    }
    Ok(uri)
}

impl From<FetcherConfigError> for nhi_guard_core::config::ConfigError {
    /// The fetcher's error as the controls' configuration error (control
    /// `identity`, field `root_certificates`).
    fn from(e: FetcherConfigError) -> Self {
        nhi_guard_core::config::ConfigError::new("identity", "root_certificates", e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=120".parse().expect("value"),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
        h.insert(header::CACHE_CONTROL, "no-store".parse().expect("value"));
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        h.clear();
        assert_eq!(max_age(&h), None);
    }

    #[test]
    fn urls_in_logs_and_errors_never_show_userinfo_or_query() {
        let url: Uri = "https://svc:hunter2@issuer.test:8443/t/jwks.json?sig=s3cret"
            .parse()
            .expect("url");
        assert_eq!(Redacted(&url).to_string(), "https://issuer.test:8443/t/jwks.json");
        assert_eq!(
            redacted_text("https://svc:hunter2@issuer.test/t?sig=s3cret#f"),
            "https://issuer.test/t"
        );
        assert_eq!(redacted_text("https://issuer.test"), "https://issuer.test");
        assert_eq!(redacted_text("not a url?sig=s3cret"), "not a url");

        let keys = RemoteKeys::with_fetcher(
            "https://svc:hunter2@issuer.test/jwks.json?sig=s3cret",
            JwksConfig::default(),
            Arc::new(HttpFetcher::builder().platform_roots(false).build()),
        )
        .expect("keys");
        let debug = format!("{keys:?}");
        assert!(debug.contains("https://issuer.test/jwks.json"), "{debug}");
        assert!(!debug.contains("hunter2") && !debug.contains("s3cret"), "{debug}");
        let err = RemoteKeys::with_fetcher(
            "https://svc:hunter2@issuer.test/ bad?sig=s3cret",
            JwksConfig::default(),
            Arc::new(HttpFetcher::builder().platform_roots(false).build()),
        )
        .expect_err("does not parse")
        .to_string();
        assert!(!err.contains("hunter2") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn jwks_uri_may_not_downgrade_an_https_issuer() {
        let err = jwks_uri_for("https://issuer.test", "http://issuer.test/keys")
            .expect_err("downgrade")
            .to_string();
        assert!(err.contains("downgrades"), "{err}");
        assert!(
            err.contains("http://issuer.test/keys") && err.contains("https://issuer.test"),
            "names both: {err}"
        );
        assert!(jwks_uri_for("HTTPS://issuer.test", "http://issuer.test/keys").is_err());
        assert!(jwks_uri_for("https://issuer.test", "https://keys.test/jwks").is_ok());
        assert!(jwks_uri_for("http://127.0.0.1:8080", "http://127.0.0.1:8080/keys").is_ok());
        assert!(jwks_uri_for("http://127.0.0.1:8080", "https://keys.test/jwks").is_ok());
        assert!(jwks_uri_for("https://issuer.test", "/keys").is_err());
        assert!(jwks_uri_for("https://issuer.test", "ftp://issuer.test/keys").is_err());
    }

    #[test]
    fn root_certificates_pem_errors_say_what_is_wrong() {
        let kind = |pem: &[u8]| {
            HttpFetcher::builder()
                .add_root_certificates_pem(pem)
                .map(|_| ())
                .map_err(|e| (e.kind(), e.to_string()))
        };
        let (k, msg) = kind(b"not PEM at all").expect_err("no certificate");
        assert_eq!(k, FetcherConfigErrorKind::NoCertificate, "{msg}");
        let (k, msg) =
            kind(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").expect_err("bad base64");
        assert_eq!(k, FetcherConfigErrorKind::InvalidPem, "{msg}");
        let (k, msg) = kind(b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n")
            .expect_err("not a certificate");
        assert_eq!(k, FetcherConfigErrorKind::InvalidCertificate, "{msg}");
        assert!(msg.contains("certificate 1"), "{msg}");

        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("ca").pem();
        // A bundle: the certificate plus a key section, which is ignored.
        let bundle = format!("{ca}{}", key.serialize_pem());
        let builder = HttpFetcher::builder()
            .add_root_certificates_pem(bundle.as_bytes())
            .expect("valid");
        assert_eq!(builder.extra_roots.len(), 1);
    }

    #[test]
    fn a_rustls_error_is_found_through_io_wrappers() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::other(inner));
        let found = find_tls_error(&*outer).expect("found");
        assert!(matches!(
            found,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ));
        assert_eq!(error_chain(&*outer), "invalid peer certificate: UnknownIssuer");
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(find_tls_error(&plain).is_none());
    }

    #[tokio::test]
    async fn without_anchors_https_is_refused_before_connecting() {
        let fetcher = HttpFetcher::builder().platform_roots(false).build();
        assert!(format!("{fetcher:?}").contains("no trust anchors"));
        // Port 9 on loopback: nothing is contacted, the fetch fails first.
        let url: Uri = "https://127.0.0.1:9/jwks.json".parse().expect("url");
        let err = fetcher.fetch(&url, None).await.expect_err("refused").to_string();
        assert!(err.contains("no trust anchors"), "{err}");
        let url: Uri = "ftp://127.0.0.1:9/jwks.json".parse().expect("url");
        let err = fetcher.fetch(&url, None).await.expect_err("refused").to_string();
        assert!(err.contains("not supported"), "{err}");

        // Plain http is fetched; a refused connection names the host and the cause.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let url: Uri = format!("http://{addr}/jwks.json").parse().expect("url");
        let err = fetcher.fetch(&url, None).await.expect_err("refused").to_string();
        assert!(
            err.starts_with(&format!("connecting to {addr} failed: ")),
            "{err}"
        );
        assert!(err.contains("refused"), "{err}");
    }

    #[test]
    fn metadata_urls_follow_rfc8414_and_oidc() {
        let urls = metadata_urls("http://127.0.0.1:8080/tenant").expect("urls");
        assert_eq!(
            urls[0].to_string(),
            "http://127.0.0.1:8080/.well-known/oauth-authorization-server/tenant"
        );
        assert_eq!(
            urls[1].to_string(),
            "http://127.0.0.1:8080/tenant/.well-known/openid-configuration"
        );
    }
}
