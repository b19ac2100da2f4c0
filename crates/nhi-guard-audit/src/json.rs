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
pub(crate) fn open(buf: &mut Vec<u8>) -> Obj {
    buf.push(b'{');
    Obj { first: true }
}

impl Obj {
    /// Writes `"key":` (with the comma before it when needed).
    pub(crate) fn key(&mut self, buf: &mut Vec<u8>, key: &'static str) {
        if !self.first {
            buf.push(b',');
        }
        self.first = false;
        buf.push(b'"');
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(b"\":");
    }

    /// `"key":"value"` for a dynamic string (escaped).
    pub(crate) fn str(&mut self, buf: &mut Vec<u8>, key: &'static str, value: &str) {
        self.key(buf, key);
        string(buf, value);
    }

    /// `"key":"value"` for a constant known to need no escape.
    pub(crate) fn lit(&mut self, buf: &mut Vec<u8>, key: &'static str, value: &'static str) {
        debug_assert!(value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\'));
        self.key(buf, key);
        buf.push(b'"');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'"');
    }

    /// `"key":"value"` for a value made of hex digits and dashes (ids, hashes):
    /// nothing to escape.
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
    pub(crate) fn num(&mut self, buf: &mut Vec<u8>, key: &'static str, value: u64) {
        self.key(buf, key);
        number(buf, value);
    }

    /// `"key":true|false`.
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
    pub(crate) fn close(self, buf: &mut Vec<u8>) {
        buf.push(b'}');
    }
}

/// A JSON string, escaped exactly as `serde_json` escapes (the canonical form).
pub(crate) fn string(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, s);
    }
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
