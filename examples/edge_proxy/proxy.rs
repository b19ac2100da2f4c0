//! The forwarding half of the edge proxy: the upstream address, the header rules and
//! the handler that streams a request to the upstream and its response back.
//!
//! Shared by `main.rs` and the whole-stack test in `tests/edge_proxy.rs`. The
//! handler runs inside the guard's layer, so it only ever sees requests the guard
//! allowed; it refuses method overrides and bodies over the cap itself (recorded as
//! the request's denial), and answers 502 / 504 when the upstream fails.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use nhi_guard::core::denial::{DefaultRenderer, GrpcCode, Protocol, RenderDenial};
use nhi_guard::core::{Control, Denial, SecurityContext};

/// `NHI_GUARD_UPSTREAM` when unset.
pub(crate) const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:9000";

/// `NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT` when unset, in seconds.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `NHI_GUARD_UPSTREAM_TIMEOUT` when unset, in seconds.
pub(crate) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// `NHI_GUARD_MAX_BODY_BYTES` when unset: 10 MiB.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// The control the proxy's own refusals are recorded under, in the security
/// context and so in the audit record.
pub(crate) const EDGE_PROXY: Control = Control::Custom("edge_proxy");
/// Reason code: the request carries a method-override header.
pub(crate) const METHOD_OVERRIDE_REFUSED: &str = "method_override_refused";
/// Reason code: the request body is larger than `NHI_GUARD_MAX_BODY_BYTES`.
pub(crate) const REQUEST_BODY_TOO_LARGE: &str = "request_body_too_large";

/// Headers that ask a server to act as if the request had another method. The
/// policy judged the request's own method, so a request carrying one is refused.
const METHOD_OVERRIDES: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

/// Client-sent fields the proxy sets itself or that upstreams read as if a proxy
/// had set them, removed before forwarding besides every `x-nhi-*` and
/// `x-forwarded-*` field: the forwarding record (`Forwarded`), the client
/// addresses other proxies report, and the original-URL fields some frameworks
/// route by instead of the request line (the path the policy judged).
const PROXY_SET: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

/// The verified client's id (`ClientRecord::id`).
pub(crate) const CLIENT_ID: HeaderName = HeaderName::from_static("x-nhi-client-id");
/// The owner the inventory names for that client.
pub(crate) const OWNER: HeaderName = HeaderName::from_static("x-nhi-owner");
/// The scopes the client holds for this request, space-delimited (RFC 6749).
pub(crate) const SCOPES: HeaderName = HeaderName::from_static("x-nhi-scopes");
/// The client's rate-limit tier.
pub(crate) const TIER: HeaderName = HeaderName::from_static("x-nhi-tier");
/// `service_account`, `api_key` or `workload_certificate`.
pub(crate) const CREDENTIAL_KIND: HeaderName = HeaderName::from_static("x-nhi-credential-kind");
/// The guard's request id, also in the audit record of the request.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-nhi-request-id");

/// Hop-by-hop fields (RFC 9110 §7.6.1), plus the proxy credentials of RFC 9110
/// §11.7, which are meant for this hop only.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Where allowed requests go: `http://host:port` with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    authority: String,
    base_path: String,
}

impl Upstream {
    /// Reads `NHI_GUARD_UPSTREAM` (default [`DEFAULT_UPSTREAM`]) from a variable
    /// lookup. An invalid value is an error naming the variable.
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        match get("NHI_GUARD_UPSTREAM") {
            None => Self::parse(DEFAULT_UPSTREAM),
            Some(v) => Self::parse(&v),
        }
    }

    /// Parses `http://host:port[/prefix]`.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        let shown = redact_userinfo(v);
        let bad = |why: &str| format!("NHI_GUARD_UPSTREAM={shown:?} {why}");
        let uri: Uri = v
            .parse()
            .map_err(|_| bad("is not an absolute URL such as http://127.0.0.1:9000"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "uses https, which this example does not speak to upstreams; use http:// on a private network",
                ));
            }
            _ => return Err(bad("is not an absolute URL such as http://127.0.0.1:9000")),
        }
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() => a.as_str().to_owned(),
            _ => return Err(bad("has no host")),
        };
        if authority.contains('@') {
            return Err(bad("must not carry user information"));
        }
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self { authority, base_path })
    }

    /// The upstream URI of an incoming request's path and query.
    fn target(&self, incoming: &Uri) -> Result<Uri, axum::http::Error> {
        let pq = incoming.path_and_query().map_or("/", |pq| pq.as_str());
        let mut parts = axum::http::uri::Parts::default();
        parts.scheme = Some(axum::http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.parse()?);
        parts.path_and_query = Some(format!("{}{pq}", self.base_path).parse()?);
        Ok(Uri::from_parts(parts)?)
    }
}

