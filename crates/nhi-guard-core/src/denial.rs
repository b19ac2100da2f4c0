//! One type for every refusal, and its renderings for HTTP (RFC 9457 problem+json,
//! RFC 6750 `WWW-Authenticate`, `Retry-After`, the IETF `RateLimit` fields) and
//! for gRPC (`grpc-status` / `grpc-message`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::body::GuardBody;
use crate::context::{Control, DenialSummary, RateLimitOutcome, RequestId};
use crate::scope::ScopeSet;

/// The media type of RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The prefix of every problem `type` URI: `urn:nhi-guard:problem:<reason>`, with
/// the reason code's underscores turned into hyphens.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:nhi-guard:problem:";

/// The `RateLimit-Policy` header field (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header field (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whether a request speaks plain HTTP or gRPC, which decides how a denial renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Plain HTTP: problem+json.
    #[default]
    Http,
    /// gRPC (request `content-type: application/grpc*`): HTTP 200 with
    /// `grpc-status` and `grpc-message` and no body.
    Grpc,
}

impl Protocol {
    /// The protocol of a request, from its `content-type`.
    pub fn of(headers: &HeaderMap) -> Self {
        match headers.get(CONTENT_TYPE) {
            Some(v)
                if v.as_bytes().len() >= 16
                    && v.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc") =>
            {
                Self::Grpc
            }
            _ => Self::Http,
        }
    }
}

/// The RFC 6750 / RFC 9470 error code of a bearer challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BearerError {
    /// No error attribute: the request carried no credential (RFC 6750 §3.1).
    None,
    /// `invalid_request`: a malformed request (400).
    InvalidRequest,
    /// `invalid_token`: the credential is expired, revoked, malformed or unknown (401).
    InvalidToken,
    /// `insufficient_scope`: the credential lacks a required scope (403).
    InsufficientScope,
    /// `insufficient_user_authentication` (RFC 9470): authenticate afresh (401).
    InsufficientUserAuthentication,
}

impl BearerError {
    /// The `error` attribute value, if any.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::InvalidRequest => Some("invalid_request"),
            Self::InvalidToken => Some("invalid_token"),
            Self::InsufficientScope => Some("insufficient_scope"),
            Self::InsufficientUserAuthentication => Some("insufficient_user_authentication"),
        }
    }
}

/// gRPC status codes used by denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrpcCode {
    /// `UNAUTHENTICATED` (16).
    Unauthenticated = 16,
    /// `PERMISSION_DENIED` (7).
    PermissionDenied = 7,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted = 8,
    /// `INVALID_ARGUMENT` (3).
    InvalidArgument = 3,
    /// `UNAVAILABLE` (14).
    Unavailable = 14,
}

/// A refusal by one control, with everything needed to render it.
///
/// A denial is a response, never a service error. It carries no secret: the
/// `detail` helps a legitimate client (expired, wrong audience, unknown client) and
/// never echoes a credential or names a key.
///
/// ```
/// use nhi_guard_core::{Denial, ScopeSet, context::Control, denial::Protocol};
/// use nhi_guard_core::denial::{DefaultRenderer, RenderDenial};
///
/// let required = ScopeSet::parse("orders:write").unwrap();
/// let denial = Denial::insufficient_scope(Control::Scope, required.clone(), required);
/// let res = DefaultRenderer::new().realm("orders-api").render(&denial, Protocol::Http);
/// assert_eq!(res.status(), 403);
/// assert_eq!(
///     res.headers()["www-authenticate"],
///     r#"Bearer realm="orders-api", error="insufficient_scope", error_description="The access token lacks a required scope", scope="orders:write""#
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Denial {
    control: Control,
    status: StatusCode,
    reason: &'static str,
    title: &'static str,
    detail: Cow<'static, str>,
    challenge: Option<BearerError>,
    grpc: GrpcCode,
    required_scopes: Option<ScopeSet>,
    missing_scopes: Option<ScopeSet>,
    retry_after: Option<Duration>,
    rate_limits: Vec<RateLimitOutcome>,
    violated_policies: Vec<Arc<str>>,
    max_age: Option<u64>,
    request_id: Option<RequestId>,
}

impl fmt::Debug for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Denial")
            .field("control", &self.control)
            .field("status", &self.status.as_u16())
            .field("reason", &self.reason)
            .field("detail", &self.detail)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} denied ({}): {}", self.control, self.reason, self.detail)
    }
}

