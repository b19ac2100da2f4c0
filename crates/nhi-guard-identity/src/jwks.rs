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

/// Fetches documents over HTTP. The default, [`HttpFetcher`], speaks plain HTTP/1.1
/// (loopback issuers, sidecars, in-cluster endpoints); implement this trait over
/// your HTTPS client (reqwest, hyper-rustls) for a public issuer.
pub trait JwksFetcher: Send + Sync + fmt::Debug + 'static {
    /// GETs `url`, sending `If-None-Match: etag` when given.
    fn fetch<'a>(&'a self, url: &'a Uri, etag: Option<&'a str>) -> FetchFuture<'a>;
}

/// The built-in HTTP/1.1 fetcher (hyper-util's client), with a timeout and a body
/// limit. It speaks plain `http`; with the `rustls` feature and
/// [`HttpFetcher::with_tls`] it speaks `https` too.
#[derive(Clone)]
pub struct HttpFetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    #[cfg(feature = "rustls")]
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// A fetcher giving up after `timeout` (connect, headers and body together).
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            #[cfg(feature = "rustls")]
            tls: None,
        }
    }

    /// A fetcher that also speaks `https`, verifying the issuer's certificate with
    /// `tls` (its root certificates decide which issuers are trusted). One
    /// connection per fetch: key sets are fetched minutes apart.
    #[cfg(feature = "rustls")]
    pub fn with_tls(timeout: Duration, tls: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        Self {
            tls: Some(tls),
            ..Self::new(timeout)
        }
    }

    #[cfg(feature = "rustls")]
    async fn send_https(
        &self,
        tls: &Arc<tokio_rustls::rustls::ClientConfig>,
        req: Request<Empty<Bytes>>,
    ) -> Result<FetchResponse, FetchError> {
        use tokio_rustls::rustls::pki_types::ServerName;
        let err = |e: &dyn fmt::Display| FetchError(e.to_string());
        let host = req
            .uri()
            .host()
            .ok_or_else(|| FetchError("https url without host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = req.uri().port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| err(&e))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| err(&e))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| err(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| err(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(host);
        parts.headers.insert(
            header::HOST,
            http::HeaderValue::try_from(authority).map_err(|e| err(&e))?,
        );
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(&e))?;
        let res = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| err(&e))?;
        read_response(res).await
    }
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
            let req = req.body(Empty::new()).map_err(|e| FetchError(e.to_string()))?;
            let work = async {
                match url.scheme_str() {
                    Some("http") => {
                        let res = self
                            .client
                            .request(req)
                            .await
                            .map_err(|e| FetchError(e.to_string()))?;
                        read_response(res).await
                    }
                    #[cfg(feature = "rustls")]
                    Some("https") if self.tls.is_some() => match &self.tls {
                        Some(tls) => self.send_https(tls, req).await,
                        None => Err(FetchError("no TLS configuration".into())),
                    },
                    other => Err(FetchError(format!(
                        "scheme {:?} not supported: plain http is built in; https needs the `rustls` \
                         feature and HttpFetcher::with_tls, or your own JwksFetcher",
                        other.unwrap_or("")
                    ))),
                }
            };
            tokio::time::timeout(self.timeout, work)
                .await
                .map_err(|_| FetchError(format!("timed out after {:?}", self.timeout)))?
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
}

impl fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("url", &self.url)
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
            .map_err(|e| FetchError(format!("jwks url {jwks_url:?}: {e}")))?;
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
        }))
    }

    /// Discovers the JWKS URL from the issuer's metadata: RFC 8414
    /// (`/.well-known/oauth-authorization-server`), then OpenID Connect
    /// (`/.well-known/openid-configuration`). The metadata's `issuer` must equal
    /// `issuer`.
    ///
    /// # Errors
    /// When neither document can be fetched or names a `jwks_uri`.
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
                    tracing::info!(target: TARGET, issuer, metadata = %url, jwks_uri = %jwks_uri, "issuer metadata discovered");
                    return Self::with_fetcher(&jwks_uri, config, fetcher);
                }
                Err(e) => errors.push(format!("{url}: {e}")),
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
        tracing::info!(target: TARGET, url = %self.url, "unknown kid: refetching the key set");
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
                self.current.store(Arc::new(Snapshot {
                    keys: snap.keys.clone(),
                    confirmed: Some(self.config.clock.now()),
                    etag: snap.etag.clone(),
                }));
                tracing::debug!(target: TARGET, url = %self.url, "key set not modified");
                self.count_fetch("not_modified");
                Ok(self.interval(max_age))
            }
            Ok(FetchResponse::Document { body, etag, max_age }) => match KeySet::from_jwks(&body) {
                Ok((keys, skipped)) => {
                    self.bump(|_| {});
                    tracing::info!(
                        target: TARGET,
                        url = %self.url,
                        keys = keys.len(),
                        skipped = skipped.len(),
                        "key set fetched"
                    );
                    self.count_fetch("ok");
                    metrics::gauge!(nhi_guard_core::metrics::JWKS_KEYS, "host" => self.metrics_host.clone())
                        .set(keys.len() as f64);
                    self.current.store(Arc::new(Snapshot {
                        keys: Arc::new(keys),
                        confirmed: Some(self.config.clock.now()),
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
            tracing::warn!(target: TARGET, url = %self.url, error = %e, "key set fetch failed; keeping the previous set");
        }
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
    /// for `max-age` (bounded) or the retry interval after a failure, repeat. The
    /// task ends when the last handle to these keys is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                let wait = match this.refresh().await {
                    Ok(interval) => interval,
                    Err(_) => this.config.retry,
                };
                drop(this);
                tokio::time::sleep(wait).await;
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

async fn fetch_metadata(fetcher: &dyn JwksFetcher, url: &Uri, issuer: &str) -> Result<String, FetchError> {
    let body = match fetcher.fetch(url, None).await? {
        FetchResponse::Document { body, .. } => body,
        FetchResponse::NotModified { .. } => return Err(FetchError("unexpected 304".into())),
    };
    let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| FetchError(e.to_string()))?;
    if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
        return Err(FetchError(
            "metadata `issuer` does not match the configured issuer".into(),
        ));
    }
    doc.get("jwks_uri")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| FetchError("metadata has no `jwks_uri`".into()))
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