/// `v` with any `user:password@` replaced by `***@`, for error messages.
fn redact_userinfo(v: &str) -> String {
    let start = v.find("://").map_or(0, |i| i + 3);
    let end = v[start..].find(['/', '?', '#']).map_or(v.len(), |i| start + i);
    match v[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &v[..start], &v[start + at..]),
        None => v.to_owned(),
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.base_path)
    }
}

/// How long the proxy waits on the upstream and how much body it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT`: the longest a TCP connection to the
    /// upstream may take to open (504 after).
    pub(crate) connect_timeout: Duration,
    /// `NHI_GUARD_UPSTREAM_TIMEOUT`: the longest the proxy waits for the upstream's
    /// response headers while nothing moves; each chunk of request body the
    /// upstream takes restarts it (504 after). Progress is looked at once per
    /// period, so after the last chunk the wait is between one and two periods;
    /// without a body it is exactly one.
    pub(crate) response_timeout: Duration,
    /// `NHI_GUARD_MAX_BODY_BYTES`: the largest request body forwarded (413 above).
    pub(crate) max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl Limits {
    /// Reads `NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT`, `NHI_GUARD_UPSTREAM_TIMEOUT`
    /// (seconds, decimals allowed) and `NHI_GUARD_MAX_BODY_BYTES` (bytes) from a
    /// variable lookup, each defaulted when unset. An invalid value is an error
    /// naming the variable.
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let d = Self::default();
        let seconds = |var: &str, default: Duration| match get(var) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("{var}={v:?} is not a positive number of seconds such as 5 or 0.5")),
        };
        let max_body_bytes = match get("NHI_GUARD_MAX_BODY_BYTES") {
            None => d.max_body_bytes,
            Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("NHI_GUARD_MAX_BODY_BYTES={v:?} is not a positive number of bytes such as 10485760")
            })?,
        };
        Ok(Self {
            connect_timeout: seconds("NHI_GUARD_UPSTREAM_CONNECT_TIMEOUT", d.connect_timeout)?,
            response_timeout: seconds("NHI_GUARD_UPSTREAM_TIMEOUT", d.response_timeout)?,
            max_body_bytes,
        })
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connect within {:?}, response headers within {:?} of the last progress, request bodies up to {} bytes",
            self.connect_timeout, self.response_timeout, self.max_body_bytes
        )
    }
}

/// The forwarding service: one pooled HTTP/1 client, the upstream and the limits.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    client: Client<HttpConnector, Body>,
    upstream: Arc<Upstream>,
    limits: Limits,
}

impl Proxy {
    /// A proxy to `upstream` within `limits`.
    pub(crate) fn new(upstream: Upstream, limits: Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(limits.connect_timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            upstream: Arc::new(upstream),
            limits,
        }
    }
}

/// What the request body wrapper tells the handler while the upstream request runs.
#[derive(Debug, Default)]
struct Progress {
    /// Body frames the upstream connection has taken.
    frames: AtomicU64,
    /// The body grew past the cap and the upstream request was aborted.
    too_large: AtomicBool,
}

/// The proxy's routes, without the guard: the demo issuer's JWKS (when there is
/// one) and `GET /metrics` (when a recorder is given) served locally, everything
/// else forwarded. Put the guard's layer on it.
pub(crate) fn routes(proxy: Proxy, jwks: Option<Arc<str>>, metrics: Option<PrometheusHandle>) -> Router {
    let mut router = Router::new();
    if let Some(handle) = metrics {
        router = router.route("/metrics", crate::app::metrics_route(handle));
    }
    if let Some(jwks) = jwks {
        router = router.route(
            "/.well-known/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/jwk-set+json")],
                        jwks.to_string(),
                    )
                }
            }),
        );
    }
    router.fallback(forward).with_state(proxy)
}

