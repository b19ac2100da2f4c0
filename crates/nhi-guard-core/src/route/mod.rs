//! The one route table: methods and path patterns, matched once per request, with
//! each control's attributes declared on the same routes.
//!
//! A [`Route`] is a method set and a pattern, plus typed attributes: the scope
//! control's requirement, the risk control's route facts, the rate limiter's route
//! group. [`Routes`] compiles them into a segment trie. Every guard layer given the
//! same table asks it through [`Routes::resolve`]: the first one matches the request
//! (or takes axum's `MatchedPath`), records the match and the template in the
//! request's [`SecurityContext`], and the others read it back.
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
//! Among the routes whose method and pattern match a request, the most specific one
//! is the match:
//!
//! 1. patterns are compared segment by segment from the left; at the first position
//!    where they differ, a literal beats a `{param}`, which beats the wildcard, and
//!    a pattern that ends there beats one that continues with the wildcard;
//! 2. for the same pattern, a route naming the request's method beats a route for
//!    any method. A `GET` route also covers `HEAD` unless a route names `HEAD`.
//!
//! Two routes are *equally specific* when their patterns have the same shape (the
//! same literals and captures at the same positions; capture names do not matter)
//! and they are both method-specific or both for any method. Equally specific routes
//! whose methods overlap are a build error naming both, so for every request at most
//! one route is the match and the order of declaration never matters.
//!
//! ```
//! use http::Method;
//! use nhi_guard_core::route::{Route, Routes};
//!
//! #[derive(Clone, Debug, PartialEq)]
//! struct Group(&'static str);
//!
//! let routes = Routes::builder()
//!     .route(Route::get("/orders/{id}").with(Group("orders")))
//!     .route(Route::get("/orders/export"))
//!     .route(Route::any("/orders/*"))
//!     .build()
//!     .unwrap();
//! let id = routes.find(&Method::GET, "/orders/42").unwrap();
//! assert_eq!(routes[id].pattern(), "/orders/{id}");
//! assert_eq!(routes[id].attr::<Group>(), Some(&Group("orders")));
//! let id = routes.find(&Method::GET, "/orders/export").unwrap();
//! assert_eq!(routes[id].pattern(), "/orders/export");
//! let id = routes.find(&Method::DELETE, "/orders/42").unwrap();
//! assert_eq!(routes[id].label(), "* /orders/*");
//! assert!(routes.find(&Method::GET, "/customers").is_none());
//! ```

mod error;
mod pattern;
mod trie;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Method;

pub use self::error::{RouteError, RouteErrorKind};
pub use self::pattern::MAX_SEGMENTS;
use self::pattern::{Segment, parse_pattern};
use self::trie::Trie;
use crate::SecurityContext;

/// The methods a route applies to: one, several, or any.
///
/// `Method` values, arrays and slices of them convert into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods(Option<Vec<Method>>);

impl Methods {
    /// Every method.
    pub const ANY: Methods = Methods(None);

    /// The methods, or `None` for any.
    pub fn as_slice(&self) -> Option<&[Method]> {
        self.0.as_deref()
    }
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

/// From configuration: one method (`"GET"`), several (`["GET", "POST"]`), or any
/// (`"ANY"` or `"*"`). Names are case-sensitive, as in HTTP (RFC 9110 §9.1).
impl<'de> serde::Deserialize<'de> for Methods {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Several(Vec<String>),
        }
        let method = |m: &str| {
            Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|_| !m.is_empty())
                .ok_or_else(|| serde::de::Error::custom(format!("{m:?} is not an HTTP method")))
        };
        match Raw::deserialize(d)? {
            Raw::One(m) if m == "ANY" || m == "*" => Ok(Self::ANY),
            Raw::One(m) => Ok(Self::from(method(&m)?)),
            Raw::Several(ms) if ms.is_empty() => Err(serde::de::Error::custom(
                "an empty list of methods matches nothing; use \"ANY\" for every method",
            )),
            Raw::Several(ms) => ms
                .iter()
                .map(|m| method(m))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Self(Some(v))),
        }
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

