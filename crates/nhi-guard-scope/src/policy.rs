//! The route policy table: which scopes each method and path requires, compiled
//! into a segment trie.
//!
//! # Patterns
//!
//! A pattern starts with `/` and is split at every `/` into segments:
//!
//! - a literal segment (`orders`, `grpc.health.v1.Health`, or empty as in the
//!   trailing slash of `/orders/`) matches exactly that text, byte for byte, on the
//!   raw (not percent-decoded) path, as axum's router does;
//! - `{name}` matches any one non-empty segment;
//! - `*` or `{*name}`, only as the last segment, matches the rest of the path: zero
//!   or more segments, so `/admin/*` covers `/admin`, `/admin/` and `/admin/a/b`.
//!
//! Literal text and captures cannot share a segment (`/v{n}` is an error), and a
//! pattern has at most [`MAX_SEGMENTS`] segments.
//!
//! # Precedence
//!
//! Among the rules whose method and pattern match a request, the most specific one
//! decides:
//!
//! 1. patterns are compared segment by segment from the left; at the first position
//!    where they differ, a literal beats a `{param}`, which beats the wildcard, and
//!    a pattern that ends there beats one that continues with the wildcard;
//! 2. for the same pattern, a rule naming the request's method beats a rule for any
//!    method. A `GET` rule also covers `HEAD` unless a rule names `HEAD`.
//!
//! Two rules are *equally specific* when their patterns have the same shape (the
//! same literals and captures at the same positions; capture names do not matter)
//! and they are both method-specific or both for any method. Equally specific rules
//! that can match the same request (their methods overlap) are a build error
//! naming both. So for every request at most one rule is the most specific, and the
//! order in which rules are added never matters.
//!
//! # Unmatched routes
//!
//! A request no rule matches gets the [`Fallback`]: denied by default.
//!
//! ```
//! use http::Method;
//! use nhi_guard_scope::{Policy, Require};
//!
//! let policy = Policy::builder()
//!     .get("/orders/{id}", Require::all_of("orders:read"))
//!     .get("/orders/export", Require::all_of("orders:read orders:export"))
//!     .any("/orders/*", Require::all_of("orders:admin"))
//!     .public(Method::GET, "/health")
//!     .build()
//!     .unwrap();
//! assert_eq!(policy.find(&Method::GET, "/orders/42").unwrap().pattern(), Some("/orders/{id}"));
//! assert_eq!(policy.find(&Method::GET, "/orders/export").unwrap().pattern(), Some("/orders/export"));
//! assert_eq!(policy.find(&Method::DELETE, "/orders/42").unwrap().pattern(), Some("/orders/*"));
//! assert!(policy.find(&Method::GET, "/customers").is_none());
//! ```

use std::fmt;
use std::sync::Arc;

use http::Method;
use nhi_guard_core::ScopeSet;
use nhi_guard_core::scope::ScopeError;

/// The most segments a pattern may have. It bounds the matcher's work per request.
pub const MAX_SEGMENTS: usize = 32;

/// What a route requires of the caller.
///
/// Scope lists are space-delimited (as in OAuth `scope` strings) and validated when
/// the policy or layer is built.
///
/// ```
/// use nhi_guard_scope::Require;
///
/// // orders:read, and at least one of orders:write / orders:admin
/// let r = Require::all_of("orders:read").and_any_of("orders:write orders:admin");
/// assert_eq!(r.to_string(), "all_of(orders:read) any_of(orders:admin orders:write)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Require {
    spec: Spec,
    name: Option<Arc<str>>,
}

#[derive(Clone, PartialEq, Eq)]
enum Spec {
    Public,
    Authenticated,
    Scopes {
        all_of: Result<ScopeSet, ScopeError>,
        any_of: Result<ScopeSet, ScopeError>,
    },
}

impl Require {
    /// No principal needed: anyone may call the route.
    pub fn public() -> Self {
        Self {
            spec: Spec::Public,
            name: None,
        }
    }

    /// Any authenticated principal may call the route, whatever its scopes.
    pub fn authenticated() -> Self {
        Self {
            spec: Spec::Authenticated,
            name: None,
        }
    }

    /// The principal must hold every one of `scopes` (space-delimited).
    pub fn all_of(scopes: &str) -> Self {
        Self {
            spec: Spec::Scopes {
                all_of: ScopeSet::parse(scopes),
                any_of: Ok(ScopeSet::empty()),
            },
            name: None,
        }
    }

