//! The credential a request presents, read before any control has verified it.
//!
//! Controls in front of identity (the failure-only limit, the address flood shield)
//! need to know whether a request carries a credential and, for the failure limit,
//! which one, without verifying it. They read the same places identity reads: the
//! token of `Authorization` and the API-key header identity is configured with.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The API-key header identity reads unless configured otherwise.
pub const DEFAULT_API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// The credential in `headers`: the header value that carries it and the credential
/// bytes within it (the token after the scheme of `Authorization`, or the trimmed
/// value of `api_key_header`). `Authorization` comes first, as in identity's default
/// order. Empty values are no credential.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use nhi_guard_core::presented::{DEFAULT_API_KEY_HEADER, presented_credential};
///
/// let mut headers = HeaderMap::new();
/// assert!(presented_credential(&headers, &DEFAULT_API_KEY_HEADER).is_none());
/// headers.insert("x-api-key", HeaderValue::from_static(" nhik_live_1 "));
/// let (_, key) = presented_credential(&headers, &DEFAULT_API_KEY_HEADER).unwrap();
/// assert_eq!(key, b"nhik_live_1");
/// ```
pub fn presented_credential<'h>(
    headers: &'h HeaderMap,
    api_key_header: &HeaderName,
) -> Option<(&'h HeaderValue, &'h [u8])> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        let token = match b.iter().position(|&c| c == b' ') {
            Some(sp) => &b[sp + 1..],
            None => b,
        };
        let token = token.trim_ascii();
        if !token.is_empty() {
            return Some((v, token));
        }
    }
    let v = headers.get(api_key_header)?;
    let key = v.as_bytes().trim_ascii();
    (!key.is_empty()).then_some((v, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn bearer_tokens_and_api_keys_in_the_configured_header() {
        let partner = HeaderName::from_static("x-partner-key");
        let h = headers(&[("authorization", "Bearer  abc.def ")]);
        assert_eq!(
            presented_credential(&h, &DEFAULT_API_KEY_HEADER).map(|c| c.1),
            Some(&b"abc.def"[..])
        );
        let h = headers(&[("x-partner-key", "k1")]);
        assert_eq!(presented_credential(&h, &partner).map(|c| c.1), Some(&b"k1"[..]));
        // Another header than the configured one is no credential.
        assert!(presented_credential(&h, &DEFAULT_API_KEY_HEADER).is_none());
        let h = headers(&[("x-api-key", "k2")]);
        assert!(presented_credential(&h, &partner).is_none());
        // Authorization first; empty values are none.
        let h = headers(&[("authorization", "Bearer t"), ("x-api-key", "k")]);
        assert_eq!(
            presented_credential(&h, &DEFAULT_API_KEY_HEADER).map(|c| c.1),
            Some(&b"t"[..])
        );
        let h = headers(&[("authorization", "Bearer  "), ("x-api-key", " ")]);
        assert!(presented_credential(&h, &DEFAULT_API_KEY_HEADER).is_none());
        let h = headers(&[("authorization", "Bearer "), ("x-api-key", "k")]);
        assert_eq!(
            presented_credential(&h, &DEFAULT_API_KEY_HEADER).map(|c| c.1),
            Some(&b"k"[..])
        );
    }
}
