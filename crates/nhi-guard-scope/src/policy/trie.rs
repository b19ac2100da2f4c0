//! The segment trie a policy compiles into, and the matching of a request against it.

use std::sync::Arc;

use http::Method;

use super::pattern::Segment;
use super::{Methods, Policy, PolicyError, PolicyErrorKind};

const NONE: u32 = u32::MAX;
/// The standard methods, in the order of [`Slot::methods`].
static STANDARD: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

#[inline]
pub(super) fn method_index(m: &Method) -> Option<usize> {
    // Standard methods compare as enum tags; GET and POST (the common cases, and
    // every gRPC call) are found first.
    STANDARD.iter().position(|s| s == m)
}

// The keys of wide literal nodes are the policy's own path segments: an unkeyed hash is safe
// and several times faster than SipHash.
type FxMap = std::collections::HashMap<Box<str>, u32, nhi_guard_core::hash::FxBuildHasher>;

/// Rules ending at one node: per method, and for any method.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    methods: [u32; 9],
    explicit_head: bool,
    other: Vec<(Method, u32)>,
    any: u32,
    labels: Vec<(Option<Method>, Arc<str>)>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            methods: [NONE; 9],
            explicit_head: false,
            other: Vec::new(),
            any: NONE,
            labels: Vec::new(),
        }
    }
}

impl Slot {
    pub(super) fn insert(&mut self, methods: &Methods, id: u32, label: &Arc<str>) -> Result<(), PolicyError> {
        let conflict = |other: &Arc<str>, on: &str| {
            PolicyError::new(
                PolicyErrorKind::Conflict,
                label,
                format!("conflicts with rule `{other}`: equally specific, both match {on}"),
            )
        };
        match &methods.0 {
            None => {
                if let Some((_, other)) = self.labels.iter().find(|(m, _)| m.is_none()) {
                    return Err(conflict(other, "any method"));
                }
                self.any = id;
                self.labels.push((None, label.clone()));
            }
            Some(ms) => {
                for m in ms {
                    if let Some((_, other)) = self.labels.iter().find(|(x, _)| x.as_ref() == Some(m)) {
                        return Err(conflict(other, m.as_str()));
                    }
                    match method_index(m) {
                        Some(i) => self.methods[i] = id,
                        None => self.other.push((m.clone(), id)),
                    }
                    if *m == Method::HEAD {
                        self.explicit_head = true;
                    }
                    self.labels.push((Some(m.clone()), label.clone()));
                }
            }
        }
        Ok(())
    }

    /// Lets `GET` rules cover `HEAD` when no rule names `HEAD`.
    pub(super) fn finish(&mut self) {
        if !self.explicit_head {
            self.methods[1] = self.methods[0];
        }
    }