impl Denial {
    fn base(
        control: Control,
        status: StatusCode,
        reason: &'static str,
        title: &'static str,
        detail: Cow<'static, str>,
        grpc: GrpcCode,
    ) -> Self {
        Self {
            control,
            status,
            reason,
            title,
            detail,
            challenge: None,
            grpc,
            required_scopes: None,
            missing_scopes: None,
            retry_after: None,
            rate_limits: Vec::new(),
            violated_policies: Vec::new(),
            max_age: None,
            request_id: None,
        }
    }

    /// 401 for a request without any credential: a bare `Bearer realm` challenge
    /// (RFC 6750 §3.1 says no error code then). Reason `credential_missing`.
    pub fn missing_credential(control: Control) -> Self {
        let mut d = Self::base(
            control,
            StatusCode::UNAUTHORIZED,
            "credential_missing",
            "Authentication required",
            Cow::Borrowed("This endpoint requires a credential"),
            GrpcCode::Unauthenticated,
        );
        d.challenge = Some(BearerError::None);
        d
    }

    /// 401 `invalid_token`: the credential was presented and is not acceptable.
    pub fn invalid_token(
        control: Control,
        reason: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        let mut d = Self::base(
            control,
            StatusCode::UNAUTHORIZED,
            reason,
            "Invalid credential",
            detail.into(),
            GrpcCode::Unauthenticated,
        );
        d.challenge = Some(BearerError::InvalidToken);
        d
    }

    /// 400 `invalid_request`: the request is malformed (two credentials, a broken
    /// `Authorization` header, ...).
    pub fn invalid_request(
        control: Control,
        reason: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        let mut d = Self::base(
            control,
            StatusCode::BAD_REQUEST,
            reason,
            "Invalid request",
            detail.into(),
            GrpcCode::Unauthenticated,
        );
        d.challenge = Some(BearerError::InvalidRequest);
        d
    }

    /// 403 `insufficient_scope`, naming the scopes the route requires (in the
    /// challenge) and those missing (in the problem body).
    pub fn insufficient_scope(control: Control, required: ScopeSet, missing: ScopeSet) -> Self {
        let mut d = Self::base(
            control,
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "Insufficient scope",
            Cow::Borrowed("The access token lacks a required scope"),
            GrpcCode::PermissionDenied,
        );
        d.challenge = Some(BearerError::InsufficientScope);
        d.required_scopes = Some(required);
        d.missing_scopes = Some(missing);
        d
    }

    /// 403 without a challenge: the caller is known and refused (blocked, outside
    /// its networks, ...).
    pub fn forbidden(control: Control, reason: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::base(
            control,
            StatusCode::FORBIDDEN,
            reason,
            "Forbidden",
            detail.into(),
            GrpcCode::PermissionDenied,
        )
    }

    /// 429: too many requests. `retry_after` is rounded up to whole seconds.
    pub fn rate_limited(
        control: Control,
        reason: &'static str,
        detail: impl Into<Cow<'static, str>>,
        retry_after: Duration,
    ) -> Self {
        let mut d = Self::base(
            control,
            StatusCode::TOO_MANY_REQUESTS,
            reason,
            "Too many requests",
            detail.into(),
            GrpcCode::ResourceExhausted,
        );
        d.retry_after = Some(retry_after);
        d
    }

    /// 401 RFC 9470 step-up: `insufficient_user_authentication` with `max_age`. The
    /// client must present a credential issued within `max_age`.
    pub fn step_up(
        control: Control,
        reason: &'static str,
        detail: impl Into<Cow<'static, str>>,
        max_age: Duration,
    ) -> Self {
        let mut d = Self::base(
            control,
            StatusCode::UNAUTHORIZED,
            reason,
            "Fresh authentication required",
            detail.into(),
            GrpcCode::Unauthenticated,
        );
        d.challenge = Some(BearerError::InsufficientUserAuthentication);
        d.max_age = Some(max_age.as_secs());
        d
    }

    /// A denial with any status. Without a challenge unless `challenge` is set.
    pub fn custom(
        control: Control,
        status: StatusCode,
        reason: &'static str,
        title: &'static str,
        detail: impl Into<Cow<'static, str>>,
        grpc: GrpcCode,
    ) -> Self {
        Self::base(control, status, reason, title, detail.into(), grpc)
    }

    /// Adds (or replaces) the `WWW-Authenticate` challenge.
    #[must_use]
    pub fn challenge(mut self, error: BearerError) -> Self {
        self.challenge = Some(error);
        self
    }

    /// Sets `Retry-After`.
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Adds a rate-limit policy state for the `RateLimit-Policy` / `RateLimit` fields;
    /// if it is `limited`, its name is listed in `violated-policies`.
    #[must_use]
    pub fn rate_limit(mut self, outcome: RateLimitOutcome) -> Self {
        if outcome.limited {
            self.violated_policies.push(outcome.policy.clone());
        }
        self.rate_limits.push(outcome);
        self
    }

