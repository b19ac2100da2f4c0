//! What the layer captures about one request: the request line (route template,
//! allow-listed query parameters and headers), how the inner service ended, and a
//! snapshot of the security context. Formatting into OCSF happens in the writer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, Method, Request, StatusCode, Version};
use nhi_guard_core::context::{ContextState, Decision, DenialSummary, RequestId};
use nhi_guard_core::{ClientAddr, SecurityContext};

use crate::layer::LayerConfig;

/// How the inner service's work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// The inner service answered with a response (any status).
    Response,
    /// The inner service's future resolved to an error.
    HandlerError,
    /// The inner service panicked (in `call` or while its future was polled).
    Panicked,
    /// The response future was dropped before it finished (client went away,
    /// timeout layer, server shutdown).
    Cancelled,
}

impl Completion {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::HandlerError => "handler_error",
            Self::Panicked => "panicked",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The parts of the request the record may show, captured before the request is
/// handed to the inner service.
#[derive(Debug)]
pub(crate) struct RequestInfo {
    pub(crate) method: Method,
    pub(crate) version: Version,
    /// Route template from axum's `MatchedPath`, when present.
    pub(crate) matched_route: Option<MatchedRoute>,
    /// The raw path, only when the layer is configured to fall back to it.
    pub(crate) raw_path: Option<Box<str>>,
    /// Allow-listed query parameters only (`a=1&b=2`), never the whole query.
    pub(crate) query: Option<Box<str>>,
    /// Allow-listed request headers only.
    pub(crate) headers: Vec<(HeaderName, Box<str>)>,
    /// When the audit layer received the request: the start of the recorded latency.
    pub(crate) started: std::time::Instant,
}

impl RequestInfo {
    pub(crate) fn capture<B>(req: &Request<B>, cfg: &LayerConfig) -> Self {
        let matched_route = matched_route(req);
        let raw_path = if cfg.raw_path_fallback {
            Some(Box::from(req.uri().path()))
        } else if matched_route.is_none() {
            grpc_method(req).map(Box::from)
        } else {
            None
        };
        let query = if cfg.query_allow.is_empty() {
            None
        } else {
            req.uri().query().and_then(|q| filter_query(q, &cfg.query_allow))
        };
        let headers = if cfg.header_allow.is_empty() {
            Vec::new()
        } else {
            cfg.header_allow
                .iter()
                .flat_map(|name| {
                    req.headers().get_all(name).iter().map(move |v| {
                        (
                            name.clone(),
                            Box::from(String::from_utf8_lossy(v.as_bytes()).as_ref()),
                        )
                    })
                })
                .collect()
        };
        Self {
            method: req.method().clone(),
            version: req.version(),
            matched_route,
            raw_path,
            query,
            headers,
            started: std::time::Instant::now(),
        }
    }
}

/// The router's route template. axum's `MatchedPath` is itself a shared string:
/// keeping a clone costs a reference count, not an allocation on the request
/// thread that the writer thread would free.
#[cfg(feature = "axum")]
pub(crate) type MatchedRoute = axum::extract::MatchedPath;
/// Without axum there is no router template to keep.
#[cfg(not(feature = "axum"))]
pub(crate) type MatchedRoute = std::convert::Infallible;

#[cfg(feature = "axum")]
fn matched_route<B>(req: &Request<B>) -> Option<MatchedRoute> {
    req.extensions().get::<axum::extract::MatchedPath>().cloned()
}

#[cfg(feature = "axum")]
fn route_str(route: &MatchedRoute) -> &str {
    route.as_str()
}

#[cfg(not(feature = "axum"))]
fn matched_route<B>(_req: &Request<B>) -> Option<MatchedRoute> {
    None
}

#[cfg(not(feature = "axum"))]
fn route_str(route: &MatchedRoute) -> &str {
    match *route {}
}

/// The path of a gRPC call when it has the form gRPC gives it,
/// `/package.Service/Method`: names, never identifiers, so it may stand in for the
/// route when no router template is known (tonic; a call refused before any control
/// recorded its route). Anything else a client sent is left out.
fn grpc_method<B>(req: &Request<B>) -> Option<&str> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req.uri().path();
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let name = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || extra.contains(&b))
    };
    (grpc && path.len() <= 256 && name(service, b".") && name(method, b"")).then_some(path)
}

/// Keeps only the `name=value` pairs whose (raw) name is allow-listed.
fn filter_query(query: &str, allow: &[Box<str>]) -> Option<Box<str>> {
    let mut out = String::new();
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if !name.is_empty() && allow.iter().any(|a| **a == *name) {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(pair);
        }
    }
    (!out.is_empty()).then(|| out.into_boxed_str())
}

