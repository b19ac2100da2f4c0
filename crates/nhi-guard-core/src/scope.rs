//! OAuth 2.0 scopes (RFC 6749 §3.3) as a small, sorted, cheaply cloned set.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// A scope string that is not a valid RFC 6749 `scope-token`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// An empty scope token (for example `""` in a list of scopes).
    #[error("empty scope")]
    Empty,
    /// A scope with a character outside `%x21 / %x23-5B / %x5D-7E`.
    #[error("scope {scope:?} contains the invalid character {ch:?} at byte {index}")]
    InvalidCharacter {
        /// The scope as given (scopes are not secrets).
        scope: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
}

/// Checks one RFC 6749 `scope-token`: `1*( %x21 / %x23-5B / %x5D-7E )`.
///
/// # Errors
/// [`ScopeError`] when the token is empty or has a character outside that range
/// (space, `"`, `\`, control characters, non-ASCII).
pub fn validate_scope(token: &str) -> Result<(), ScopeError> {
    if token.is_empty() {
        return Err(ScopeError::Empty);
    }
    match token
        .char_indices()
        .find(|&(_, c)| !matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E'))
    {
        None => Ok(()),
        Some((index, ch)) => Err(ScopeError::InvalidCharacter {
            scope: token.to_owned(),
            ch,
            index,
        }),
    }
}

/// A set of OAuth scopes: sorted, without duplicates, shared behind an `Arc`.
///
/// Cloning is a reference-count increment. Membership is a binary search; subset,
/// intersection and difference are one merge pass over both sorted lists, without
/// allocating for the boolean checks.
///
/// ```
/// use nhi_guard_core::ScopeSet;
///
/// let granted = ScopeSet::parse("orders:read orders:write inventory:read").unwrap();
/// let needed = ScopeSet::parse("orders:read").unwrap();
/// assert!(needed.is_subset(&granted));
/// assert_eq!(granted.to_string(), "inventory:read orders:read orders:write");
/// assert!(ScopeSet::parse("bad\"scope").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScopeSet {
    scopes: Arc<[Box<str>]>,
}

fn empty_scopes() -> Arc<[Box<str>]> {
    static EMPTY: OnceLock<Arc<[Box<str>]>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::from(Vec::new())).clone()
}

impl Default for ScopeSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl ScopeSet {
    /// The empty set.
    pub fn empty() -> Self {
        Self {
            scopes: empty_scopes(),
        }
    }

    /// Parses a space-delimited scope string (the `scope` claim and parameter form).
    /// Runs of spaces and leading or trailing spaces are tolerated; any other
    /// character outside the `scope-token` grammar is an error.
    ///
    /// # Errors
    /// [`ScopeError`] naming the first invalid token.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        Self::try_from_iter(s.split(' ').filter(|t| !t.is_empty()))
    }

    /// Builds a set from individual scope tokens, validating each.
    ///
    /// # Errors
    /// [`ScopeError`] naming the first invalid token.
    pub fn try_from_iter<I, S>(iter: I) -> Result<Self, ScopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut scopes = Vec::new();
        for s in iter {
            let s = s.as_ref();
            validate_scope(s)?;
            scopes.push(Box::<str>::from(s));
        }
        Ok(Self::from_unsorted(scopes))
    }

    fn from_unsorted(mut scopes: Vec<Box<str>>) -> Self {
        if scopes.is_empty() {
            return Self::empty();
        }
        scopes.sort_unstable();
        scopes.dedup();
        Self {
            scopes: Arc::from(scopes),
        }
    }

    fn from_sorted(scopes: Vec<Box<str>>) -> Self {
        if scopes.is_empty() {
            Self::empty()
        } else {
            Self {
                scopes: Arc::from(scopes),
            }
        }
    }

    /// Number of scopes.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// Whether the set holds no scope.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.scopes.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }

    /// The scopes in sorted order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.scopes.iter().map(|s| &**s)
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(&self, other: &ScopeSet) -> bool {
        if self.len() > other.len() {
            return false;
        }
        if Arc::ptr_eq(&self.scopes, &other.scopes) {
            return true;
        }
        let mut theirs = other.scopes.iter();
        'outer: for mine in self.scopes.iter() {
            for t in theirs.by_ref() {
                match (**t).cmp(&**mine) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => continue 'outer,
                    std::cmp::Ordering::Greater => return false,
                }
            }
            return false;
        }
        true
    }

    /// Whether the two sets share at least one scope.
    pub fn intersects(&self, other: &ScopeSet) -> bool {
        let (mut a, mut b) = (self.scopes.iter().peekable(), other.scopes.iter().peekable());
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            match x.cmp(y) {
                std::cmp::Ordering::Less => {
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    b.next();
                }
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }

    /// The scopes in both sets. Returns a clone of `self` without allocating when
    /// `self` is a subset of `other`.
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        if self.is_subset(other) {
            return self.clone();
        }
        if other.is_subset(self) {
            return other.clone();
        }
        let mut out = Vec::new();
        let (mut a, mut b) = (self.scopes.iter().peekable(), other.scopes.iter().peekable());
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            match x.cmp(y) {
                std::cmp::Ordering::Less => {
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    out.push((*x).clone());
                    a.next();
                    b.next();
                }
            }
        }
        Self::from_sorted(out)
    }

    /// The scopes of `self` that are not in `other` (for example, the scopes a
    /// request needs that the client was not granted).
    pub fn difference(&self, other: &ScopeSet) -> ScopeSet {
        if self.is_subset(other) {
            return Self::empty();
        }
        Self::from_sorted(
            self.scopes
                .iter()
                .filter(|s| !other.contains(s))
                .cloned()
                .collect(),
        )
    }

    /// The scopes in either set.
    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        if other.is_subset(self) {
            return self.clone();
        }
        if self.is_subset(other) {
            return other.clone();
        }
        Self::from_unsorted(self.scopes.iter().chain(other.scopes.iter()).cloned().collect())
    }
}