    /// Lists a violated policy by name without a quota (for example
    /// `abnormal-usage-detected`).
    #[must_use]
    pub fn violated_policy(mut self, name: impl Into<Arc<str>>) -> Self {
        self.violated_policies.push(name.into());
        self
    }

    /// Attaches the request id, shown in the problem body so a client can quote it.
    #[must_use]
    pub fn with_request_id(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }

    /// The control that denied.
    pub fn control(&self) -> Control {
        self.control
    }
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
    /// The problem title.
    pub fn title(&self) -> &'static str {
        self.title
    }
    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        &self.detail
    }
    /// The bearer challenge, if any.
    pub fn bearer_error(&self) -> Option<BearerError> {
        self.challenge
    }
    /// The gRPC status code.
    pub fn grpc_code(&self) -> GrpcCode {
        self.grpc
    }
    /// Scopes the route requires (scope denials).
    pub fn required_scopes(&self) -> Option<&ScopeSet> {
        self.required_scopes.as_ref()
    }
    /// Scopes the principal lacks (scope denials).
    pub fn missing_scopes(&self) -> Option<&ScopeSet> {
        self.missing_scopes.as_ref()
    }
    /// When the client may retry.
    pub fn retry_after_duration(&self) -> Option<Duration> {
        self.retry_after
    }
    /// Rate-limit policy states.
    pub fn rate_limits(&self) -> &[RateLimitOutcome] {
        &self.rate_limits
    }
    /// Names of violated policies.
    pub fn violated_policies(&self) -> &[Arc<str>] {
        &self.violated_policies
    }
    /// The step-up `max_age`, in seconds.
    pub fn max_age(&self) -> Option<u64> {
        self.max_age
    }
    /// The request id, if attached.
    pub fn request_id(&self) -> Option<RequestId> {
        self.request_id
    }

    /// The short form recorded in the security context.
    pub fn summary(&self) -> DenialSummary {
        DenialSummary {
            control: self.control,
            reason: self.reason,
            status: self.status,
        }
    }

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

    /// The `WWW-Authenticate` value for this denial under `realm`, if it has a
    /// challenge.
    pub fn www_authenticate(&self, realm: &str) -> Option<String> {
        let error = self.challenge?;
        let mut v = format!("Bearer realm=\"{}\"", quoted_text(realm));
        if let Some(code) = error.as_str() {
            v.push_str(", error=\"");
            v.push_str(code);
            v.push_str("\", error_description=\"");
            v.push_str(&quoted_text(&self.detail));
            v.push('"');
        }
        if let (BearerError::InsufficientScope, Some(scopes)) = (error, &self.required_scopes) {
            // scope-tokens exclude `"` and `\`, so they are safe inside the quotes.
            v.push_str(&format!(", scope=\"{scopes}\""));
        }
        if let (BearerError::InsufficientUserAuthentication, Some(max_age)) = (error, self.max_age) {
            v.push_str(&format!(", max_age={max_age}"));
        }
        Some(v)
    }
}

/// Whole seconds to wait, rounded up so a client never retries too early.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Keeps only the characters RFC 6750 allows in `error_description` and `realm`
/// (`%x20-21 / %x23-5B / %x5D-7E`); anything else becomes `'`.
fn quoted_text(s: &str) -> Cow<'_, str> {
    let ok = |c: char| matches!(c, '\x20'..='\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E');
    if s.chars().all(ok) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.chars().map(|c| if ok(c) { c } else { '\'' }).collect())
    }
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

