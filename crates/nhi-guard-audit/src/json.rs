//! A minimal JSON writer for the request record, the hot path of the writer
//! thread: keys and constant values are copied as they are (they are known ASCII
//! needing no escape), only dynamic strings go through `serde_json`'s escaping.
//! Callers write keys in byte-wise sorted order, so the output is the canonical
//! form (a test re-canonicalises every record the suite writes).

use std::fmt::Write as _;

pub(crate) struct Obj {
    first: bool,
}

/// Opens an object.
#[inline(always)]
pub(crate) fn open(buf: &mut Vec<u8>) -> Obj {
    buf.push(b'{');
    Obj { first: true }
}

impl Obj {
    /// Writes `"key":` (with the comma before it when needed).
    #[inline(always)]
    pub(crate) fn key(&mut self, buf: &mut Vec<u8>, key: &'static str) {
        if !self.first {
            buf.push(b',');
        }
        self.first = false;
        buf.push(b'"');
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(b"\":");
    }

    /// A run of constant members, `"a":1,"b":"c"`, already in canonical form.
    #[inline(always)]
    pub(crate) fn members(&mut self, buf: &mut Vec<u8>, run: &'static str) {
        if !self.first {
            buf.push(b',');
        }
        self.first = false;
        buf.extend_from_slice(run.as_bytes());
    }

    /// `"key":"value"` for a dynamic string (escaped).
    #[inline(always)]
    pub(crate) fn str(&mut self, buf: &mut Vec<u8>, key: &'static str, value: &str) {
        self.key(buf, key);
        string(buf, value);
    }

    /// `"key":"value"` for a constant known to need no escape.
    #[inline(always)]
    pub(crate) fn lit(&mut self, buf: &mut Vec<u8>, key: &'static str, value: &'static str) {
        debug_assert!(value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
        self.key(buf, key);
        buf.push(b'"');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'"');
    }

    /// `"key":"value"` for a value made of hex digits and dashes (ids, hashes):
    /// nothing to escape.
    #[inline(always)]
    pub(crate) fn hex(&mut self, buf: &mut Vec<u8>, key: &'static str, value: &str) {
        debug_assert!(value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
        self.key(buf, key);
        buf.push(b'"');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'"');
    }

    /// `"key":"value"` when `value` is present.
    pub(crate) fn opt_str(&mut self, buf: &mut Vec<u8>, key: &'static str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(buf, key, v);
        }
    }

    /// `"key":n`.
    #[inline(always)]
    pub(crate) fn num(&mut self, buf: &mut Vec<u8>, key: &'static str, value: u64) {
        self.key(buf, key);
        number(buf, value);
    }

    /// `"key":true|false`.
    #[inline(always)]
    pub(crate) fn bool(&mut self, buf: &mut Vec<u8>, key: &'static str, value: bool) {
        self.key(buf, key);
        buf.extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// `"key":["a","b"]`.
    pub(crate) fn strs<'a>(
        &mut self,
        buf: &mut Vec<u8>,
        key: &'static str,
        values: impl Iterator<Item = &'a str>,
    ) {
        self.key(buf, key);
        buf.push(b'[');
        for (i, v) in values.enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            string(buf, v);
        }
        buf.push(b']');
    }

    /// Closes the object.
    #[inline(always)]
    pub(crate) fn close(self, buf: &mut Vec<u8>) {
        buf.push(b'}');
    }
}

/// A JSON string, escaped exactly as `serde_json` escapes (the canonical form).
pub(crate) fn string(buf: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
}

/// Whether `bytes` hold a control character, `"` or `\` (what JSON escapes),
/// checked eight bytes at a time: most strings in a record need no escape.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Nonzero when some byte of `x` is zero (exact as an "any" test).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let (chunks, rest) = bytes.as_chunks::<8>();
    chunks.iter().any(|c| {
        let x = u64::from_ne_bytes(*c);
        // A byte below 0x20 is one whose top three bits are all clear.
        has_zero(x & u64::from_ne_bytes([0xe0; 8]))
            || has_zero(x ^ u64::from_ne_bytes([b'"'; 8]))
            || has_zero(x ^ u64::from_ne_bytes([b'\\'; 8]))
    }) || rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A decimal number.
pub(crate) fn number(buf: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut v = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// A string made by `Display` (IP addresses), escaped.
pub(crate) fn display(buf: &mut Vec<u8>, scratch: &mut String, value: impl std::fmt::Display) {
    scratch.clear();
    let _ = write!(scratch, "{value}");
    string(buf, scratch);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn escape_check_finds_every_escaped_byte_at_every_position() {
        for len in 0..20 {
            let plain = "abcdefghijklmnopqrstuvwxyz~ é"[..len.min(26)].to_owned();
            assert!(!needs_escape(plain.as_bytes()), "{plain:?}");
            for pos in 0..=plain.len() {
                for special in (0u8..0x20).chain([b'"', b'\\']) {
                    let mut bytes = plain.clone().into_bytes();
                    bytes.insert(pos, special);
                    assert!(needs_escape(&bytes), "{bytes:?}");
                }
            }
        }
        // Non-ASCII and the printable neighbours of the escaped bytes pass.
        assert!(!needs_escape("é ü € ! # [ ] \u{7f} 0123456789".as_bytes()));
    }

    #[test]
    fn strings_and_numbers_match_serde_json() {
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "ctl\u{1}\n\t",
            "é ü €",
            "",
            "</script>",
        ] {
            let mut a = Vec::new();
            string(&mut a, s);
            assert_eq!(a, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        for n in [0u64, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut a = Vec::new();
            number(&mut a, n);
            assert_eq!(a, serde_json::to_vec(&n).unwrap());
        }
    }
}
