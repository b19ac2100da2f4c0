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

mod builder;
mod error;
mod pattern;
mod requirement;
mod trie;

use http::Method;

pub use self::builder::{Methods, PolicyBuilder};
pub use self::error::{PolicyError, PolicyErrorKind};
pub use self::pattern::MAX_SEGMENTS;
pub use self::requirement::{Access, Require, Rule};
use self::trie::{Node, method_index};

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

    /// The most specific rule for `method` and `path` (the URI path, without the
    /// query), or `None` when no rule matches and the [`Fallback`] applies.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Rule> {
        let rest = path.strip_prefix('/')?;
        let index = method_index(method);
        self.walk(0, Some(rest), index, method)
            .map(|id| &self.rules[id as usize])
    }
}