    #[inline]
    fn get(&self, index: Option<usize>, method: &Method) -> Option<u32> {
        let id = match index {
            Some(i) => self.methods[i],
            None => self
                .other
                .iter()
                .find(|(m, _)| m == method)
                .map_or(NONE, |(_, id)| *id),
        };
        if id != NONE {
            Some(id)
        } else if self.any != NONE {
            Some(self.any)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Node {
    /// Literal children (build order).
    pub(super) literals: Vec<(Box<str>, u32)>,
    /// The same, hashed, for nodes with many literal children.
    pub(super) wide: Option<FxMap>,
    param: Option<u32>,
    pub(super) exact: Slot,
    pub(super) wildcard: Slot,
}

impl Node {
    #[inline]
    fn literal(&self, seg: &str) -> Option<u32> {
        match &self.wide {
            Some(map) => map.get(seg).copied(),
            None => self.literals.iter().find(|(l, _)| &**l == seg).map(|(_, n)| *n),
        }
    }
}

impl Policy {
    pub(super) fn slot_mut(&mut self, segments: &[Segment<'_>]) -> &mut Slot {
        let mut node = 0usize;
        for seg in segments {
            let next = match seg {
                Segment::Wildcard => return &mut self.nodes[node].wildcard,
                Segment::Literal(text) => self.nodes[node]
                    .literals
                    .iter()
                    .find(|(l, _)| &**l == *text)
                    .map(|(_, n)| *n),
                Segment::Param => self.nodes[node].param,
            };
            node = match next {
                Some(n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(Node::default());
                    let id = u32::try_from(n).unwrap_or(u32::MAX);
                    match seg {
                        Segment::Literal(text) => self.nodes[node].literals.push(((*text).into(), id)),
                        _ => self.nodes[node].param = Some(id),
                    }
                    n
                }
            };
        }
        &mut self.nodes[node].exact
    }

    pub(super) fn walk(
        &self,
        node: u32,
        rest: Option<&str>,
        index: Option<usize>,
        method: &Method,
    ) -> Option<u32> {
        let n = &self.nodes[node as usize];
        match rest {
            None => {
                if let Some(id) = n.exact.get(index, method) {
                    return Some(id);
                }
            }
            Some(rest) => {
                // Segments are short: a byte scan beats memchr's set-up.
                let (seg, tail) = match rest.bytes().position(|b| b == b'/') {
                    Some(i) => (&rest[..i], rest.get(i + 1..)),
                    None => (rest, None),
                };
                if let Some(child) = n.literal(seg)
                    && let Some(id) = self.walk(child, tail, index, method)
                {
                    return Some(id);
                }
                if !seg.is_empty()
                    && let Some(child) = n.param
                    && let Some(id) = self.walk(child, tail, index, method)
                {
                    return Some(id);
                }
            }
        }
        n.wildcard.get(index, method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Require;

    fn pattern<'a>(p: &'a Policy, m: Method, path: &str) -> Option<&'a str> {
        p.find(&m, path).map(|r| r.label())
    }

    #[test]
    fn most_specific_rule_wins_whatever_the_order() {
        let rules = [
            ("/orders/export", Methods::from(Method::GET)),
            ("/orders/{id}", Methods::from(Method::GET)),
            ("/orders/{id}", Methods::ANY),
            ("/orders/*", Methods::ANY),
            ("/orders/{id}/items/{item}", Methods::from(Method::GET)),
            ("/*", Methods::ANY),
        ];
        for rotation in 0..rules.len() {
            let mut b = Policy::builder();
            for i in 0..rules.len() {
                let (p, m) = &rules[(i + rotation) % rules.len()];
                b = b.rule(m.clone(), *p, Require::authenticated());
            }
            let p = b.build().expect("valid");
            assert_eq!(
                pattern(&p, Method::GET, "/orders/export"),
                Some("GET /orders/export")
            );
            assert_eq!(
                pattern(&p, Method::POST, "/orders/export"),
                Some("* /orders/{id}")
            );
            assert_eq!(pattern(&p, Method::GET, "/orders/7"), Some("GET /orders/{id}"));
            assert_eq!(pattern(&p, Method::HEAD, "/orders/7"), Some("GET /orders/{id}"));
            assert_eq!(pattern(&p, Method::DELETE, "/orders/7"), Some("* /orders/{id}"));
            assert_eq!(
                pattern(&p, Method::GET, "/orders/7/items/1"),
                Some("GET /orders/{id}/items/{item}")
            );
            // Backtracks from the `{id}` branch to the wildcard.
            assert_eq!(
                pattern(&p, Method::POST, "/orders/7/items/1"),
                Some("* /orders/*")
            );
            assert_eq!(pattern(&p, Method::GET, "/orders"), Some("* /orders/*"));
            assert_eq!(pattern(&p, Method::GET, "/orders/"), Some("* /orders/*"));
            assert_eq!(pattern(&p, Method::GET, "/customers/1"), Some("* /*"));
            assert_eq!(pattern(&p, Method::GET, "/"), Some("* /*"));
        }
    }

    #[test]
    fn literal_beats_param_at_the_first_difference() {
        let p = Policy::builder()
            .get("/{tenant}/orders", Require::all_of("a"))
            .get("/acme/{resource}", Require::all_of("b"))
            .build()
            .expect("valid");
        assert_eq!(
            pattern(&p, Method::GET, "/acme/orders"),
            Some("GET /acme/{resource}")
        );
        assert_eq!(
            pattern(&p, Method::GET, "/other/orders"),
            Some("GET /{tenant}/orders")
        );
        // The literal branch fails deeper down: back to the param branch.
        let p = Policy::builder()
            .get("/acme/x/y", Require::all_of("b"))
            .get("/{tenant}/x/z", Require::all_of("a"))
            .build()
            .expect("valid");
        assert_eq!(pattern(&p, Method::GET, "/acme/x/z"), Some("GET /{tenant}/x/z"));
    }

    #[test]
    fn strict_segments() {
        let p = Policy::builder()
            .get("/orders", Require::all_of("a"))
            .get("/orders/{id}", Require::all_of("a"))
            .get("/", Require::all_of("a"))
            .build()
            .expect("valid");
        assert_eq!(pattern(&p, Method::GET, "/"), Some("GET /"));
        assert_eq!(pattern(&p, Method::GET, "/orders"), Some("GET /orders"));
        assert_eq!(
            pattern(&p, Method::GET, "/orders/"),
            None,
            "param needs a non-empty segment"
        );
        assert_eq!(pattern(&p, Method::GET, "//orders"), None);
        assert_eq!(pattern(&p, Method::GET, "/ORDERS"), None);
        assert_eq!(pattern(&p, Method::GET, "/%6Frders"), None);
        assert_eq!(pattern(&p, Method::GET, "/orders/1/2"), None);
        assert_eq!(pattern(&p, Method::GET, "*"), None);
        assert_eq!(pattern(&p, Method::GET, ""), None);
    }

    #[test]
    fn methods_and_head() {
        let p = Policy::builder()
            .get("/a", Require::all_of("r"))
            .rule([Method::PUT, Method::PATCH], "/a", Require::all_of("w"))
            .rule(
                Method::from_bytes(b"PURGE").expect("valid"),
                "/a",
                Require::all_of("p"),
            )
            .get("/b", Require::all_of("r"))
            .rule(Method::HEAD, "/b", Require::public())
            .build()
            .expect("valid");
        assert_eq!(pattern(&p, Method::HEAD, "/a"), Some("GET /a"));
        assert_eq!(pattern(&p, Method::PATCH, "/a"), Some("PUT,PATCH /a"));
        assert_eq!(
            pattern(&p, Method::from_bytes(b"PURGE").expect("valid"), "/a"),
            Some("PURGE /a")
        );
        assert_eq!(pattern(&p, Method::POST, "/a"), None);
        assert_eq!(pattern(&p, Method::HEAD, "/b"), Some("HEAD /b"));
    }

    #[test]
    fn wide_nodes_use_the_hashed_lookup() {
        let mut b = Policy::builder();
        for i in 0..100 {
            b = b.get(format!("/svc{i}/items/{{id}}"), Require::all_of("a"));
        }
        let p = b.build().expect("valid");
        for i in 0..100 {
            let label = format!("GET /svc{i}/items/{{id}}");
            assert_eq!(
                pattern(&p, Method::GET, &format!("/svc{i}/items/9")),
                Some(label.as_str())
            );
        }
        assert_eq!(pattern(&p, Method::GET, "/svc100/items/9"), None);
    }

    mod reference {
        //! A brute-force statement of the precedence rules, to check the trie against.

        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        struct Spec {
            segs: Vec<&'static str>,
            wildcard: bool,
            method: Option<Method>,
        }

        impl Spec {
            fn pattern(&self) -> String {
                let mut p: String = self.segs.iter().map(|s| format!("/{s}")).collect();
                if self.wildcard {
                    p.push_str("/*");
                }
                if p.is_empty() { "/".into() } else { p }
            }

            /// Rank of each position: literal 3, param 2, end 1, wildcard 0.
            fn ranks(&self) -> Vec<u8> {
                let mut r: Vec<u8> = self
                    .segs
                    .iter()
                    .map(|s| if s.starts_with('{') { 2 } else { 3 })
                    .collect();
                r.push(if self.wildcard { 0 } else { 1 });
                r
            }

            fn matches(&self, method: &Method, path: &[&str]) -> bool {
                if self.method.as_ref().is_some_and(|m| m != method) {
                    return false;
                }
                if path.len() < self.segs.len() || (!self.wildcard && path.len() != self.segs.len()) {
                    return false;
                }
                self.segs
                    .iter()
                    .zip(path)
                    .all(|(s, p)| if s.starts_with('{') { !p.is_empty() } else { s == p })
            }
        }

        fn spec() -> impl Strategy<Value = Spec> {
            (
                proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("{p}")], 0..4),
                any::<bool>(),
                prop_oneof![Just(None), Just(Some(Method::GET)), Just(Some(Method::POST))],
            )
                .prop_map(|(mut segs, wildcard, method)| {
                    // Capture names must differ within a pattern.
                    let mut n = 0;
                    for s in &mut segs {
                        if *s == "{p}" {
                            *s = ["{p0}", "{p1}", "{p2}", "{p3}"][n];
                            n += 1;
                        }
                    }
                    // "/" alone is the pattern of zero segments plus nothing: keep
                    // the empty-pattern case as the wildcard root only.
                    let wildcard = wildcard || segs.is_empty();
                    Spec {
                        segs,
                        wildcard,
                        method,
                    }
                })
        }

        proptest! {
            #[test]
            fn trie_agrees_with_the_stated_precedence(
                specs in proptest::collection::vec(spec(), 1..8),
                random in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c"), Just("")], 0..5),
                from_spec in proptest::option::of((any::<proptest::sample::Index>(), 0usize..3)),
                post in any::<bool>(),
            ) {
                // Half the paths are random, half instantiate one of the patterns
                // (captures as `c`, the wildcard as 0 to 2 more segments), so that
                // several rules compete for them.
                let path: Vec<&str> = match from_spec {
                    None => random,
                    Some((i, extra)) => {
                        let s = &specs[i.index(specs.len())];
                        let mut p: Vec<&str> = s.segs.iter().map(|x| if x.starts_with('{') { "c" } else { *x }).collect();
                        if s.wildcard {
                            p.extend(std::iter::repeat_n("a", extra));
                        }
                        p
                    }
                };
                let method = if post { Method::POST } else { Method::GET };
                let mut b = Policy::builder();
                for (i, s) in specs.iter().enumerate() {
                    let methods = s.method.clone().map_or(Methods::ANY, Methods::from);
                    b = b.rule(methods, s.pattern(), Require::all_of(&format!("s{i}")));
                }
                let Ok(policy) = b.build() else {
                    // Conflicts are covered elsewhere; two identical shapes with
                    // overlapping methods must be what failed.
                    let clash = specs.iter().enumerate().any(|(i, a)| specs[..i].iter().any(|b| {
                        a.ranks() == b.ranks()
                            && a.segs.iter().zip(&b.segs).all(|(x, y)| x == y || (x.starts_with('{') && y.starts_with('{')))
                            && a.method == b.method
                    }));
                    prop_assert!(clash);
                    return Ok(());
                };
                let path_str = format!("/{}", path.join("/"));
                let segments: Vec<&str> = path_str[1..].split('/').collect();
                let expected = specs
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.matches(&method, &segments))
                    .max_by(|(_, a), (_, b)| a.ranks().cmp(&b.ranks()).then(a.method.is_some().cmp(&b.method.is_some())))
                    .map(|(i, _)| format!("s{i}"));
                let got = policy
                    .find(&method, &path_str)
                    .map(|r| r.access().required().to_string());
                prop_assert_eq!(got, expected, "path {}", path_str);
            }
        }
    }
}
