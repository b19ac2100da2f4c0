//! The forwarding half of the edge proxy: the upstream address, the header rules and
//! the handler that streams a request to the upstream and its response back.
//!
//! Shared by `main.rs` and the whole-stack test in `tests/edge_proxy.rs`. The
//! handler runs inside the guard's layer, so it only ever sees allowed requests.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use nhi_guard::core::SecurityContext;

/// `NHI_GUARD_UPSTREAM` when unset.
pub(crate) const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:9000";

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

/// The forwarding service: one pooled HTTP/1 client and the upstream.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    client: Client<HttpConnector, Body>,
    upstream: Arc<Upstream>,
}

impl Proxy {
    /// A proxy to `upstream`.
    pub(crate) fn new(upstream: Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            upstream: Arc::new(upstream),
        }
    }
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
/// collected: the incoming body is handed to the client as it is, and the upstream's
/// body is returned as it is.
async fn forward(State(proxy): State<Proxy>, req: Request) -> Response {
    let ctx = SecurityContext::from_extensions(req.extensions()).cloned();
    let (mut parts, body) = req.into_parts();
    let uri = match proxy.upstream.target(&parts.uri) {
        Ok(uri) => uri,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the upstream URI");
            return bad_gateway(ctx.as_ref(), "the request path cannot be forwarded");
        }
    };
    prepare_request_headers(&mut parts.headers, ctx.as_ref());
    let client_version = parts.version;
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    parts.extensions = axum::http::Extensions::new();
    let outgoing = axum::http::Request::from_parts(parts, body);

    match proxy.client.request(outgoing).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The upstream's HTTP version belongs to the other hop.
            parts.version = client_version;
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            // The error names the upstream and the failure, never a credential.
            tracing::warn!(upstream = %proxy.upstream, error = %e, "upstream request failed");
            bad_gateway(ctx.as_ref(), "the upstream did not answer")
        }
    }
}

/// The header rules for the upstream request: hop-by-hop fields, every client-sent
/// `x-nhi-*` field, the credential and `Host` removed; the verified identity and the
/// client address added.
pub(crate) fn prepare_request_headers(headers: &mut HeaderMap, ctx: Option<&SecurityContext>) {
    strip_hop_by_hop(headers);
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-nhi-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(&name);
    }
    // The credential stays at the edge: the upstream trusts the identity headers.
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    // The client sets Host from the upstream URI.
    headers.remove(header::HOST);
    headers.remove(header::FORWARDED);
    headers.remove("x-forwarded-for");

    let Some(ctx) = ctx else { return };
    headers.insert(REQUEST_ID, encode(&ctx.request_id().to_string()));
    if let Some(addr) = ctx.client_addr() {
        headers.insert("x-forwarded-for", encode(&addr.ip().to_string()));
    }
    if let Some(p) = ctx.principal() {
        headers.insert(CLIENT_ID, encode(p.client_id().as_str()));
        headers.insert(OWNER, encode(p.owner()));
        headers.insert(SCOPES, encode(&p.scopes().to_string()));
        headers.insert(TIER, encode(p.tier_name()));
        headers.insert(CREDENTIAL_KIND, encode(p.kind().as_str()));
    }
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

/// `502 Bad Gateway` as RFC 9457 problem details.
fn bad_gateway(ctx: Option<&SecurityContext>, detail: &str) -> Response {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": "Bad Gateway",
        "status": 502,
        "detail": detail,
    });
    if let Some(ctx) = ctx {
        body["request_id"] = serde_json::Value::String(ctx.request_id().to_string());
    }
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}