/// One request's audit event, complete: handed to the writer.
#[derive(Debug)]
pub(crate) struct AuditEvent {
    pub(crate) request_id: RequestId,
    pub(crate) received_at: SystemTime,
    pub(crate) latency: Duration,
    pub(crate) client_addr: Option<ClientAddr>,
    pub(crate) info: RequestInfo,
    pub(crate) status: Option<StatusCode>,
    pub(crate) completion: Completion,
    /// The decision: the context's, or the typed denial found on the response when
    /// a control put one there without recording it.
    pub(crate) decision: Decision,
    /// Whether a control in shadow mode would have denied (never sampled away).
    pub(crate) shadowed: bool,
    /// The context, read by the writer thread when it formats the record: the
    /// request path only pays for a reference count.
    pub(crate) ctx: SecurityContext,
    pub(crate) service_name: Option<Arc<str>>,
}

impl AuditEvent {
    pub(crate) fn build(
        ctx: SecurityContext,
        info: RequestInfo,
        completion: Completion,
        status: Option<StatusCode>,
        response_denial: Option<DenialSummary>,
        cfg: &LayerConfig,
    ) -> Self {
        let (decision, shadowed) = ctx.read(|s| (s.decision, !s.shadow_denials.is_empty()));
        let decision = match (decision, response_denial) {
            (Decision::Denied(d), _) => Decision::Denied(d),
            (_, Some(d)) => Decision::Denied(d),
            (d, None) => d,
        };
        Self {
            request_id: ctx.request_id(),
            received_at: ctx.received_at(),
            latency: info.started.elapsed(),
            client_addr: ctx.client_addr(),
            info,
            status,
            completion,
            decision,
            shadowed,
            ctx,
            service_name: cfg.service_name.clone(),
        }
    }

    /// The route shown in the record: the router's template, the template a
    /// control recorded, or (only when configured) the raw path.
    pub(crate) fn route<'a>(&'a self, state: &'a ContextState) -> Option<&'a str> {
        self.info
            .matched_route
            .as_ref()
            .map(route_str)
            .or_else(|| self.ctx.matched_template())
            .or(state.route.as_deref())
            .or(self.info.raw_path.as_deref())
    }

    /// Whether sampling may leave this record out: only allowed requests (or
    /// requests no control decided on) that completed with a non-error status.
    pub(crate) fn is_sampleable(&self) -> bool {
        !matches!(self.decision, Decision::Denied(_))
            && self.completion == Completion::Response
            && self.status.is_some_and(|s| s.as_u16() < 400)
            && !self.shadowed
    }
}

/// Deterministic sampling by request id: keeps about `ppm` records per million.
pub(crate) fn sampled_in(id: RequestId, ppm: u32) -> bool {
    let v = id.as_u128();
    // splitmix64 finaliser over both halves: request ids are sequential.
    let mut z = (v as u64) ^ ((v >> 64) as u64).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % 1_000_000) < u64::from(ppm)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_filter_keeps_only_allow_listed_names() {
        let allow: Vec<Box<str>> = vec!["page".into(), "limit".into()];
        assert_eq!(
            filter_query("token=abc&page=2&limit=10&pagex=1", &allow).as_deref(),
            Some("page=2&limit=10")
        );
        assert_eq!(filter_query("access_token=s3cr3t", &allow), None);
        assert_eq!(filter_query("page", &allow).as_deref(), Some("page"));
        assert_eq!(filter_query("&&=x", &allow), None);
    }

    #[test]
    fn only_well_formed_grpc_method_paths_stand_in_for_the_route() {
        let call = |path: &str, content_type: &str| {
            let req = Request::post(path)
                .header("content-type", content_type)
                .body(())
                .unwrap();
            grpc_method(&req).map(str::to_owned)
        };
        let check = "/grpc.health.v1.Health/Check";
        assert_eq!(call(check, "application/grpc").as_deref(), Some(check));
        assert_eq!(call(check, "application/grpc+proto").as_deref(), Some(check));
        // Not gRPC: an HTTP path may carry identifiers.
        assert_eq!(call(check, "application/json"), None);
        for junk in [
            "/",
            "/orders",
            "/a/b/c",
            "//Check",
            "/svc/",
            "/svc/Check%20x",
            "/svc/Check.v2",
            "/svc-1/Check",
            "/svc/Ché",
        ] {
            assert_eq!(call(junk, "application/grpc"), None, "{junk}");
        }
        let long = format!("/{}/M", "s".repeat(300));
        assert_eq!(call(&long, "application/grpc"), None);
    }

    #[test]
    fn sampling_rate_is_roughly_respected_and_deterministic() {
        let ids: Vec<RequestId> = (0..20_000).map(|_| RequestId::next()).collect();
        let kept = ids.iter().filter(|id| sampled_in(**id, 100_000)).count();
        assert!((1_400..2_600).contains(&kept), "kept {kept} of 20000 at 10%");
        assert!(ids.iter().all(|id| sampled_in(*id, 1_000_000)));
        assert!(!ids.iter().any(|id| sampled_in(*id, 0)));
        assert_eq!(
            ids.iter().map(|id| sampled_in(*id, 500_000)).collect::<Vec<_>>(),
            ids.iter().map(|id| sampled_in(*id, 500_000)).collect::<Vec<_>>()
        );
    }
}