/// Forwards one allowed request and streams the response back. Neither body is
/// collected: the incoming body is handed to the client as it arrives (counted
/// against the cap), and the upstream's body is returned as it is.
async fn forward(State(proxy): State<Proxy>, req: Request) -> Response {
    let ctx = SecurityContext::from_extensions(req.extensions()).cloned();
    let (mut parts, body) = req.into_parts();
    if let Some(name) = method_override(&parts.headers) {
        let detail = format!("{name} is not forwarded: send the request with the method itself");
        let denial = Denial::custom(
            EDGE_PROXY,
            StatusCode::BAD_REQUEST,
            METHOD_OVERRIDE_REFUSED,
            "Method override refused",
            detail,
            GrpcCode::InvalidArgument,
        );
        return refuse(ctx.as_ref(), &parts.headers, denial);
    }
    let max = proxy.limits.max_body_bytes;
    // A declared length is known before the body arrives: refused before connecting.
    if body.size_hint().lower() > max as u64 {
        return refuse(ctx.as_ref(), &parts.headers, body_too_large(max));
    }
    let uri = match proxy.upstream.target(&parts.uri) {
        Ok(uri) => uri,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the upstream URI");
            return upstream_problem(
                StatusCode::BAD_GATEWAY,
                ctx.as_ref(),
                "the request path cannot be forwarded",
            );
        }
    };
    let protocol = Protocol::of(&parts.headers);
    prepare_request_headers(&mut parts.headers, ctx.as_ref());
    let client_version = parts.version;
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    parts.extensions = axum::http::Extensions::new();

    // A chunked body is counted as it streams: past the cap the wrapper fails the
    // body, which aborts the upstream request.
    let progress = Arc::new(Progress::default());
    let body = {
        let (frames, too_large) = (progress.clone(), progress.clone());
        Limited::new(body, max)
            .map_frame(move |frame| {
                frames.frames.fetch_add(1, Ordering::Relaxed);
                frame
            })
            .map_err(move |e| {
                if e.is::<LengthLimitError>() {
                    too_large.too_large.store(true, Ordering::Relaxed);
                }
                e
            })
    };
    let outgoing = axum::http::Request::from_parts(parts, Body::new(body));

    let response = proxy.client.request(outgoing);
    tokio::pin!(response);
    let mut seen = 0;
    let result = loop {
        match tokio::time::timeout(proxy.limits.response_timeout, &mut response).await {
            Ok(result) => break result,
            Err(_) => {
                // Restarted while the upstream takes request body.
                let now = progress.frames.load(Ordering::Relaxed);
                if now == seen {
                    tracing::warn!(
                        upstream = %proxy.upstream,
                        timeout = ?proxy.limits.response_timeout,
                        "upstream response timed out"
                    );
                    return upstream_problem(
                        StatusCode::GATEWAY_TIMEOUT,
                        ctx.as_ref(),
                        "the upstream did not answer in time",
                    );
                }
                seen = now;
            }
        }
    };
    match result {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The upstream's HTTP version belongs to the other hop.
            parts.version = client_version;
            Response::from_parts(parts, Body::new(body))
        }
        Err(_) if progress.too_large.load(Ordering::Relaxed) => {
            refuse_with(ctx.as_ref(), protocol, body_too_large(max))
        }
        Err(e) if timed_out(&e) => {
            tracing::warn!(upstream = %proxy.upstream, error = %e, "upstream connect timed out");
            upstream_problem(
                StatusCode::GATEWAY_TIMEOUT,
                ctx.as_ref(),
                "the upstream did not accept a connection in time",
            )
        }
        Err(e) => {
            // The error names the upstream and the failure, never a credential.
            tracing::warn!(upstream = %proxy.upstream, error = %e, "upstream request failed");
            upstream_problem(
                StatusCode::BAD_GATEWAY,
                ctx.as_ref(),
                "the upstream did not answer",
            )
        }
    }
}

/// The first method-override header of a request, by its canonical name.
fn method_override(headers: &HeaderMap) -> Option<&'static str> {
    const SHOWN: [&str; 3] = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"];
    METHOD_OVERRIDES
        .iter()
        .position(|name| headers.contains_key(*name))
        .map(|i| SHOWN[i])
}

