//! Forward auth: the edge (NGINX `auth_request`, Traefik `ForwardAuth`) asks
//! `/authz` about each request before it forwards it, and nhi-guard's whole stack
//! decides as it would in-process.
//!
//! The original request is rebuilt from the sub-request: its method and target from
//! `X-Original-Method` / `X-Original-URI` (NGINX) or `X-Forwarded-Method` /
//! `X-Forwarded-Uri` (Traefik), every other field as the edge sent it (the
//! credential, the forwarding header the trusted edge appends), the edge as the
//! socket peer, no body. The stack's answer is then returned:
//!
//! - allowed: `200` with the verified identity for the edge to copy to the
//!   upstream: `x-nhi-client-id`, `x-nhi-owner`, `x-nhi-scopes`, `x-nhi-tier`,
//!   `x-nhi-credential-kind` (absent on a public route called without a credential)
//!   and `x-nhi-request-id` (the audit record's), encoded as the edge proxy's;
//! - refused: the stack's status, challenge, `Retry-After` / `RateLimit` fields and
//!   problem body. For NGINX, which turns any status but 401 and 403 of an
//!   `auth_request` into a 500, a refusal with another status (429, 400, 503) is
//!   answered `403`; `x-nhi-status` carries the real status, `x-nhi-problem` the
//!   problem body (JSON, ASCII) and `x-nhi-challenge` the `WWW-Authenticate` of a
//!   refusal other than 401 (NGINX copies a 401's itself), so the edge can answer
//!   as the stack does (see `nginx.conf` beside this file).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use nhi_guard::NhiGuardLayer;
use nhi_guard::core::address::PeerAddr;
use nhi_guard::core::denial::{DefaultRenderer, GrpcCode, RenderDenial};
use nhi_guard::core::{Control, Denial, Protocol, SecurityContext};
use tower::ServiceExt;

use crate::proxy::{REQUEST_ID, encode, insert_identity, strip_hop_by_hop};

/// The real status of a refusal (NGINX answers with it; see the module docs).
pub(crate) const STATUS: HeaderName = HeaderName::from_static("x-nhi-status");
/// The problem body of a refusal as one ASCII header field.
pub(crate) const PROBLEM: HeaderName = HeaderName::from_static("x-nhi-problem");
/// The challenge of a refusal that is not a 401 (NGINX passes only a 401's on).
pub(crate) const CHALLENGE: HeaderName = HeaderName::from_static("x-nhi-challenge");

/// The control named in the audit record when the sub-request itself is unusable.
const FORWARD_AUTH: Control = Control::Custom("forward_auth");
/// The largest problem body passed on (the stack's are a few hundred bytes).
const MAX_PROBLEM_BYTES: usize = 8 * 1024;

/// Which edge asks, from the fields that carry the original request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    /// `X-Original-URI` (and `X-Original-Method`): NGINX `auth_request`.
    Nginx,
    /// `X-Forwarded-Uri` (and `X-Forwarded-Method`): Traefik `ForwardAuth`.
    Traefik,
}

/// The sub-request fields that describe the original request; not passed on to the
/// stack as fields of it.
const ORIGINAL: [&str; 4] = [
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
];

/// The stack around a handler that only says yes: everything the stack refuses is
/// refused before the handler, which turns the verified identity into the
/// `x-nhi-*` fields. Shared by `/authz` and Envoy's `Check`.
pub(crate) fn decider(guard: NhiGuardLayer) -> Router {
    Router::new().fallback(allowed).layer(guard)
}

/// The stack's answer about `req`, the original request rebuilt by the caller.
pub(crate) async fn decide(decider: Router, req: Request) -> Response {
    match decider.oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// `/authz` (any method) in front of `decider`; `/.well-known/jwks.json` when the
/// demo issuer signs the tokens.
pub(crate) fn routes(decider: Router, jwks: Option<Arc<str>>) -> Router {
    let mut router = Router::new().route("/authz", any(authz)).with_state(decider);
    if let Some(jwks) = jwks {
        router = router.route(
            "/.well-known/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], jwks.to_string()) }
            }),
        );
    }
    router
}

