//! The route policy table: which scopes each method and path requires, compiled
//! into a segment trie.
//!
//! # Routes
//!
//! Patterns, precedence and conflicts are those of the one route table,
//! [`nhi_guard_core::route`]: `{param}`, `{*rest}` or `*`, literal segments,
//! methods with `HEAD` served by `GET`, the most specific route wins, and two
//! equally specific overlapping routes are a build error naming both. A policy is
//! either built here with [`Policy::builder`] (each rule one route), or read from a
//! shared [`Routes`] table whose routes carry a [`Require`] attribute
//! ([`Policy::from_routes`]): then the scope, risk and rate-limit controls match
//! the request once, against the same table.
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
mod requirement;

use std::sync::Arc;

use http::Method;
pub use nhi_guard_core::route::{MAX_SEGMENTS, Methods};
use nhi_guard_core::route::{RouteId, Routes};

pub use self::builder::PolicyBuilder;
pub use self::error::{PolicyError, PolicyErrorKind};
pub use self::requirement::{Access, Require, Rule};

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

/// No rule for a route of the table.
const NO_RULE: u32 = u32::MAX;

/// A compiled route policy: a route table from method and path to the most
/// specific [`Rule`]. Matching allocates nothing.
///
/// See the [module documentation](self) for patterns and precedence.
#[derive(Debug, Clone)]
pub struct Policy {
    routes: Routes,
    rules: Vec<Rule>,
    /// Route index → rule index ([`NO_RULE`] for a route without a [`Require`]).
    by_route: Arc<[u32]>,
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

    /// The route table the policy matches against.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The policy of a shared route table: one rule per route with a [`Require`]
    /// attribute, in the table's order. A request whose route has no `Require`, or
    /// that matches no route, gets the [`Fallback`] (deny unless
    /// [`Policy::with_fallback`] says otherwise).
    ///
    /// ```
    /// use nhi_guard_core::route::{Route, Routes};
    /// use nhi_guard_scope::{Policy, Require};
    ///
    /// let routes = Routes::builder()
    ///     .route(Route::get("/orders/{id}").with(Require::all_of("orders:read")))
    ///     .route(Route::get("/health").with(Require::public()))
    ///     .build()
    ///     .unwrap();
    /// let policy = Policy::from_routes(&routes).unwrap();
    /// assert_eq!(policy.find(&http::Method::GET, "/orders/7").unwrap().label(), "GET /orders/{id}");
    /// ```
    ///
    /// # Errors
    /// A [`PolicyError`] naming the route whose requirement is invalid or empty.
    pub fn from_routes(routes: &Routes) -> Result<Policy, PolicyError> {
        let mut rules = Vec::new();
        let mut by_route = Vec::with_capacity(routes.len());
        for route in routes.routes() {
            match route.attr::<Require>() {
                Some(require) => {
                    by_route.push(u32::try_from(rules.len()).unwrap_or(NO_RULE));
                    rules
                        .push(require.compile(route.label_arc().clone(), Some(route.pattern_arc().clone()))?);
                }
                None => by_route.push(NO_RULE),
            }
        }
        Ok(Policy {
            routes: routes.clone(),
            rules,
            by_route: by_route.into(),
            fallback: Fallback::Deny,
        })
    }

    /// The same policy with another [`Fallback`].
    #[must_use]
    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// The most specific rule for `method` and `path` (the URI path, without the
    /// query), or `None` when no rule matches and the [`Fallback`] applies.
    pub fn find(&self, method: &Method, path: &str) -> Option<&Rule> {
        self.rule_of(self.routes.find(method, path)?)
    }

    /// As [`Policy::find`], matching the request once per request
    /// ([`Routes::resolve`]).
    #[inline]
    pub(crate) fn resolve(
        &self,
        ctx: &nhi_guard_core::SecurityContext,
        method: &Method,
        path: &str,
        extensions: &http::Extensions,
    ) -> Option<&Rule> {
        self.rule_of(self.routes.resolve_in(Some(ctx), method, path, extensions)?)
    }

    #[inline]
    fn rule_of(&self, id: RouteId) -> Option<&Rule> {
        let rule = *self.by_route.get(id.index())?;
        self.rules.get(rule as usize)
    }
}
