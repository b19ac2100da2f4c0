//! Envoy external authorization: `envoy.service.auth.v3.Authorization/Check`, the
//! gRPC service Envoy's `ext_authz` HTTP filter calls for each request, answered
//! by the same decision as `/authz` (the types are `envoy-types`', generated ahead
//! of time: no protoc).
//!
//! The original request is read from the `CheckRequest` attributes: the method,
//! the path (with its query), the headers (`headers`, or `header_map` when Envoy
//! sends raw values; pseudo-headers such as `:authority` are skipped), and the
//! downstream address (`source`) as the socket peer: behind a proxy listed in
//! `NHI_GUARD_TRUSTED_PROXIES`, the forwarding field then names the client.
//!
//! - allowed: status `OK` and an `OkResponse` that sets the `x-nhi-*` identity
//!   fields on the upstream request (overwriting any the client sent) and removes
//!   those the decision does not set;
//! - refused: the gRPC status that matches the HTTP one (`UNAUTHENTICATED` for
//!   401, `PERMISSION_DENIED` for 403, `RESOURCE_EXHAUSTED` for 429, ...) and a
//!   `DeniedResponse` with the stack's HTTP status, fields (challenge,
//!   `Retry-After`, `RateLimit`, `content-type`) and problem body, which Envoy
//!   sends to the client as they are;
//! - a `CheckRequest` without the HTTP request attributes: `INVALID_ARGUMENT`.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::google::rpc;
use http::{HeaderName, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use nhi_guard::core::address::PeerAddr;

use crate::authz::decide;
use crate::proxy::{CLIENT_ID, CREDENTIAL_KIND, OWNER, REQUEST_ID, SCOPES, TIER};

/// The fields an allowed request gets; those the decision leaves unset are removed.
const IDENTITY: [HeaderName; 6] = [CLIENT_ID, OWNER, SCOPES, TIER, CREDENTIAL_KIND, REQUEST_ID];
/// The largest problem body passed on (the stack's are a few hundred bytes).
const MAX_BODY_BYTES: usize = 8 * 1024;

/// The `Authorization` service over the shared decision.
#[derive(Clone)]
pub(crate) struct ExtAuthz {
    decider: Router,
}

impl ExtAuthz {
    /// The gRPC routes of the service, ready to be served (tonic over axum).
    pub(crate) fn router(decider: Router) -> Router {
        tonic::service::Routes::new(AuthorizationServer::new(Self { decider })).into_axum_router()
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let original = original_request(request.into_inner()).map_err(tonic::Status::invalid_argument)?;
        let res = decide(self.decider.clone(), original).await;
        Ok(tonic::Response::new(if res.status().is_success() {
            allowed(&res)
        } else {
            denied(res).await
        }))
    }
}

/// The request Envoy asks about, as the stack sees it in-process.
fn original_request(check: CheckRequest) -> Result<Request, &'static str> {
    let attributes = check.attributes.ok_or("CheckRequest without attributes")?;
    let http = attributes
        .request
        .and_then(|r| r.http)
        .ok_or("CheckRequest without the HTTP request attributes")?;
    let method = http
        .method
        .parse::<Method>()
        .map_err(|_| "the request's method is not a valid HTTP method")?;
    let uri = http
        .path
        .parse::<Uri>()
        .ok()
        .filter(|u| u.scheme().is_none() && u.authority().is_none() && u.path().starts_with('/'))
        .ok_or("the request's path is not an origin-form request target (/path?query)")?;
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    let raw = http.header_map.map(|m| m.headers).unwrap_or_default();
    let fields = http
        .headers
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .chain(raw.into_iter().map(|h| {
            let value = if h.raw_value.is_empty() {
                h.value.into_bytes()
            } else {
                h.raw_value
            };
            (h.key, value)
        }));
    for (name, value) in fields {
        if name.starts_with(':') {
            continue;
        }
        // Envoy only sends valid fields; one that is not is left out, not guessed at.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            req.headers_mut().append(name, value);
        }
    }
    let source = attributes
        .source
        .and_then(|p| p.address)
        .and_then(|a| a.address)
        .and_then(|a| match a {
            Address::SocketAddress(s) => {
                let ip = s.address.parse::<IpAddr>().ok()?;
                let port = match s.port_specifier {
                    Some(PortSpecifier::PortValue(p)) => u16::try_from(p).unwrap_or(0),
                    _ => 0,
                };
                Some(SocketAddr::new(ip, port))
            }
            _ => None,
        });
    if let Some(peer) = source {
        req.extensions_mut().insert(PeerAddr(peer));
    }
    Ok(req)
}

fn header_option(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn allowed(res: &Response) -> CheckResponse {
    let mut ok = OkHttpResponse::default();
    for name in IDENTITY {
        match res.headers().get(&name).and_then(|v| v.to_str().ok()) {
            Some(value) => ok.headers.push(header_option(
                name.as_str(),
                value,
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            )),
            None => ok.headers_to_remove.push(name.as_str().to_owned()),
        }
    }
    CheckResponse {
        status: Some(rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(ok)),
        ..Default::default()
    }
}

async fn denied(res: Response) -> CheckResponse {
    let (parts, body) = res.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| **name != header::CONTENT_LENGTH)
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some(header_option(
                name.as_str(),
                value,
                HeaderAppendAction::AppendIfExistsOrAdd,
            ))
        })
        .collect();
    let reason = parts
        .extensions
        .get::<nhi_guard::core::Denial>()
        .map(|d| d.reason().to_owned())
        .unwrap_or_else(|| parts.status.as_str().to_owned());
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code(parts.status) as i32,
            message: reason,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(parts.status.as_u16()),
            }),
            headers,
            body,
        })),
        ..Default::default()
    }
}

/// The gRPC status Envoy records for a refusal with this HTTP status.
fn grpc_code(status: StatusCode) -> tonic::Code {
    match status {
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        _ => tonic::Code::PermissionDenied,
    }
}