/// One route: methods, a pattern, and the attributes each control reads from it.
///
/// Attributes are values of any type (one per type): the scope crate's `Require`,
/// the risk crate's `RouteRisk`, the rate limiter's `RateGroup`. A control ignores
/// the attributes of others and treats a route without its own as it documents.
#[derive(Clone)]
pub struct Route {
    methods: Methods,
    pattern: Arc<str>,
    label: Arc<str>,
    attrs: http::Extensions,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("methods", &self.methods)
            .field("pattern", &self.pattern)
            .field("attributes", &self.attrs.len())
            .finish()
    }
}

impl Route {
    /// A route for `methods` on `pattern`. The pattern is checked when the table is
    /// built.
    pub fn new(methods: impl Into<Methods>, pattern: impl Into<String>) -> Self {
        let methods = methods.into();
        let pattern: String = pattern.into();
        let label = Arc::from(format!("{methods} {pattern}"));
        Self {
            methods,
            pattern: Arc::from(pattern),
            label,
            attrs: http::Extensions::new(),
        }
    }

    /// A route for any method.
    pub fn any(pattern: impl Into<String>) -> Self {
        Self::new(Methods::ANY, pattern)
    }

    /// A `GET` route (also covering `HEAD`).
    pub fn get(pattern: impl Into<String>) -> Self {
        Self::new(Method::GET, pattern)
    }

    /// A `POST` route.
    pub fn post(pattern: impl Into<String>) -> Self {
        Self::new(Method::POST, pattern)
    }

    /// A `PUT` route.
    pub fn put(pattern: impl Into<String>) -> Self {
        Self::new(Method::PUT, pattern)
    }

    /// A `PATCH` route.
    pub fn patch(pattern: impl Into<String>) -> Self {
        Self::new(Method::PATCH, pattern)
    }

    /// A `DELETE` route.
    pub fn delete(pattern: impl Into<String>) -> Self {
        Self::new(Method::DELETE, pattern)
    }

    /// One gRPC method by its path `/package.Service/Method` (gRPC calls are
    /// `POST`s).
    pub fn grpc(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    /// Every method of a gRPC service (`package.Service`): `POST /package.Service/*`.
    pub fn grpc_service(service: &str) -> Self {
        Self::new(Method::POST, format!("/{service}/*"))
    }

    /// Attaches an attribute (replacing one of the same type).
    #[must_use]
    pub fn with<A: Clone + Send + Sync + 'static>(mut self, attribute: A) -> Self {
        self.attrs.insert(attribute);
        self
    }