    /// The principal must hold at least one of `scopes` (space-delimited).
    pub fn any_of(scopes: &str) -> Self {
        Self {
            spec: Spec::Scopes {
                all_of: Ok(ScopeSet::empty()),
                any_of: ScopeSet::parse(scopes),
            },
            name: None,
        }
    }

    /// Also requires every one of `scopes`.
    #[must_use]
    pub fn and_all_of(mut self, scopes: &str) -> Self {
        let extra = ScopeSet::parse(scopes);
        self.spec = match self.spec {
            Spec::Scopes { all_of, any_of } => Spec::Scopes {
                all_of: all_of.and_then(|a| extra.map(|e| a.union(&e))),
                any_of,
            },
            _ => Spec::Scopes {
                all_of: extra,
                any_of: Ok(ScopeSet::empty()),
            },
        };
        self
    }

    /// Also requires at least one of `scopes` (replacing an earlier `any_of` list).
    #[must_use]
    pub fn and_any_of(mut self, scopes: &str) -> Self {
        let any = ScopeSet::parse(scopes);
        self.spec = match self.spec {
            Spec::Scopes { all_of, .. } => Spec::Scopes { all_of, any_of: any },
            _ => Spec::Scopes {
                all_of: Ok(ScopeSet::empty()),
                any_of: any,
            },
        };
        self
    }

    /// Names the requirement; the name is recorded as the matched rule in the
    /// security context instead of `METHODS pattern`.
    #[must_use]
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn compile(&self, label: Arc<str>, route: Option<Arc<str>>) -> Result<Rule, PolicyError> {
        let access = match &self.spec {
            Spec::Public => Access::Public,
            Spec::Authenticated => Access::Authenticated,
            Spec::Scopes { all_of, any_of } => {
                let all_of = all_of
                    .clone()
                    .map_err(|e| PolicyError::new(PolicyErrorKind::InvalidScope, &label, e.to_string()))?;
                let any_of = any_of
                    .clone()
                    .map_err(|e| PolicyError::new(PolicyErrorKind::InvalidScope, &label, e.to_string()))?;
                if all_of.is_empty() && any_of.is_empty() {
                    return Err(PolicyError::new(
                        PolicyErrorKind::EmptyRequirement,
                        &label,
                        "requires no scope; say Require::authenticated() or Require::public()".into(),
                    ));
                }
                let required = all_of.union(&any_of);
                Access::Scopes {
                    all_of,
                    any_of,
                    required,
                }
            }
        };
        Ok(Rule {
            label: self.name.clone().unwrap_or(label),
            route,
            access,
        })
    }
}

impl fmt::Display for Require {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spec {
            Spec::Public => f.write_str("public"),
            Spec::Authenticated => f.write_str("authenticated"),
            Spec::Scopes { all_of, any_of } => {
                let mut first = true;
                for (word, set) in [("all_of", all_of), ("any_of", any_of)] {
                    match set {
                        Ok(s) if s.is_empty() => continue,
                        Ok(s) => write!(f, "{}{word}({s})", if first { "" } else { " " })?,
                        Err(_) => write!(f, "{}{word}(<invalid>)", if first { "" } else { " " })?,
                    }
                    first = false;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Require {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Require({self})")
    }
}

/// What a compiled rule demands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Anyone.
    Public,
    /// Any authenticated principal.
    Authenticated,
    /// A principal holding all of `all_of` and, when `any_of` is not empty, at
    /// least one of `any_of`.
    Scopes {
        /// Scopes that must all be held.
        all_of: ScopeSet,
        /// Scopes of which one must be held (ignored when empty).
        any_of: ScopeSet,
        /// `all_of ∪ any_of`: what the challenge's `scope` attribute names.
        required: ScopeSet,
    },
}

impl Access {
    /// Checks `granted` against this access: `Ok` or the missing scopes (for an
    /// unmet `any_of`, the whole `any_of` list is missing). Allocates nothing when
    /// the scopes are held.
    ///
    /// # Errors
    /// The scopes that are missing.
    pub fn check(&self, granted: &ScopeSet) -> Result<(), ScopeSet> {
        match self {
            Self::Public | Self::Authenticated => Ok(()),
            Self::Scopes { all_of, any_of, .. } => {
                let any_ok = any_of.is_empty() || any_of.intersects(granted);
                let all_ok = all_of.is_subset(granted);
                match (all_ok, any_ok) {
                    (true, true) => Ok(()),
                    (false, true) => Err(all_of.difference(granted)),
                    (true, false) => Err(any_of.clone()),
                    (false, false) => Err(all_of.difference(granted).union(any_of)),
                }
            }
        }
    }

