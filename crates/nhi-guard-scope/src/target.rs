//! Request targets the policy can judge unambiguously.
//!
//! The policy matches the raw path, byte for byte. A service behind the layer, or
//! an upstream behind a proxy, may read the same path differently: it may
//! percent-decode it, remove dot segments (RFC 3986 §5.2.4), merge empty segments,
//! treat `\` as `/`, or drop path parameters (`;...`) first. A request whose path
//! changes under any of those readings could reach a handler the policy never
//! judged: `GET /inventory/..%2Fadmin%2Fclients` matches `/inventory/{sku}` and is
//! `/admin/clients` to a server that decodes and normalises.
//!
//! [`PathCheck::Strict`] (the default of [`ScopeLayer`](crate::ScopeLayer)) refuses
//! every path that is not already in the one form all those readings agree on:
//!
//! - a dot segment: `.` or `..`, also followed by path parameters (`..;x`, which
//!   Tomcat-style servers strip before normalising);
//! - an empty segment (`//`); a single trailing slash (`/orders/`) is kept: the
//!   policy matches it as written and no reading moves it to another segment;
//! - a backslash, raw or encoded (`%5C`);
//! - an encoded slash (`%2F`);
//! - an encoded unreserved character (`%2E`, `%41`, `%7E`, ...), which RFC 3986
//!   §6.2.2.2 says is the same as the character itself: a server that decodes it
//!   matches the literal the policy did not;
//! - a `%` that is not followed by two hex digits.
//!
//! A path that passes means the same segments raw, percent-decoded once and
//! normalised, so the policy's judgement holds for whoever reads it next. The
//! check is one pass over the path's bytes without allocation.
//!
//! ```
//! use nhi_guard_scope::target::{Ambiguity, PathCheck};
//!
//! assert_eq!(PathCheck::Strict.check("/inventory/sku-42"), Ok(()));
//! assert_eq!(PathCheck::Strict.check("/orders/"), Ok(()));
//! assert_eq!(
//!     PathCheck::Strict.check("/inventory/..%2Fadmin%2Fclients"),
//!     Err(Ambiguity::EncodedSlash)
//! );
//! assert_eq!(PathCheck::Strict.check("/a/%2e%2E/b"), Err(Ambiguity::EncodedUnreserved));
//! // An API whose resource names hold encoded slashes keeps every other rule, and
//! // `%2F` still counts as a segment boundary for them.
//! assert_eq!(PathCheck::AllowEncodedSlash.check("/projects/group%2Fapp"), Ok(()));
//! assert_eq!(
//!     PathCheck::AllowEncodedSlash.check("/projects/..%2Fadmin"),
//!     Err(Ambiguity::DotSegment)
//! );
//! ```

use std::fmt;

/// How the scope layer treats request paths that a server could read differently
/// from the policy. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PathCheck {
    /// Refuse every [`Ambiguity`] (the default).
    #[default]
    Strict,
    /// As [`Strict`](Self::Strict), but let `%2F` through for APIs whose segments
    /// carry encoded slashes (resource names such as `group%2Fproject`), for
    /// upstreams that do not decode it into a separator. `%2F` still ends a segment
    /// for the dot-segment and empty-segment rules, so `..%2F` and `%2F%2F` are
    /// refused.
    AllowEncodedSlash,
    /// No check: the policy matches whatever path arrives. Only for services that
    /// read the path exactly as the policy does.
    Off,
}