    /// The attribute of type `A`, if the route has one.
    pub fn attr<A: Send + Sync + 'static>(&self) -> Option<&A> {
        self.attrs.get::<A>()
    }

    /// The methods.
    pub fn methods(&self) -> &Methods {
        &self.methods
    }

    /// The pattern as declared (`/inventory/{sku}`): the route's template.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The pattern, shared.
    pub fn pattern_arc(&self) -> &Arc<str> {
        &self.pattern
    }

    /// `METHODS pattern` (`GET /orders/{id}`, `* /admin/*`): how errors and reports
    /// name the route.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The label, shared.
    pub fn label_arc(&self) -> &Arc<str> {
        &self.label
    }

    /// The `{name}` captures with their segment positions (0 is the first segment
    /// after the leading `/`), in order. Empty when the pattern does not parse.
    pub fn captures(&self) -> Vec<(usize, &str)> {
        parse_pattern(&self.pattern)
            .map(|segs| {
                segs.into_iter()
                    .enumerate()
                    .filter_map(|(i, s)| match s {
                        Segment::Param(name) => Some((i, name)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The position of a route in its [`Routes`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(u32);

impl RouteId {
    /// The index into [`Routes::routes`] (declaration order).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Tables get a process-unique id, so a context can tell which table matched it.
static NEXT_TABLE: AtomicU64 = AtomicU64::new(1);

struct Inner {
    id: u64,
    routes: Box<[Route]>,
    trie: Trie,
}

/// A compiled route table: cheap to clone (shared), matching allocates nothing.
///
/// See the [module documentation](self) for patterns and precedence.
#[derive(Clone)]
pub struct Routes {
    inner: Arc<Inner>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.inner.routes.iter().map(Route::label))
            .finish()
    }
}

impl Default for Routes {
    /// An empty table: nothing matches.
    fn default() -> Self {
        Self::from_parts(Vec::new(), Trie::default())
    }
}

impl std::ops::Index<RouteId> for Routes {
    type Output = Route;

    fn index(&self, id: RouteId) -> &Route {
        &self.inner.routes[id.index()]
    }
}

impl Routes {
    /// Starts an empty table.
    pub fn builder() -> RoutesBuilder {
        RoutesBuilder::default()
    }

    fn from_parts(routes: Vec<Route>, trie: Trie) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: NEXT_TABLE.fetch_add(1, Ordering::Relaxed),
                routes: routes.into(),
                trie,
            }),
        }
    }

    /// The routes, in declaration order ([`RouteId::index`]).
    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// The route `id` of this table.
    pub fn get(&self, id: RouteId) -> Option<&Route> {
        self.inner.routes.get(id.index())
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.inner.routes.len()
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.inner.routes.is_empty()
    }

    /// Whether both handles are the same compiled table.
    pub fn same_table(&self, other: &Routes) -> bool {
        self.inner.id == other.inner.id
    }

    /// The most specific route for `method` and `path` (the URI path, without the
    /// query).
    #[inline]
    pub fn find(&self, method: &Method, path: &str) -> Option<RouteId> {
        self.inner.trie.find(method, path).map(RouteId)
    }

    /// The route declared with the shape of a router's template (`/orders/{id}`,
    /// `/files/{*path}`; capture names do not matter) for `method`.
    pub fn find_template(&self, method: &Method, template: &str) -> Option<RouteId> {
        self.inner.trie.find_template(method, template).map(RouteId)
    }

    /// The request's route, matched once per request: when an earlier layer already
    /// matched it against this table, its answer from the request's
    /// [`SecurityContext`]; otherwise axum's `MatchedPath` when the table has that
    /// template (feature `axum`), else the most specific route for `method` and
    /// `path`. The first table to match a request records the route and its
    /// template in the context ([`SecurityContext::route`]).
    pub fn resolve(&self, method: &Method, path: &str, extensions: &http::Extensions) -> Option<RouteId> {
        self.resolve_in(
            SecurityContext::from_extensions(extensions),
            method,
            path,
            extensions,
        )
    }

    /// [`Routes::resolve`] for a layer that holds the request's context already:
    /// no second look-up of it in the extensions.
    pub fn resolve_in(
        &self,
        ctx: Option<&SecurityContext>,
        method: &Method,
        path: &str,
        extensions: &http::Extensions,
    ) -> Option<RouteId> {
        if let Some(m) = ctx.and_then(SecurityContext::route_match)
            && m.table == self.inner.id
        {
            return m.id;
        }
        let id = self.match_request(method, path, extensions);
        if let Some(ctx) = ctx {
            ctx.record_route(RouteMatch {
                table: self.inner.id,
                id,
                template: id.map(|id| self[id].pattern.clone()),
            });
        }
        id
    }

    fn match_request(&self, method: &Method, path: &str, extensions: &http::Extensions) -> Option<RouteId> {
        #[cfg(feature = "axum")]
        if let Some(matched) = extensions.get::<axum::extract::MatchedPath>()
            && let Some(id) = self.find_template(method, matched.as_str())
        {
            return Some(id);
        }
        #[cfg(not(feature = "axum"))]
        let _ = extensions;
        self.find(method, path)
    }
}

/// The route template a router matched before the guard ran, if it says: axum's
/// `MatchedPath` (feature `axum`), for a guard added with `Router::layer`. The
/// facade names its request span after it before any route table has run.
pub fn router_template(extensions: &http::Extensions) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(matched.as_str());
    }
    #[cfg(not(feature = "axum"))]
    let _ = extensions;
    None
}

/// What [`Routes::resolve`] recorded in a request's context.
#[derive(Debug, Clone)]
pub(crate) struct RouteMatch {
    pub(crate) table: u64,
    pub(crate) id: Option<RouteId>,
    pub(crate) template: Option<Arc<str>>,
}

/// Builds [`Routes`]. Errors surface in [`RoutesBuilder::build`], naming the route.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RoutesBuilder {
    routes: Vec<Route>,
}

impl RoutesBuilder {
    /// Adds a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds routes.
    pub fn routes(mut self, routes: impl IntoIterator<Item = Route>) -> Self {
        self.routes.extend(routes);
        self
    }

