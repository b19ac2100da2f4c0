//! One type for every refusal, and its renderings for HTTP (RFC 9457 problem+json,
//! RFC 6750 `WWW-Authenticate`, `Retry-After`, the IETF `RateLimit` fields) and
//! for gRPC (`grpc-status` / `grpc-message`).

mod bearer;
mod grpc;
mod render;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub use self::bearer::BearerError;
pub use self::grpc::{GrpcCode, Protocol};
pub use self::render::{
    DefaultRenderer, PROBLEM_JSON, PROBLEM_TYPE_PREFIX, RATELIMIT, RATELIMIT_POLICY, RenderDenial,
    SharedRenderer, insert_rate_limit_headers, respond, retry_after_secs,
};
use crate::context::{Control, DenialSummary, RateLimitOutcome, RequestId};
use crate::scope::ScopeSet;

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
}

#[cfg(test)]
mod test_support {
    //! Renderings shared by the denial's unit tests.

    use bytes::Bytes;
    use http::Response;
    use serde_json::Value;

    use super::{DefaultRenderer, Denial, Protocol, RenderDenial};

    pub(super) fn http(d: &Denial) -> Response<Bytes> {
        DefaultRenderer::new().render(d, Protocol::Http)
    }

    pub(super) fn grpc(d: &Denial) -> Response<Bytes> {
        DefaultRenderer::new().render(d, Protocol::Grpc)
    }

    pub(super) fn header<'a>(res: &'a Response<Bytes>, name: &str) -> &'a str {
        res.headers()
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .expect("ascii")
    }

    pub(super) fn body(res: &Response<Bytes>) -> Value {
        serde_json::from_slice(res.body()).expect("json body")
    }
}