/// Why a request path is ambiguous. The stable name is [`Ambiguity::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ambiguity {
    /// A `.` or `..` segment (also `..;params`).
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A raw `\`.
    Backslash,
    /// `%2F`, an encoded `/`.
    EncodedSlash,
    /// `%5C`, an encoded `\`.
    EncodedBackslash,
    /// An encoded unreserved character (`%2E`, `%41`, ...).
    EncodedUnreserved,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
}

impl Ambiguity {
    /// The stable name: `dot_segment`, `empty_segment`, `backslash`,
    /// `encoded_slash`, `encoded_backslash`, `encoded_unreserved`,
    /// `bad_percent_encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DotSegment => "dot_segment",
            Self::EmptySegment => "empty_segment",
            Self::Backslash => "backslash",
            Self::EncodedSlash => "encoded_slash",
            Self::EncodedBackslash => "encoded_backslash",
            Self::EncodedUnreserved => "encoded_unreserved",
            Self::BadPercentEncoding => "bad_percent_encoding",
        }
    }

    /// What a client is told: which form was refused and what to send instead.
    pub fn detail(self) -> &'static str {
        match self {
            Self::DotSegment => {
                "The request path has a dot segment ('.' or '..'); send the path with dot segments removed"
            }
            Self::EmptySegment => "The request path has an empty segment ('//')",
            Self::Backslash => "The request path has a backslash",
            Self::EncodedSlash => "The request path has an encoded slash ('%2F')",
            Self::EncodedBackslash => "The request path has an encoded backslash ('%5C')",
            Self::EncodedUnreserved => {
                "The request path percent-encodes a character that needs no encoding (such as '%2E'); send the character itself"
            }
            Self::BadPercentEncoding => "The request path has a '%' that is not followed by two hex digits",
        }
    }
}

impl fmt::Display for Ambiguity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PathCheck {
    /// Checks `path` (the URI path, without the query): `Err` names the first
    /// ambiguity found. One pass over the bytes, no allocation.
    pub fn check(self, path: &str) -> Result<(), Ambiguity> {
        let split_at_encoded_slash = match self {
            Self::Strict => false,
            Self::AllowEncodedSlash => true,
            Self::Off => return Ok(()),
        };
        let b = path.as_bytes();
        // The empty text before the leading '/' is not a segment.
        let mut i = usize::from(b.first() == Some(&b'/'));
        let mut start = i;
        loop {
            // Ordinary bytes cost one table look-up each.
            while i < b.len() && !SPECIAL[usize::from(b[i])] {
                i += 1;
            }
            let Some(&c) = b.get(i) else { break };
            match c {
                b'/' => {
                    inner_segment(&b[start..i])?;
                    i += 1;
                    start = i;
                }
                b'\\' => return Err(Ambiguity::Backslash),
                _ => {
                    let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex))
                    else {
                        return Err(Ambiguity::BadPercentEncoding);
                    };
                    match (hi << 4) | lo {
                        b'/' if split_at_encoded_slash => {
                            inner_segment(&b[start..i])?;
                            start = i + 3;
                        }
                        b'/' => return Err(Ambiguity::EncodedSlash),
                        b'\\' => return Err(Ambiguity::EncodedBackslash),
                        v if is_unreserved(v) => return Err(Ambiguity::EncodedUnreserved),
                        _ => {}
                    }
                    i += 3;
                }
            }
        }
        // The last segment may be empty (a trailing slash), never a dot segment.
        if is_dot_segment(&b[start..]) {
            return Err(Ambiguity::DotSegment);
        }
        Ok(())
    }
}