    /// Compiles the table.
    ///
    /// # Errors
    /// A [`RouteError`] naming the first invalid route: a pattern that does not
    /// parse, a route without methods, or two equally specific routes that overlap
    /// (naming both).
    pub fn build(self) -> Result<Routes, RouteError> {
        let mut trie = Trie::default();
        for (i, route) in self.routes.iter().enumerate() {
            let segments = parse_pattern(&route.pattern)
                .map_err(|m| RouteError::new(RouteErrorKind::InvalidPattern, &route.label, m))?;
            if route.methods.as_slice().is_some_and(<[Method]>::is_empty) {
                return Err(RouteError::new(
                    RouteErrorKind::NoMethod,
                    &route.label,
                    "lists no method; use Methods::ANY",
                ));
            }
            let id = u32::try_from(i).map_err(|_| {
                RouteError::new(RouteErrorKind::InvalidPattern, &route.label, "too many routes")
            })?;
            trie.insert(&segments, &route.methods, id, &route.label)?;
        }
        trie.finish();
        Ok(Routes::from_parts(self.routes, trie))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn methods_from_configuration() {
        let parse = |v: serde_json::Value| serde_json::from_value::<Methods>(v).map_err(|e| e.to_string());
        assert_eq!(parse(serde_json::json!("GET")), Ok(Methods::from(Method::GET)));
        assert_eq!(parse(serde_json::json!("ANY")), Ok(Methods::ANY));
        assert_eq!(parse(serde_json::json!("*")), Ok(Methods::ANY));
        assert_eq!(
            parse(serde_json::json!(["GET", "PURGE"])),
            Ok(Methods::from([
                Method::GET,
                Method::from_bytes(b"PURGE").expect("token")
            ]))
        );
        assert!(parse(serde_json::json!([])).is_err_and(|e| e.contains("matches nothing")));
        assert!(parse(serde_json::json!("GET POST")).is_err_and(|e| e.contains("not an HTTP method")));
        assert!(parse(serde_json::json!("")).is_err());
    }

    fn table() -> Routes {
        Routes::builder()
            .route(Route::get("/items/{id}").with("items"))
            .route(Route::post("/items/{id}/reserve"))
            .route(Route::any("/files/*"))
            .build()
            .expect("valid")
    }

    fn extensions_with_context() -> (http::Extensions, SecurityContext) {
        let ctx = SecurityContext::new(None, &SystemClock);
        let mut ext = http::Extensions::new();
        ext.insert(ctx.clone());
        (ext, ctx)
    }

    #[test]
    fn a_request_is_matched_once_per_table_and_the_first_template_stays() {
        let routes = table();
        let (ext, ctx) = extensions_with_context();
        let id = routes.resolve(&Method::GET, "/items/7", &ext).expect("match");
        assert_eq!(routes[id].attr::<&str>(), Some(&"items"));
        assert_eq!(ctx.route().as_deref(), Some("/items/{id}"));
        // The same table answers from the context: the path is not walked again.
        assert_eq!(routes.resolve(&Method::POST, "/elsewhere", &ext), Some(id));
        // A layer holding the context passes it: the same answer, without the
        // extensions.
        let empty = http::Extensions::new();
        assert_eq!(
            routes.resolve_in(Some(&ctx), &Method::POST, "/elsewhere", &empty),
            Some(id)
        );
        // A clone is the same table.
        assert_eq!(
            routes.clone().resolve(&Method::POST, "/elsewhere", &ext),
            Some(id)
        );
        // Another table matches for itself and leaves the recorded template alone.
        let other = Routes::builder().route(Route::any("/*")).build().expect("valid");
        assert!(!other.same_table(&routes));
        assert!(other.resolve(&Method::GET, "/items/7", &ext).is_some());
        assert_eq!(ctx.route().as_deref(), Some("/items/{id}"));
        // No match is remembered too.
        let (ext, ctx) = extensions_with_context();
        assert_eq!(routes.resolve(&Method::GET, "/nothing", &ext), None);
        assert_eq!(routes.resolve(&Method::GET, "/items/7", &ext), None);
        assert_eq!(ctx.route(), None);
        // Without a context every call matches.
        let bare = http::Extensions::new();
        assert_eq!(routes.resolve(&Method::GET, "/items/7", &bare), Some(id));
        assert_eq!(routes.resolve(&Method::GET, "/nothing", &bare), None);
    }

    #[test]
    fn templates_are_found_by_shape() {
        let routes = table();
        let get = |t: &str| {
            routes
                .find_template(&Method::GET, t)
                .map(|id| routes[id].label().to_owned())
        };
        assert_eq!(get("/items/{item_id}").as_deref(), Some("GET /items/{id}"));
        assert_eq!(get("/files/{*path}").as_deref(), Some("* /files/*"));
        assert_eq!(get("/items/{id}/reserve"), None, "POST only");
        assert_eq!(get("/items/7"), None, "a literal is not a capture");
        assert_eq!(get("items"), None);
        let head = routes.find_template(&Method::HEAD, "/items/{id}");
        assert_eq!(head, routes.find(&Method::GET, "/items/1"));
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn axum_matched_path_is_used_when_the_table_has_the_template() {
        use tower::ServiceExt;
        let routes = Routes::builder()
            .route(Route::get("/orders/{id}").with(1u8))
            .route(Route::get("/orders/export").with(2u8))
            .build()
            .expect("valid");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (r, s) = (routes.clone(), seen.clone());
        let app = axum::Router::new()
            .route("/orders/{order}", axum::routing::get(|| async { "" }))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let (r, s) = (r.clone(), s.clone());
                    async move {
                        let id = r.resolve(req.method(), req.uri().path(), req.extensions());
                        s.lock()
                            .expect("lock")
                            .push(id.and_then(|id| r[id].attr::<u8>().copied()));
                        next.run(req).await
                    }
                },
            ));
        for path in ["/orders/7", "/orders/export"] {
            let req = http::Request::get(path)
                .body(axum::body::Body::empty())
                .expect("request");
            app.clone().oneshot(req).await.expect("infallible");
        }
        // axum routed `/orders/export` to `/orders/{order}`: that route's attributes
        // apply, the handler that runs is the `{order}` one.
        assert_eq!(*seen.lock().expect("lock"), vec![Some(1), Some(1)]);
        assert_eq!(
            routes
                .find(&Method::GET, "/orders/export")
                .map(|id| routes[id].attr::<u8>().copied()),
            Some(Some(2))
        );
    }

    #[test]
    fn invalid_tables_are_errors_naming_the_route() {
        let err = Routes::builder()
            .route(Route::get("/orders/{id}"))
            .route(Route::new([Method::GET, Method::POST], "/orders/{order}"))
            .build()
            .expect_err("conflict");
        assert_eq!(err.kind(), RouteErrorKind::Conflict);
        assert_eq!(err.route(), "GET,POST /orders/{order}");
        assert_eq!(
            err.to_string(),
            "route `GET,POST /orders/{order}`: conflicts with route `GET /orders/{id}`: equally specific, both match GET"
        );
        let config: crate::config::ConfigError = err.into();
        assert_eq!(config.kind(), crate::config::ConfigErrorKind::Conflict);
        assert_eq!(
            (config.control(), config.field()),
            ("routes", "GET,POST /orders/{order}")
        );
        for bad in ["orders", "/a/*/b", "/v{n}", "/{}", "/{a}/{a}", "/a?b"] {
            let err = Routes::builder().route(Route::get(bad)).build().expect_err(bad);
            assert_eq!(err.kind(), RouteErrorKind::InvalidPattern, "{bad}");
        }
        let err = Routes::builder()
            .route(Route::new(&[][..], "/a"))
            .build()
            .expect_err("no method");
        assert_eq!(err.kind(), RouteErrorKind::NoMethod);
    }

    #[test]
    fn captures_and_labels() {
        let r = Route::new([Method::GET, Method::HEAD], "/t/{tenant}/items/{id}/{*rest}");
        assert_eq!(r.captures(), vec![(1, "tenant"), (3, "id")]);
        assert_eq!(r.label(), "GET,HEAD /t/{tenant}/items/{id}/{*rest}");
        assert_eq!(Route::grpc_service("pkg.Svc").label(), "POST /pkg.Svc/*");
        assert!(Route::get("bad").captures().is_empty());
    }
}