/// 413 for a body over `max` bytes (gRPC `RESOURCE_EXHAUSTED`, as for a message
/// over a server's limit).
fn body_too_large(max: usize) -> Denial {
    Denial::custom(
        EDGE_PROXY,
        StatusCode::PAYLOAD_TOO_LARGE,
        REQUEST_BODY_TOO_LARGE,
        "Request body too large",
        Cow::Owned(format!("The request body is larger than {max} bytes")),
        GrpcCode::ResourceExhausted,
    )
}

/// Records `denial` as the request's decision (the audit record names the proxy
/// and the reason) and renders it as the guard renders its own.
fn refuse(ctx: Option<&SecurityContext>, headers: &HeaderMap, denial: Denial) -> Response {
    refuse_with(ctx, Protocol::of(headers), denial)
}

/// As [`refuse`], for a request whose headers have moved on.
fn refuse_with(ctx: Option<&SecurityContext>, protocol: Protocol, mut denial: Denial) -> Response {
    if let Some(ctx) = ctx {
        denial = denial.with_request_id(ctx.request_id());
        ctx.deny(&denial);
    }
    tracing::info!(
        target: "nhi_guard::edge_proxy",
        request_id = %denial.request_id().map(|id| id.to_string()).unwrap_or_default(),
        reason = denial.reason(),
        decision = "deny",
        "edge proxy refused the request"
    );
    let res = DefaultRenderer::new().render(&denial, protocol);
    let (mut parts, body) = res.into_parts();
    parts.extensions.insert(denial);
    Response::from_parts(parts, Body::from(body))
}

/// Whether a client error is a timeout (the connector's connect timeout, or the
/// system's).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// The header rules for the upstream request: hop-by-hop fields, names with `_`,
/// every client-sent field the proxy sets itself (`x-nhi-*`, `x-forwarded-*`,
/// [`PROXY_SET`]), method overrides, the credential and `Host` removed; the
/// verified identity and the client address added.
pub(crate) fn prepare_request_headers(headers: &mut HeaderMap, ctx: Option<&SecurityContext>) {
    strip_hop_by_hop(headers);
    let dropped: Vec<HeaderName> = headers.keys().filter(|n| dropped(n)).cloned().collect();
    for name in dropped {
        headers.remove(&name);
    }
    let Some(ctx) = ctx else { return };
    if let Some(addr) = ctx.client_addr() {
        headers.insert("x-forwarded-for", encode(&addr.ip().to_string()));
    }
    insert_identity(headers, ctx);
}

/// The request id and, when a client was verified, its identity as `x-nhi-*`
/// fields (also the forward-auth answer of the authz_server example).
pub(crate) fn insert_identity(headers: &mut HeaderMap, ctx: &SecurityContext) {
    headers.insert(REQUEST_ID, encode(&ctx.request_id().to_string()));
    if let Some(p) = ctx.principal() {
        headers.insert(CLIENT_ID, encode(p.client_id().as_str()));
        headers.insert(OWNER, encode(p.owner()));
        headers.insert(SCOPES, encode(&p.scopes().to_string()));
        headers.insert(TIER, encode(p.tier_name()));
        headers.insert(CREDENTIAL_KIND, encode(p.kind().as_str()));
    }
}

/// Whether a client-sent field is withheld from the upstream.
fn dropped(name: &HeaderName) -> bool {
    let n = name.as_str();
    // CGI-style servers read `X_API_KEY` as `X-API-Key`: a name with `_` could
    // smuggle a credential or an identity header past the rules below.
    n.contains('_')
        || n.starts_with("x-nhi-")
        || n.starts_with("x-forwarded-")
        || PROXY_SET.contains(&n)
        || METHOD_OVERRIDES.contains(&n)
        // The credential stays at the edge: the upstream trusts the identity headers.
        || name == header::AUTHORIZATION
        || n == "x-api-key"
        // The client sets Host from the upstream URI.
        || name == header::HOST
}

/// Removes the hop-by-hop fields and every field the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// A header value: visible ASCII and spaces as they are, `%` and any other byte
/// percent-encoded (so UTF-8 owners survive and `%` is unambiguous).
pub(crate) fn encode(value: &str) -> HeaderValue {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `502 Bad Gateway` or `504 Gateway Timeout` as RFC 9457 problem details: the
/// upstream failed, the guard allowed the request.
fn upstream_problem(status: StatusCode, ctx: Option<&SecurityContext>, detail: &str) -> Response {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Upstream error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(ctx) = ctx {
        body["request_id"] = serde_json::Value::String(ctx.request_id().to_string());
    }
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
