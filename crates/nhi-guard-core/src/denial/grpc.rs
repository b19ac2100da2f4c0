//! gRPC: telling a gRPC request apart, and the status codes and message encoding
//! of its denials.

use http::HeaderMap;
use http::header::CONTENT_TYPE;

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

/// gRPC `grpc-message` percent-encoding: bytes outside `%x20-7E` and `%` itself.
pub(super) fn grpc_message(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header::HeaderValue;

    use super::super::test_support::{grpc, header};
    use super::*;
    use crate::context::Control;
    use crate::denial::Denial;
    use crate::scope::ScopeSet;

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
}
