//! Rendering a [`Denial`] into a response: the RFC 9457 problem document, the
//! `Retry-After` and `RateLimit` fields, and the renderers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response};
use serde_json::{Map, Value, json};

use super::grpc::grpc_message;
use super::{Denial, Protocol};
use crate::body::GuardBody;
use crate::context::RateLimitOutcome;

/// The media type of RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The prefix of every problem `type` URI: `urn:nhi-guard:problem:<reason>`, with
/// the reason code's underscores turned into hyphens.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:nhi-guard:problem:";

/// The `RateLimit-Policy` header field (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The `RateLimit` header field (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl Denial {
    /// The problem `type` URI.
    pub fn problem_type(&self) -> String {
        format!("{PROBLEM_TYPE_PREFIX}{}", self.reason.replace('_', "-"))
    }

    /// The RFC 9457 problem document.
    pub fn problem_json(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("type".into(), Value::String(self.problem_type()));
        doc.insert("title".into(), Value::String(self.title.into()));
        doc.insert("status".into(), json!(self.status.as_u16()));
        doc.insert("detail".into(), Value::String(self.detail.to_string()));
        doc.insert("control".into(), Value::String(self.control.as_str().into()));
        doc.insert("reason".into(), Value::String(self.reason.into()));
        if let Some(id) = self.request_id {
            doc.insert("request_id".into(), Value::String(id.to_string()));
        }
        if let Some(s) = &self.required_scopes {
            doc.insert("required_scopes".into(), json!(s));
        }
        if let Some(s) = &self.missing_scopes {
            doc.insert("missing_scopes".into(), json!(s));
        }
        if !self.violated_policies.is_empty() {
            let names: Vec<&str> = self.violated_policies.iter().map(|p| &**p).collect();
            doc.insert("violated-policies".into(), json!(names));
        }
        if let Some(after) = self.retry_after {
            doc.insert("retry_after".into(), json!(retry_after_secs(after)));
        }
        if let Some(max_age) = self.max_age {
            doc.insert("max_age".into(), json!(max_age));
        }
        Value::Object(doc)
    }
}

/// Whole seconds to wait, rounded up so a client never retries too early.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Appends `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-
/// ratelimit-headers-11) for `limits`: one list member per policy,
/// `"<name>";q=<quota>;w=<window>` and `"<name>";r=<remaining>;t=<reset>`.
pub fn insert_rate_limit_headers(headers: &mut HeaderMap, limits: &[RateLimitOutcome]) {
    if limits.is_empty() {
        return;
    }
    let mut policy = String::new();
    let mut state = String::new();
    for (i, l) in limits.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        let name = sf_string(&l.policy);
        policy.push_str(&format!("{name};q={};w={}", l.quota, l.window_secs));
        state.push_str(&format!("{name};r={};t={}", l.remaining, l.reset_secs));
    }
    if let (Ok(p), Ok(s)) = (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
        headers.insert(RATELIMIT_POLICY.clone(), p);
        headers.insert(RATELIMIT.clone(), s);
    }
}

/// An RFC 8941 sf-string: quoted, with `"` and `\` escaped and characters outside
/// printable ASCII dropped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| matches!(c, '\x20'..='\x7E')) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Turns a [`Denial`] into a response. Replace the default to change bodies or
/// headers; closures `Fn(&Denial, Protocol) -> Response<Bytes>` implement it.
pub trait RenderDenial: Send + Sync + 'static {
    /// Renders `denial` for a request of `protocol`.
    fn render(&self, denial: &Denial, protocol: Protocol) -> Response<Bytes>;
}

impl<F> RenderDenial for F
where
    F: Fn(&Denial, Protocol) -> Response<Bytes> + Send + Sync + 'static,
{
    fn render(&self, denial: &Denial, protocol: Protocol) -> Response<Bytes> {
        self(denial, protocol)
    }
}

/// A shared renderer.
pub type SharedRenderer = Arc<dyn RenderDenial>;

/// The standard rendering: problem+json with RFC 6750 challenges for HTTP; trailers-
/// only responses with `grpc-status` for gRPC.
#[derive(Debug, Clone)]
pub struct DefaultRenderer {
    realm: Arc<str>,
}