impl fmt::Display for ScopeSet {
    /// The space-delimited form of RFC 6749 §3.3.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl std::str::FromStr for ScopeSet {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'a> IntoIterator for &'a ScopeSet {
    type Item = &'a str;
    type IntoIter = std::iter::Map<std::slice::Iter<'a, Box<str>>, fn(&'a Box<str>) -> &'a str>;

    fn into_iter(self) -> Self::IntoIter {
        self.scopes.iter().map(|s| &**s)
    }
}

impl Serialize for ScopeSet {
    /// Serialises as a list of strings.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for s in self.iter() {
            seq.serialize_element(s)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    /// Accepts a list of scope strings or one space-delimited string.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScopesVisitor;

        impl<'de> Visitor<'de> for ScopesVisitor {
            type Value = ScopeSet;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of scopes or a space-delimited scope string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScopeSet, E> {
                ScopeSet::parse(v).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ScopeSet, A::Error> {
                let mut scopes = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    validate_scope(&s).map_err(de::Error::custom)?;
                    scopes.push(s.into_boxed_str());
                }
                Ok(ScopeSet::from_unsorted(scopes))
            }
        }

        deserializer.deserialize_any(ScopesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).expect("valid scopes")
    }

    #[test]
    fn parses_sorts_and_dedups() {
        let s = set("  b a  b c ");
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(s.to_string(), "a b c");
        assert!(set("").is_empty());
    }

    #[test]
    fn rejects_invalid_characters() {
        for bad in ["a\"b", "a\\b", "tab\there", "caf\u{e9}", "nul\u{0}"] {
            let err = ScopeSet::parse(bad).expect_err(bad);
            assert!(matches!(err, ScopeError::InvalidCharacter { .. }), "{bad}: {err}");
        }
        assert_eq!(ScopeSet::try_from_iter([""]), Err(ScopeError::Empty));
        // The whole printable range except `"` and `\` is allowed.
        assert!(ScopeSet::parse("!#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~").is_ok());
    }

    #[test]
    fn set_operations() {
        let granted = set("orders:read orders:write inventory:read");
        assert!(set("orders:read inventory:read").is_subset(&granted));
        assert!(!set("orders:read admin").is_subset(&granted));
        assert!(ScopeSet::empty().is_subset(&granted));
        assert_eq!(
            granted.intersection(&set("admin orders:write")),
            set("orders:write")
        );
        assert_eq!(set("admin orders:write").difference(&granted), set("admin"));
        assert!(granted.intersects(&set("x inventory:read")));
        assert!(!granted.intersects(&set("x y")));
        assert_eq!(set("a").union(&set("b")), set("a b"));
    }

    #[test]
    fn serde_round_trip() {
        let s = set("b a");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["a","b"]"#);
        assert_eq!(serde_json::from_str::<ScopeSet>(&json).unwrap(), s);
        assert_eq!(serde_json::from_str::<ScopeSet>(r#""a b""#).unwrap(), s);
        assert!(serde_json::from_str::<ScopeSet>(r#"["a b"]"#).is_err());
    }

    fn scope_token() -> impl Strategy<Value = String> {
        "[a-d]{1,2}"
    }

    proptest! {
        #[test]
        fn operations_agree_with_btreeset(a in proptest::collection::vec(scope_token(), 0..6),
                                          b in proptest::collection::vec(scope_token(), 0..6)) {
            use std::collections::BTreeSet;
            let (sa, sb) = (ScopeSet::try_from_iter(&a).unwrap(), ScopeSet::try_from_iter(&b).unwrap());
            let (ba, bb): (BTreeSet<_>, BTreeSet<_>) = (a.iter().cloned().collect(), b.iter().cloned().collect());
            prop_assert_eq!(sa.is_subset(&sb), ba.is_subset(&bb));
            prop_assert_eq!(sa.intersects(&sb), !ba.is_disjoint(&bb));
            let inter: Vec<_> = ba.intersection(&bb).cloned().collect();
            let got = sa.intersection(&sb);
            prop_assert_eq!(got.iter().collect::<Vec<_>>(), inter.iter().map(String::as_str).collect::<Vec<_>>());
            let diff: Vec<_> = ba.difference(&bb).cloned().collect();
            let got = sa.difference(&sb);
            prop_assert_eq!(got.iter().collect::<Vec<_>>(), diff.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = ScopeSet::parse(&s);
        }
    }
}