/// The innermost handler: reached only when every control allowed the request.
async fn allowed(req: Request) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(ctx) = req.extensions().get::<SecurityContext>() {
        insert_identity(&mut headers, ctx);
    }
    (StatusCode::OK, headers).into_response()
}

async fn authz(State(decider): State<Router>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let (edge, original) = match original_request(&parts.headers) {
        Ok(found) => found,
        Err(detail) => {
            // Usually the edge's configuration, not the client: said plainly.
            tracing::warn!(target: "nhi_guard::forward_auth", detail, "unusable forward-auth sub-request");
            let denial = Denial::custom(
                FORWARD_AUTH,
                StatusCode::BAD_REQUEST,
                "original_request_missing",
                "Bad forward-auth request",
                Cow::Borrowed(detail),
                GrpcCode::InvalidArgument,
            );
            return DefaultRenderer::new()
                .render(&denial, Protocol::Http)
                .map(Body::from);
        }
    };
    let mut inner = Request::new(Body::empty());
    *inner.method_mut() = original.0;
    *inner.uri_mut() = original.1;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    for name in ORIGINAL {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_LENGTH);
    *inner.headers_mut() = headers;
    // The edge is the socket peer: its forwarding field is believed when it is a
    // trusted proxy (NHI_GUARD_TRUSTED_PROXIES).
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        inner.extensions_mut().insert(PeerAddr(*peer));
    }
    let res = decide(decider, inner).await;
    if res.status().is_success() {
        return res;
    }
    refusal(edge, res).await
}

/// The original method and target, and which edge sent them.
fn original_request(headers: &HeaderMap) -> Result<(Edge, (Method, Uri)), &'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (edge, method, uri) = match (text("x-original-uri"), text("x-forwarded-uri")) {
        (Some(uri), _) => (Edge::Nginx, text("x-original-method"), uri),
        (None, Some(uri)) => (Edge::Traefik, text("x-forwarded-method"), uri),
        (None, None) => {
            return Err("the sub-request carries no X-Original-URI (NGINX) or X-Forwarded-Uri (Traefik)");
        }
    };
    // NGINX's auth_request has no variable for the method unless configured; the
    // method is part of what the policy judges, so it must be sent.
    let method = method
        .ok_or("the sub-request carries no X-Original-Method / X-Forwarded-Method")?
        .parse::<Method>()
        .map_err(|_| "the original method is not a valid HTTP method")?;
    let uri = uri
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.authority().is_none() && u.path().starts_with('/'))
        .ok_or("the original URI is not an origin-form request target (/path?query)")?;
    Ok((edge, (method, uri)))
}

/// The stack's refusal as the edge needs it (see the module docs).
async fn refusal(edge: Edge, res: Response) -> Response {
    let (mut parts, body) = res.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_PROBLEM_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Default::default(),
    };
    let request_id = parts.extensions.get::<Denial>().and_then(Denial::request_id);
    if let Some(id) = request_id {
        parts.headers.insert(REQUEST_ID, encode(&id.to_string()));
    }
    if edge == Edge::Nginx {
        let status = parts.status;
        parts.headers.insert(STATUS, HeaderValue::from(status.as_u16()));
        if let Ok(problem) = HeaderValue::from_str(&ascii_json(&bytes)) {
            parts.headers.insert(PROBLEM, problem);
        }
        // NGINX copies the challenge of a 401 itself; for any other status it is
        // handed over here (a 403 insufficient_scope has one too).
        if status != StatusCode::UNAUTHORIZED
            && let Some(challenge) = parts.headers.get(header::WWW_AUTHENTICATE).cloned()
        {
            parts.headers.insert(CHALLENGE, challenge);
        }
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
            parts.status = StatusCode::FORBIDDEN;
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// The body as one header-safe line: JSON with every character outside visible
/// ASCII escaped (`\uXXXX`), so it stays the same JSON value; anything that is not
/// JSON becomes an empty problem object.
pub(crate) fn ascii_json(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return "{}".to_owned();
    };
    let compact = value.to_string();
    let mut out = String::with_capacity(compact.len());
    for c in compact.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}