    /// The scopes required (empty for public and authenticated-only access).
    pub fn required(&self) -> &ScopeSet {
        static EMPTY: std::sync::OnceLock<ScopeSet> = std::sync::OnceLock::new();
        match self {
            Self::Scopes { required, .. } => required,
            _ => EMPTY.get_or_init(ScopeSet::empty),
        }
    }
}

/// One compiled rule of a policy (or a per-route requirement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    label: Arc<str>,
    route: Option<Arc<str>>,
    access: Access,
}

impl Rule {
    /// The rule as recorded in the security context: its name if it has one, else
    /// `METHODS pattern` (`GET /orders/{id}`, `* /admin/*`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The pattern, for rules of a [`Policy`] (`None` for per-route requirements).
    pub fn pattern(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// What the rule demands.
    pub fn access(&self) -> &Access {
        &self.access
    }

    pub(crate) fn label_arc(&self) -> &Arc<str> {
        &self.label
    }

    pub(crate) fn route_arc(&self) -> Option<&Arc<str>> {
        self.route.as_ref()
    }
}

/// What happens to a request that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fallback {
    /// Refused: 401 without a principal, 403 `route_not_in_policy` with one.
    #[default]
    Deny,
    /// Any authenticated principal passes; 401 without one.
    Authenticated,
    /// Everything passes, with or without a principal.
    Allow,
}

/// The kind of a [`PolicyError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// A pattern does not parse.
    InvalidPattern,
    /// A scope is not a valid RFC 6749 scope-token.
    InvalidScope,
    /// A scope requirement lists no scope.
    EmptyRequirement,
    /// Two equally specific rules overlap.
    Conflict,
    /// A rule lists no method.
    NoMethod,
}

/// An invalid policy, naming the rule at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    kind: PolicyErrorKind,
    rule: String,
    message: String,
}

impl PolicyError {
    fn new(kind: PolicyErrorKind, rule: &str, message: String) -> Self {
        Self {
            kind,
            rule: rule.to_owned(),
            message,
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> PolicyErrorKind {
        self.kind
    }

    /// The rule at fault (`METHODS pattern`).
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scope policy rule `{}`: {}", self.rule, self.message)
    }
}

impl std::error::Error for PolicyError {}

impl From<PolicyError> for nhi_guard_core::config::ConfigError {
    /// The policy's error as the controls' configuration error (control `scope`,
    /// field `policy`; overlapping rules are a conflict).
    fn from(e: PolicyError) -> Self {
        use nhi_guard_core::config::{ConfigError, ConfigErrorKind};
        let kind = match e.kind {
            PolicyErrorKind::Conflict => ConfigErrorKind::Conflict,
            PolicyErrorKind::NoMethod | PolicyErrorKind::EmptyRequirement => ConfigErrorKind::Missing,
            _ => ConfigErrorKind::Invalid,
        };
        ConfigError::new("scope", "policy", e.to_string()).kind_of(kind)
    }
}

/// The methods a rule applies to: one, several, or any.
///
/// `Method` values, arrays and slices of them convert into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods(Option<Vec<Method>>);

impl Methods {
    /// Every method.
    pub const ANY: Methods = Methods(None);
}

impl From<Method> for Methods {
    fn from(m: Method) -> Self {
        Self(Some(vec![m]))
    }
}

impl<const N: usize> From<[Method; N]> for Methods {
    fn from(m: [Method; N]) -> Self {
        Self(Some(m.to_vec()))
    }
}

impl From<&[Method]> for Methods {
    fn from(m: &[Method]) -> Self {
        Self(Some(m.to_vec()))
    }
}

impl fmt::Display for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("*"),
            Some(ms) => {
                for (i, m) in ms.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(m.as_str())?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone)]
struct RuleSpec {
    methods: Methods,
    pattern: String,
    require: Require,
}

/// Builds a [`Policy`]. Errors surface in [`PolicyBuilder::build`], naming the rule.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PolicyBuilder {
    rules: Vec<RuleSpec>,
    fallback: Fallback,
}

impl PolicyBuilder {
    /// Adds a rule for `methods` on `pattern`.
    pub fn rule(mut self, methods: impl Into<Methods>, pattern: impl Into<String>, require: Require) -> Self {
        self.rules.push(RuleSpec {
            methods: methods.into(),
            pattern: pattern.into(),
            require,
        });
        self
    }