impl Default for DefaultRenderer {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultRenderer {
    /// The default renderer with realm `api`.
    pub fn new() -> Self {
        Self {
            realm: Arc::from("api"),
        }
    }

    /// Sets the `realm` of challenges.
    #[must_use]
    pub fn realm(mut self, realm: impl Into<Arc<str>>) -> Self {
        self.realm = realm.into();
        self
    }

    /// A shared handle to this renderer.
    pub fn shared(self) -> SharedRenderer {
        Arc::new(self)
    }
}

impl RenderDenial for DefaultRenderer {
    fn render(&self, denial: &Denial, protocol: Protocol) -> Response<Bytes> {
        let mut res = match protocol {
            Protocol::Http => {
                let body = serde_json::to_vec(&denial.problem_json()).unwrap_or_default();
                let mut res = Response::new(Bytes::from(body));
                *res.status_mut() = denial.status;
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
                res
            }
            Protocol::Grpc => {
                let mut res = Response::new(Bytes::new());
                let h = res.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                h.insert("grpc-status", HeaderValue::from(denial.grpc as u16));
                if let Ok(msg) = HeaderValue::try_from(grpc_message(&denial.detail)) {
                    h.insert("grpc-message", msg);
                }
                res
            }
        };
        let h = res.headers_mut();
        if let Some(value) = denial.www_authenticate(&self.realm)
            && let Ok(v) = HeaderValue::try_from(value)
        {
            h.insert(WWW_AUTHENTICATE, v);
        }
        if let Some(after) = denial.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
        }
        insert_rate_limit_headers(h, &denial.rate_limits);
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

/// Renders `denial` with `renderer` into a response of the layer's body type and
/// puts the typed denial into the response's extensions.
pub fn respond<B>(renderer: &dyn RenderDenial, denial: Denial, protocol: Protocol) -> Response<GuardBody<B>> {
    let res = renderer.render(&denial, protocol);
    let (mut parts, body) = res.into_parts();
    parts.extensions.insert(denial);
    Response::from_parts(parts, GuardBody::full(body))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{body, header, http};
    use super::*;
    use crate::context::Control;

    #[test]
    fn rate_limited_headers() {
        let d = Denial::rate_limited(
            Control::RateLimit,
            "rate_limited",
            "Slow down",
            Duration::from_millis(2100),
        )
        .rate_limit(RateLimitOutcome {
            policy: Arc::from("per-client"),
            limited: true,
            quota: 100,
            window_secs: 10,
            remaining: 0,
            reset_secs: 3,
        })
        .rate_limit(RateLimitOutcome {
            policy: Arc::from("per-ip"),
            limited: false,
            quota: 1000,
            window_secs: 60,
            remaining: 998,
            reset_secs: 1,
        });
        let res = http(&d);
        assert_eq!(res.status(), 429);
        assert_eq!(header(&res, "retry-after"), "3");
        assert_eq!(
            header(&res, "ratelimit-policy"),
            r#""per-client";q=100;w=10, "per-ip";q=1000;w=60"#
        );
        assert_eq!(
            header(&res, "ratelimit"),
            r#""per-client";r=0;t=3, "per-ip";r=998;t=1"#
        );
        let b = body(&res);
        assert_eq!(b["violated-policies"], json!(["per-client"]));
        assert_eq!(b["retry_after"], 3);
    }

    #[test]
    fn closures_replace_the_rendering_and_respond_keeps_the_denial() {
        let renderer = |d: &Denial, _: Protocol| {
            let mut r = Response::new(Bytes::from_static(b"nope"));
            *r.status_mut() = d.status();
            r
        };
        let res: Response<GuardBody<http_body_util::Empty<Bytes>>> = respond(
            &renderer,
            Denial::forbidden(Control::Scope, "x", "y"),
            Protocol::Http,
        );
        assert_eq!(res.status(), 403);
        let d = res.extensions().get::<Denial>().expect("typed denial");
        assert_eq!(d.reason(), "x");
    }

    #[test]
    fn sf_strings_are_escaped() {
        assert_eq!(sf_string("a\"b\\c\u{e9}"), r#""a\"b\\c""#);
    }
}