/// gRPC `grpc-message` percent-encoding: bytes outside `%x20-7E` and `%` itself.
fn grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
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
    use super::*;

    fn http(d: &Denial) -> Response<Bytes> {
        DefaultRenderer::new().render(d, Protocol::Http)
    }

    fn grpc(d: &Denial) -> Response<Bytes> {
        DefaultRenderer::new().render(d, Protocol::Grpc)
    }

    fn header<'a>(res: &'a Response<Bytes>, name: &str) -> &'a str {
        res.headers()
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .expect("ascii")
    }

    fn body(res: &Response<Bytes>) -> Value {
        serde_json::from_slice(res.body()).expect("json body")
    }

    #[test]
    fn protocol_detection() {
        let mut h = HeaderMap::new();
        assert_eq!(Protocol::of(&h), Protocol::Http);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        assert_eq!(Protocol::of(&h), Protocol::Grpc);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("Application/GRPC"));
        assert_eq!(Protocol::of(&h), Protocol::Grpc);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(Protocol::of(&h), Protocol::Http);
    }

    #[test]
    fn missing_credential_has_a_bare_challenge() {
        let res = http(&Denial::missing_credential(Control::Identity));
        assert_eq!(res.status(), 401);
        assert_eq!(header(&res, "www-authenticate"), r#"Bearer realm="api""#);
        assert_eq!(header(&res, "content-type"), "application/problem+json");
        let b = body(&res);
        assert_eq!(b["type"], "urn:nhi-guard:problem:credential-missing");
        assert_eq!(b["status"], 401);
        assert_eq!(b["title"], "Authentication required");
        assert_eq!(b["reason"], "credential_missing");
    }

    #[test]
    fn invalid_token_challenge_syntax() {
        let d = Denial::invalid_token(
            Control::Identity,
            "token_expired",
            "The access token \"expired\"\n",
        )
        .with_request_id(RequestId::next());
        let res = DefaultRenderer::new().realm("orders").render(&d, Protocol::Http);
        assert_eq!(res.status(), 401);
        assert_eq!(
            header(&res, "www-authenticate"),
            r#"Bearer realm="orders", error="invalid_token", error_description="The access token 'expired''""#
        );
        let b = body(&res);
        assert_eq!(b["type"], "urn:nhi-guard:problem:token-expired");
        assert_eq!(b["request_id"].as_str().map(str::len), Some(36));
        assert_eq!(header(&res, "cache-control"), "no-store");
    }

    #[test]
    fn invalid_request_is_400() {
        let res = http(&Denial::invalid_request(
            Control::Identity,
            "multiple_credentials",
            "Two bearer tokens",
        ));
        assert_eq!(res.status(), 400);
        assert_eq!(
            header(&res, "www-authenticate"),
            r#"Bearer realm="api", error="invalid_request", error_description="Two bearer tokens""#
        );
    }

    #[test]
    fn insufficient_scope_names_scopes() {
        let req = ScopeSet::parse("orders:write orders:read").expect("scopes");
        let missing = ScopeSet::parse("orders:write").expect("scopes");
        let res = http(&Denial::insufficient_scope(Control::Scope, req, missing));
        assert_eq!(res.status(), 403);
        assert_eq!(
            header(&res, "www-authenticate"),
            r#"Bearer realm="api", error="insufficient_scope", error_description="The access token lacks a required scope", scope="orders:read orders:write""#
        );
        let b = body(&res);
        assert_eq!(b["missing_scopes"], json!(["orders:write"]));
        assert_eq!(b["required_scopes"], json!(["orders:read", "orders:write"]));
    }

    #[test]
    fn forbidden_has_no_challenge() {
        let res = http(&Denial::forbidden(Control::Risk, "blocked", "Blocked for 300 s"));
        assert_eq!(res.status(), 403);
        assert!(res.headers().get("www-authenticate").is_none());
    }

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
    fn step_up_challenge() {
        let d = Denial::step_up(
            Control::Risk,
            "step_up_required",
            "Fetch a fresh token",
            Duration::from_secs(300),
        );
        let res = http(&d);
        assert_eq!(res.status(), 401);
        assert_eq!(
            header(&res, "www-authenticate"),
            r#"Bearer realm="api", error="insufficient_user_authentication", error_description="Fetch a fresh token", max_age=300"#
        );
    }

    #[test]
    fn grpc_renderings() {
        let cases = [
            (Denial::missing_credential(Control::Identity), "16"),
            (
                Denial::invalid_token(Control::Identity, "token_expired", "expired 100%"),
                "16",
            ),
            (
                Denial::invalid_request(Control::Identity, "malformed", "bad"),
                "16",
            ),
            (
                Denial::insufficient_scope(
                    Control::Scope,
                    ScopeSet::parse("a").expect("s"),
                    ScopeSet::parse("a").expect("s"),
                ),
                "7",
            ),
            (Denial::forbidden(Control::Risk, "blocked", "blocked"), "7"),
            (
                Denial::rate_limited(Control::RateLimit, "rate_limited", "slow", Duration::from_secs(1)),
                "8",
            ),
        ];
        for (d, code) in cases {
            let res = grpc(&d);
            assert_eq!(res.status(), 200, "{d:?}");
            assert_eq!(header(&res, "content-type"), "application/grpc");
            assert_eq!(header(&res, "grpc-status"), code, "{d:?}");
            assert!(res.body().is_empty());
        }
        let res = grpc(&Denial::invalid_token(Control::Identity, "x", "expired 100% é"));
        assert_eq!(header(&res, "grpc-message"), "expired 100%25 %C3%A9");
        let res = grpc(&Denial::rate_limited(
            Control::RateLimit,
            "x",
            "y",
            Duration::from_millis(1),
        ));
        assert_eq!(header(&res, "retry-after"), "1");
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