    /// A rule for any method.
    pub fn any(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Methods::ANY, pattern, require)
    }

    /// A `GET` rule (also covering `HEAD`).
    pub fn get(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::GET, pattern, require)
    }

    /// A `POST` rule.
    pub fn post(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::POST, pattern, require)
    }

    /// A `PUT` rule.
    pub fn put(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::PUT, pattern, require)
    }

    /// A `PATCH` rule.
    pub fn patch(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::PATCH, pattern, require)
    }

    /// A `DELETE` rule.
    pub fn delete(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::DELETE, pattern, require)
    }

    /// Declares a public route: no principal needed.
    pub fn public(self, methods: impl Into<Methods>, pattern: impl Into<String>) -> Self {
        self.rule(methods, pattern, Require::public())
    }

    /// A rule for one gRPC method, by its path `/package.Service/Method` (gRPC
    /// calls are `POST`s).
    pub fn grpc(self, path: impl Into<String>, require: Require) -> Self {
        self.rule(Method::POST, path, require)
    }

    /// A rule for every method of a gRPC service (`package.Service`), i.e.
    /// `POST /package.Service/*`.
    pub fn grpc_service(self, service: &str, require: Require) -> Self {
        self.rule(Method::POST, format!("/{service}/*"), require)
    }

    /// What unmatched requests get (default [`Fallback::Deny`]).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// Compiles the policy.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the first invalid rule: a pattern that does not
    /// parse, an invalid or empty scope list, a rule without methods, or two
    /// equally specific rules that overlap (naming both).
    pub fn build(self) -> Result<Policy, PolicyError> {
        let mut policy = Policy {
            nodes: vec![Node::default()],
            rules: Vec::with_capacity(self.rules.len()),
            fallback: self.fallback,
        };
        for spec in &self.rules {
            let label = format!("{} {}", spec.methods, spec.pattern);
            let segments = parse_pattern(&spec.pattern)
                .map_err(|m| PolicyError::new(PolicyErrorKind::InvalidPattern, &label, m))?;
            if matches!(&spec.methods.0, Some(ms) if ms.is_empty()) {
                return Err(PolicyError::new(
                    PolicyErrorKind::NoMethod,
                    &label,
                    "lists no method; use Methods::ANY".into(),
                ));
            }
            let label: Arc<str> = Arc::from(label);
            let rule = spec
                .require
                .compile(label.clone(), Some(Arc::from(spec.pattern.as_str())))?;
            let id = u32::try_from(policy.rules.len()).unwrap_or(u32::MAX);
            policy.rules.push(rule);
            let slot = policy.slot_mut(&segments);
            slot.insert(&spec.methods, id, &label)?;
        }
        for node in &mut policy.nodes {
            if node.literals.len() > 4 {
                node.wide = Some(node.literals.iter().cloned().collect());
            }
            node.exact.finish();
            node.wildcard.finish();
        }
        Ok(policy)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment<'a> {
    Literal(&'a str),
    Param,
    Wildcard,
}

fn parse_pattern(pattern: &str) -> Result<Vec<Segment<'_>>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err("the pattern must start with `/`".into());
    };
    if pattern.contains(['?', '#']) {
        return Err("the pattern must not contain a query or fragment".into());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(format!("the pattern has more than {MAX_SEGMENTS} segments"));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let seg = if *part == "*" {
            Segment::Wildcard
        } else if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (wild, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "`{part}`: a capture needs a name of letters, digits and `_`"
                ));
            }
            if names.contains(&name) {
                return Err(format!("the capture `{name}` appears twice"));
            }
            names.push(name);
            if wild { Segment::Wildcard } else { Segment::Param }
        } else if part.contains(['{', '}', '*']) {
            return Err(format!(
                "`{part}`: captures and wildcards must be whole segments (`{{name}}`, `*`, `{{*name}}`)"
            ));
        } else {
            Segment::Literal(part)
        };
        if seg == Segment::Wildcard && !last {
            return Err("a wildcard may only be the last segment".into());
        }
        out.push(seg);
    }
    Ok(out)
}

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
fn method_index(m: &Method) -> Option<usize> {
    // Standard methods compare as enum tags; GET and POST (the common cases, and
    // every gRPC call) are found first.
    STANDARD.iter().position(|s| s == m)
}

// The keys of wide literal nodes are the policy's own path segments: an unkeyed hash is safe
// and several times faster than SipHash.
type FxMap = std::collections::HashMap<Box<str>, u32, nhi_guard_core::hash::FxBuildHasher>;

