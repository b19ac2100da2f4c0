//! The segment trie a route table compiles into, and the matching of a request
//! against it.

use std::sync::Arc;

use http::Method;

use super::Methods;
use super::error::{RouteError, RouteErrorKind};
use super::pattern::Segment;

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

// The keys of wide literal nodes are the table's own path segments: an unkeyed hash
// is safe and several times faster than SipHash.
type FxMap = std::collections::HashMap<Box<str>, u32, crate::hash::FxBuildHasher>;

/// Routes ending at one node: per method, and for any method.
#[derive(Debug, Clone)]
struct Slot {
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
    fn insert(&mut self, methods: &Methods, id: u32, label: &Arc<str>) -> Result<(), RouteError> {
        let conflict = |other: &Arc<str>, on: &str| {
            RouteError::new(
                RouteErrorKind::Conflict,
                label,
                format!("conflicts with route `{other}`: equally specific, both match {on}"),
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

    /// Lets `GET` routes cover `HEAD` when no route names `HEAD`.
    fn finish(&mut self) {
        if !self.explicit_head {
            self.methods[1] = self.methods[0];
        }
        self.labels = Vec::new();
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
struct Node {
    /// Literal children (build order).
    literals: Vec<(Box<str>, u32)>,
    /// The same, hashed, for nodes with many literal children.
    wide: Option<FxMap>,
    param: Option<u32>,
    exact: Slot,
    wildcard: Slot,
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

/// The compiled trie: node 0 is the root.
#[derive(Debug, Clone)]
pub(super) struct Trie {
    nodes: Vec<Node>,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![Node::default()],
        }
    }
}

impl Trie {
    /// Adds route `id` for `methods` at the node `segments` lead to; an equally
    /// specific route already there for an overlapping method is an error naming both.
    pub(super) fn insert(
        &mut self,
        segments: &[Segment<'_>],
        methods: &Methods,
        id: u32,
        label: &Arc<str>,
    ) -> Result<(), RouteError> {
        let mut node = 0usize;
        for seg in segments {
            let next = match seg {
                Segment::Wildcard => return self.nodes[node].wildcard.insert(methods, id, label),
                Segment::Literal(text) => self.nodes[node]
                    .literals
                    .iter()
                    .find(|(l, _)| &**l == *text)
                    .map(|(_, n)| *n),
                Segment::Param(_) => self.nodes[node].param,
            };
            node = match next {
                Some(n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(Node::default());
                    let child = u32::try_from(n).unwrap_or(u32::MAX);
                    match seg {
                        Segment::Literal(text) => self.nodes[node].literals.push(((*text).into(), child)),
                        _ => self.nodes[node].param = Some(child),
                    }
                    n
                }
            };
        }
        self.nodes[node].exact.insert(methods, id, label)
    }

    /// Ends the build: hashed look-ups for wide nodes, `HEAD` served by `GET`.
    pub(super) fn finish(&mut self) {
        for node in &mut self.nodes {
            if node.literals.len() > 4 {
                node.wide = Some(node.literals.iter().cloned().collect());
            }
            node.exact.finish();
            node.wildcard.finish();
        }
    }

    /// The most specific route for `method` on `path`.
    #[inline]
    pub(super) fn find(&self, method: &Method, path: &str) -> Option<u32> {
        let rest = path.strip_prefix('/')?;
        self.walk(0, Some(rest), method_index(method), method)
    }

    fn walk(&self, node: u32, rest: Option<&str>, index: Option<usize>, method: &Method) -> Option<u32> {
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

    /// The route declared with the same shape as a router's template (`{name}` one
    /// segment, `{*name}` or `*` the rest; capture names do not matter), for
    /// `method`; `None` when the table has no pattern of that shape for it.
    pub(super) fn find_template(&self, method: &Method, template: &str) -> Option<u32> {
        let rest = template.strip_prefix('/')?;
        let index = method_index(method);
        let mut node = &self.nodes[0];
        for seg in rest.split('/') {
            if seg == "*" || seg.starts_with("{*") {
                return node.wildcard.get(index, method);
            }
            let next = if seg.starts_with('{') && seg.ends_with('}') {
                node.param
            } else {
                node.literal(seg)
            };
            node = &self.nodes[next? as usize];
        }
        node.exact.get(index, method)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Methods, Route, Routes};
    use http::Method;

    fn pattern(p: &Routes, m: Method, path: &str) -> Option<String> {
        p.find(&m, path).map(|id| p[id].label().to_owned())
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
            let mut b = Routes::builder();
            for i in 0..rules.len() {
                let (p, m) = &rules[(i + rotation) % rules.len()];
                b = b.route(Route::new(m.clone(), *p));
            }
            let p = b.build().expect("valid");
            assert_eq!(
                pattern(&p, Method::GET, "/orders/export"),
                Some("GET /orders/export".to_owned())
            );
            assert_eq!(
                pattern(&p, Method::POST, "/orders/export"),
                Some("* /orders/{id}".to_owned())
            );
            assert_eq!(
                pattern(&p, Method::GET, "/orders/7"),
                Some("GET /orders/{id}".to_owned())
            );
            assert_eq!(
                pattern(&p, Method::HEAD, "/orders/7"),
                Some("GET /orders/{id}".to_owned())
            );
            assert_eq!(
                pattern(&p, Method::DELETE, "/orders/7"),
                Some("* /orders/{id}".to_owned())
            );
            assert_eq!(
                pattern(&p, Method::GET, "/orders/7/items/1"),
                Some("GET /orders/{id}/items/{item}".to_owned())
            );
            // Backtracks from the `{id}` branch to the wildcard.
            assert_eq!(
                pattern(&p, Method::POST, "/orders/7/items/1"),
                Some("* /orders/*".to_owned())
            );
            assert_eq!(
                pattern(&p, Method::GET, "/orders"),
                Some("* /orders/*".to_owned())
            );
            assert_eq!(
                pattern(&p, Method::GET, "/orders/"),
                Some("* /orders/*".to_owned())
            );
            assert_eq!(pattern(&p, Method::GET, "/customers/1"), Some("* /*".to_owned()));
            assert_eq!(pattern(&p, Method::GET, "/"), Some("* /*".to_owned()));
        }
    }

    #[test]
    fn literal_beats_param_at_the_first_difference() {
        let p = Routes::builder()
            .route(Route::get("/{tenant}/orders"))
            .route(Route::get("/acme/{resource}"))
            .build()
            .expect("valid");
        assert_eq!(
            pattern(&p, Method::GET, "/acme/orders"),
            Some("GET /acme/{resource}".to_owned())
        );
        assert_eq!(
            pattern(&p, Method::GET, "/other/orders"),
            Some("GET /{tenant}/orders".to_owned())
        );
        // The literal branch fails deeper down: back to the param branch.
        let p = Routes::builder()
            .route(Route::get("/acme/x/y"))
            .route(Route::get("/{tenant}/x/z"))
            .build()
            .expect("valid");
        assert_eq!(
            pattern(&p, Method::GET, "/acme/x/z"),
            Some("GET /{tenant}/x/z".to_owned())
        );
    }

    #[test]
    fn strict_segments() {
        let p = Routes::builder()
            .route(Route::get("/orders"))
            .route(Route::get("/orders/{id}"))
            .route(Route::get("/"))
            .build()
            .expect("valid");
        assert_eq!(pattern(&p, Method::GET, "/"), Some("GET /".to_owned()));
        assert_eq!(
            pattern(&p, Method::GET, "/orders"),
            Some("GET /orders".to_owned())
        );
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
        let p = Routes::builder()
            .route(Route::get("/a"))
            .route(Route::new([Method::PUT, Method::PATCH], "/a"))
            .route(Route::new(Method::from_bytes(b"PURGE").expect("valid"), "/a"))
            .route(Route::get("/b"))
            .route(Route::new(Method::HEAD, "/b"))
            .build()
            .expect("valid");
        assert_eq!(pattern(&p, Method::HEAD, "/a"), Some("GET /a".to_owned()));
        assert_eq!(pattern(&p, Method::PATCH, "/a"), Some("PUT,PATCH /a".to_owned()));
        assert_eq!(
            pattern(&p, Method::from_bytes(b"PURGE").expect("valid"), "/a"),
            Some("PURGE /a".to_owned())
        );
        assert_eq!(pattern(&p, Method::POST, "/a"), None);
        assert_eq!(pattern(&p, Method::HEAD, "/b"), Some("HEAD /b".to_owned()));
    }

    #[test]
    fn wide_nodes_use_the_hashed_lookup() {
        let mut b = Routes::builder();
        for i in 0..100 {
            b = b.route(Route::get(format!("/svc{i}/items/{{id}}")));
        }
        let p = b.build().expect("valid");
        for i in 0..100 {
            let label = format!("GET /svc{i}/items/{{id}}");
            assert_eq!(pattern(&p, Method::GET, &format!("/svc{i}/items/9")), Some(label));
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
                let mut b = Routes::builder();
                for s in &specs {
                    let methods = s.method.clone().map_or(Methods::ANY, Methods::from);
                    b = b.route(Route::new(methods, s.pattern()));
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
                    .map(|(i, _)| i);
                let got = policy.find(&method, &path_str).map(|id| id.index());
                prop_assert_eq!(got, expected, "path {}", path_str);
            }
        }
    }
}