/// The bytes that need a closer look: `/`, `%` and `\`.
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'/' as usize] = true;
    t[b'%' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A segment followed by a separator: neither empty nor a dot segment.
#[inline]
fn inner_segment(seg: &[u8]) -> Result<(), Ambiguity> {
    if seg.is_empty() {
        Err(Ambiguity::EmptySegment)
    } else if is_dot_segment(seg) {
        Err(Ambiguity::DotSegment)
    } else {
        Ok(())
    }
}

/// `.` or `..`, alone or before path parameters (`..;jsessionid=1`). Looks past
/// the first byte only for segments that start with a dot.
#[inline]
fn is_dot_segment(seg: &[u8]) -> bool {
    if seg.first() != Some(&b'.') {
        return false;
    }
    let name = match seg.iter().position(|&c| c == b';') {
        Some(end) => &seg[..end],
        None => seg,
    };
    matches!(name, b"." | b"..")
}

/// RFC 3986 `unreserved`: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
#[inline]
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[inline]
fn hex(c: &u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use Ambiguity::*;

    #[test]
    fn the_table() {
        let strict: &[(&str, Result<(), Ambiguity>)] = &[
            ("/", Ok(())),
            ("", Ok(())),
            ("*", Ok(())),
            ("/orders", Ok(())),
            ("/orders/", Ok(())),
            ("/inventory/sku-42", Ok(())),
            ("/.well-known/jwks.json", Ok(())),
            ("/a/...", Ok(())),
            ("/a/.b", Ok(())),
            ("/a/b.", Ok(())),
            ("/a/..b/c", Ok(())),
            ("/a;v=1/b", Ok(())),
            ("/a/b%20c", Ok(())),
            ("/caf%C3%A9", Ok(())),
            ("/a/%25", Ok(())),
            ("/a/%3B", Ok(())),
            ("/grpc.health.v1.Health/Check", Ok(())),
            ("/a/.", Err(DotSegment)),
            ("/a/..", Err(DotSegment)),
            ("/..", Err(DotSegment)),
            ("/./a", Err(DotSegment)),
            ("/a/../b", Err(DotSegment)),
            ("/a/..;/b", Err(DotSegment)),
            ("/a/..;jsessionid=1/b", Err(DotSegment)),
            ("/a/.;x", Err(DotSegment)),
            ("/a/%2e%2E/b", Err(EncodedUnreserved)),
            ("/a/.%2e/b", Err(EncodedUnreserved)),
            ("/%61dmin/clients", Err(EncodedUnreserved)),
            ("/a/%7E", Err(EncodedUnreserved)),
            ("/a/%5f", Err(EncodedUnreserved)),
            ("//", Err(EmptySegment)),
            ("//admin", Err(EmptySegment)),
            ("/a//b", Err(EmptySegment)),
            ("/a/b//", Err(EmptySegment)),
            ("/a\\b", Err(Backslash)),
            ("/a/%5Cb", Err(EncodedBackslash)),
            ("/a/%5c", Err(EncodedBackslash)),
            ("/inventory/..%2Fadmin%2Fclients", Err(EncodedSlash)),
            ("/a%2fb", Err(EncodedSlash)),
            ("/a/%", Err(BadPercentEncoding)),
            ("/a/%2", Err(BadPercentEncoding)),
            ("/a/%zz", Err(BadPercentEncoding)),
            ("/a/%g0", Err(BadPercentEncoding)),
        ];
        for (path, expected) in strict {
            assert_eq!(PathCheck::Strict.check(path), *expected, "strict {path:?}");
            assert_eq!(PathCheck::Off.check(path), Ok(()), "off {path:?}");
        }
        let lenient: &[(&str, Result<(), Ambiguity>)] = &[
            ("/projects/group%2Fapp/issues", Ok(())),
            ("/a%2F", Ok(())),
            ("/projects/..%2Fadmin", Err(DotSegment)),
            ("/projects/a%2F..", Err(DotSegment)),
            ("/projects/a%2F..;x%2Fb", Err(DotSegment)),
            ("/projects/a%2F%2Fb", Err(EmptySegment)),
            ("/projects/a/%2Fb", Err(EmptySegment)),
            ("/projects/a%5Cb", Err(EncodedBackslash)),
            ("/projects/a%2Eb", Err(EncodedUnreserved)),
        ];
        for (path, expected) in lenient {
            assert_eq!(
                PathCheck::AllowEncodedSlash.check(path),
                *expected,
                "allow encoded slash {path:?}"
            );
        }
    }

    #[test]
    fn names_and_details_are_stable() {
        let all = [
            DotSegment,
            EmptySegment,
            Backslash,
            EncodedSlash,
            EncodedBackslash,
            EncodedUnreserved,
            BadPercentEncoding,
        ];
        for a in all {
            assert_eq!(a.to_string(), a.as_str());
            assert!(a.as_str().bytes().all(|c| c.is_ascii_lowercase() || c == b'_'));
            assert!(!a.detail().is_empty());
        }
    }

    /// Decodes every `%XX` once (as a server would), keeping a broken `%` as is.
    fn decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let (Some(h), Some(l)) = (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex))
            {
                out.push((h << 4) | l);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    /// Path pieces biased towards the characters that matter.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just(";"),
            Just("\\"),
            Just("%"),
            Just("%2e"),
            Just("%2E"),
            Just("%2f"),
            Just("%2F"),
            Just("%5c"),
            Just("%41"),
            Just("%20"),
            Just("%25"),
            Just("%C3%A9"),
            Just("%z"),
            Just("a"),
            Just("orders"),
            Just("~"),
            Just("-"),
        ];
        (any::<bool>(), prop::collection::vec(piece, 0..16)).prop_map(|(lead, pieces)| {
            let mut s = String::from(if lead { "/" } else { "" });
            s.extend(pieces);
            s
        })
    }

    proptest! {
        #[test]
        fn never_panics(s in any::<String>()) {
            for check in [PathCheck::Strict, PathCheck::AllowEncodedSlash, PathCheck::Off] {
                let _ = check.check(&s);
            }
        }

        /// An accepted path has the same segments raw, decoded and normalised: the
        /// policy judged what any reader of the path will route.
        #[test]
        fn an_accepted_path_has_no_other_reading(p in path()) {
            prop_assume!(p.starts_with('/'));
            if PathCheck::Strict.check(&p).is_err() {
                return Ok(());
            }
            let raw: Vec<&str> = p[1..].split('/').collect();
            // Decoding adds no separator and no backslash.
            let decoded = decode(&p);
            let decoded_segments: Vec<&[u8]> = decoded[1..].split(|&c| c == b'/').collect();
            prop_assert_eq!(decoded_segments.len(), raw.len());
            prop_assert!(!decoded.contains(&b'\\'));
            for (i, seg) in raw.iter().enumerate() {
                let last = i + 1 == raw.len();
                // No empty segment but a trailing slash; no dot segment, with or
                // without path parameters, raw or decoded.
                prop_assert!(last || !seg.is_empty(), "{p}");
                let dec = decode(seg);
                let name = dec.split(|&c| c == b';').next().unwrap_or_default();
                prop_assert!(name != b"." && name != b"..", "{p}");
                // Decoding changes no unreserved character: a literal match on the
                // raw path is a literal match on the normalised one.
                prop_assert_eq!(dec.as_slice(), decoded_segments[i]);
                let b = seg.as_bytes();
                for (j, _) in b.iter().enumerate().filter(|&(_, &c)| c == b'%') {
                    let v = (hex(&b[j + 1]).unwrap_or(0) << 4) | hex(&b[j + 2]).unwrap_or(0);
                    prop_assert!(!is_unreserved(v), "{p}");
                }
            }
        }

        /// Whatever `AllowEncodedSlash` accepts, read with `%2F` as a separator, has
        /// no empty or dot segment either.
        #[test]
        fn encoded_slashes_still_bound_segments(p in path()) {
            prop_assume!(p.starts_with('/'));
            if PathCheck::AllowEncodedSlash.check(&p).is_err() {
                return Ok(());
            }
            let decoded = decode(&p);
            let segments: Vec<&[u8]> = decoded[1..].split(|&c| c == b'/').collect();
            for (i, seg) in segments.iter().enumerate() {
                let name = seg.split(|&c| c == b';').next().unwrap_or_default();
                prop_assert!(i + 1 == segments.len() || !seg.is_empty(), "{p}");
                prop_assert!(name != b"." && name != b"..", "{p}");
            }
            if PathCheck::Strict.check(&p).is_ok() {
                prop_assert!(!p.to_ascii_lowercase().contains("%2f"));
            }
        }
    }
}