/// Rules ending at one node: per method, and for any method.
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
    fn insert(&mut self, methods: &Methods, id: u32, label: &Arc<str>) -> Result<(), PolicyError> {
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
    fn finish(&mut self) {
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

/// A compiled route policy: a segment trie from method and path to the most
/// specific [`Rule`]. Matching allocates nothing.
///
/// See the [module documentation](self) for patterns and precedence.
#[derive(Debug, Clone)]
pub struct Policy {
    nodes: Vec<Node>,
    rules: Vec<Rule>,
    fallback: Fallback,
}

impl Policy {
    /// Starts an empty policy (deny by default).
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What unmatched requests get.
    pub fn fallback(&self) -> Fallback {
        self.fallback
    }

    /// The rules, in the order they were added.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn slot_mut(&mut self, segments: &[Segment<'_>]) -> &mut Slot {
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

    /// The most specific rule for `method` and `path` (the URI path, without the
    /// query), or `None` when no rule matches and the [`Fallback`] applies.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Rule> {
        let rest = path.strip_prefix('/')?;
        let index = method_index(method);
        self.walk(0, Some(rest), index, method)
            .map(|id| &self.rules[id as usize])
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn equally_specific_overlaps_are_build_errors_naming_both() {
        let err = Policy::builder()
            .get("/orders/{id}", Require::all_of("a"))
            .rule(
                [Method::GET, Method::POST],
                "/orders/{order}",
                Require::all_of("b"),
            )
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::Conflict);
        assert_eq!(err.rule(), "GET,POST /orders/{order}");
        assert_eq!(
            err.to_string(),
            "scope policy rule `GET,POST /orders/{order}`: conflicts with rule `GET /orders/{id}`: \
             equally specific, both match GET"
        );
        let err = Policy::builder()
            .any("/a/*", Require::all_of("a"))
            .any("/a/{*rest}", Require::all_of("b"))
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::Conflict);
        assert!(err.to_string().contains("`* /a/*`"), "{err}");
        // Disjoint methods, or different specificity, are fine.
        Policy::builder()
            .get("/orders/{id}", Require::all_of("a"))
            .post("/orders/{order}", Require::all_of("b"))
            .any("/orders/{x}", Require::all_of("c"))
            .build()
            .expect("valid");
    }

    #[test]
    fn invalid_rules_are_build_errors() {
        let cases = [
            ("orders", PolicyErrorKind::InvalidPattern),
            ("/a/*/b", PolicyErrorKind::InvalidPattern),
            ("/a/{*rest}/b", PolicyErrorKind::InvalidPattern),
            ("/v{n}", PolicyErrorKind::InvalidPattern),
            ("/{}", PolicyErrorKind::InvalidPattern),
            ("/{a}/{a}", PolicyErrorKind::InvalidPattern),
            ("/a?b", PolicyErrorKind::InvalidPattern),
        ];
        for (pat, kind) in cases {
            let err = Policy::builder()
                .get(pat, Require::all_of("a"))
                .build()
                .expect_err("must be rejected");
            assert_eq!(err.kind(), kind, "{pat}: {err}");
            assert_eq!(err.rule(), format!("GET {pat}"));
        }
        let long = "/a".repeat(MAX_SEGMENTS + 1);
        assert!(Policy::builder().get(long, Require::all_of("a")).build().is_err());
        let err = Policy::builder()
            .get("/a", Require::all_of("a\"b"))
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::InvalidScope);
        let err = Policy::builder()
            .get("/a", Require::all_of("  "))
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::EmptyRequirement);
        let err = Policy::builder()
            .rule(&[][..], "/a", Require::public())
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::NoMethod);
    }

    #[test]
    fn all_of_and_any_of() {
        let set = |s: &str| ScopeSet::parse(s).expect("valid");
        let compile = |r: Require| r.compile("t".into(), None).expect("valid").access;
        let all = compile(Require::all_of("a b"));
        assert_eq!(all.check(&set("a b c")), Ok(()));
        assert_eq!(all.check(&set("a c")), Err(set("b")));
        let any = compile(Require::any_of("a b"));
        assert_eq!(any.check(&set("b")), Ok(()));
        assert_eq!(any.check(&set("c")), Err(set("a b")));
        let both = compile(Require::all_of("r").and_any_of("w admin"));
        assert_eq!(both.check(&set("r admin")), Ok(()));
        assert_eq!(both.check(&set("r")), Err(set("w admin")));
        assert_eq!(both.check(&set("w")), Err(set("r")));
        assert_eq!(both.check(&set("")), Err(set("r w admin")));
        assert_eq!(both.required(), &set("r w admin"));
        assert_eq!(compile(Require::authenticated()).check(&set("")), Ok(()));
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
