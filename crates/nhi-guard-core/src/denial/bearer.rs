//! RFC 6750 bearer challenges: the [`BearerError`] code and the
//! `WWW-Authenticate` value of a denial.

use std::borrow::Cow;

use super::Denial;

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

impl Denial {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::super::test_support::{body, header, http};
    use super::*;
    use crate::context::{Control, RequestId};
    use crate::denial::{DefaultRenderer, Protocol, RenderDenial};
    use crate::scope::ScopeSet;

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
}
