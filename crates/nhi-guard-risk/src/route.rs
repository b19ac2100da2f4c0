//! Routes the risk layer knows about: their group, the capture that names the
//! resource, their sensitivity, and whether they hold a scarce resource.
//!
//! They are attributes ([`RouteRisk`]) of the routes of the one route table
//! ([`nhi_guard_core::route`]): declared on a shared [`Routes`] table and given with
//! [`RiskLayer::routes`](crate::RiskLayer::routes), or one by one with
//! [`RiskLayer::route`](crate::RiskLayer::route) into the layer's own table. Either
//! way the most specific route is the match (not the first declared), and two
//! equally specific routes are a configuration error.

use std::sync::Arc;

use http::Method;
use nhi_guard_core::config::ConfigErrorKind;
use nhi_guard_core::route::{self as table, Methods, Routes};

use crate::error::ConfigError;
use crate::signal::RouteFacts;
use crate::state::KeyHasher;

/// Which segment names a route's resource.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Resource {
    /// The last `{capture}` of the pattern.
    #[default]
    Last,
    /// The capture of this name.
    Named(Arc<str>),
    /// None (a bulk or collection endpoint).
    None,
}

/// The risk attributes of a route of the shared route table.
///
/// ```
/// use nhi_guard_core::route::{Route, Routes};
/// use nhi_guard_risk::{RiskLayer, RouteRisk};
///
/// let routes = Routes::builder()
///     .route(Route::get("/items/{id}").with(RouteRisk::new().group("items")))
///     .route(Route::post("/inventory/{sku}/reserve").with(RouteRisk::new().scarce()))
///     .build()
///     .unwrap();
/// let layer = RiskLayer::new().routes(&routes).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRisk {
    group: Option<Arc<str>>,
    resource: Resource,
    sensitivity: f32,
    scarce: bool,
    capacity: u32,
}

/// What a [`RouteRisk`] is written as in configuration: `{ group = "inventory",
/// resource = "sku", sensitivity = 1.5, scarce = true, capacity = 100 }`, every
/// field optional (`resource = ""` for none); the builder's checks apply.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRiskSpec {
    group: Option<String>,
    resource: Option<String>,
    sensitivity: Option<f32>,
    #[serde(default)]
    scarce: bool,
    capacity: Option<u32>,
}

/// From configuration: `{ group = "inventory", resource = "sku", sensitivity = 1.5,
/// scarce = true, capacity = 100 }`, every field optional (`resource = ""` for
/// none), through the builder's checks.
impl<'de> serde::Deserialize<'de> for RouteRisk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = RouteRiskSpec::deserialize(d)?;
        let mut risk = Self::new();
        if let Some(group) = spec.group {
            risk = risk.group(group);
        }
        match spec.resource.as_deref() {
            Some("") => risk = risk.no_resource(),
            Some(capture) => risk = risk.resource(capture),
            None => {}
        }
        if let Some(weight) = spec.sensitivity {
            risk = risk.sensitivity(weight).map_err(serde::de::Error::custom)?;
        }
        if spec.scarce {
            risk = risk.scarce();
        }
        if let Some(items) = spec.capacity {
            risk = risk.capacity(items).map_err(serde::de::Error::custom)?;
        }
        Ok(risk)
    }
}

impl Default for RouteRisk {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteRisk {
    /// Default attributes: the group is the pattern, the last capture names the
    /// resource, sensitivity 1, not scarce.
    pub fn new() -> Self {
        Self {
            group: None,
            resource: Resource::Last,
            sensitivity: 1.0,
            scarce: false,
            capacity: 0,
        }
    }

    /// Names the group whose routes share enumeration state (e.g. `GET /items/{id}`
    /// and `GET /items/{id}/price` both in `items`).
    #[must_use]
    pub fn group(mut self, name: impl Into<Arc<str>>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// Names the capture that identifies the resource (checked against the
    /// pattern when the layer reads the table).
    #[must_use]
    pub fn resource(mut self, capture: &str) -> Self {
        self.resource = Resource::Named(Arc::from(capture));
        self
    }

    /// No resource identifier (a bulk or collection endpoint).
    #[must_use]
    pub fn no_resource(mut self) -> Self {
        self.resource = Resource::None;
        self
    }

    /// Multiplies the score of requests to this route. Default 1.
    ///
    /// # Errors
    /// When `weight` is negative, not finite, or above 10.
    pub fn sensitivity(mut self, weight: f32) -> Result<Self, ConfigError> {
        if !weight.is_finite() || !(0.0..=10.0).contains(&weight) {
            return Err(ConfigError::new(
                "risk",
                "route.sensitivity",
                "must be a finite number from 0 to 10",
            ));
        }
        self.sensitivity = weight;
        Ok(self)
    }

    /// Marks the route as holding a scarce resource (a reservation, a hold):
    /// successful requests count against the client's fair share.
    #[must_use]
    pub fn scarce(mut self) -> Self {
        self.scarce = true;
        self
    }

    /// Declares how many items the route's resource has (seats, units of stock).
    /// A client holding more than a share of them within the hold window scores
    /// ([`crate::signals::HoardingConfig::capacity_curve`]: 10% → throttle by
    /// default), crowd or not. Implies [`RouteRisk::scarce`].
    ///
    /// # Errors
    /// When `items` is 0.
    pub fn capacity(mut self, items: u32) -> Result<Self, ConfigError> {
        if items == 0 {
            return Err(ConfigError::new(
                "risk",
                "route.capacity",
                "must be at least 1 item",
            ));
        }
        self.capacity = items;
        self.scarce = true;
        Ok(self)
    }
}

/// A route with its risk attributes, for [`RiskLayer::route`](crate::RiskLayer::route):
/// a route of the layer's own table.
///
/// ```
/// use nhi_guard_risk::Route;
///
/// let reserve = Route::new("POST", "/inventory/{sku}/reserve")
///     .unwrap()
///     .group("inventory")
///     .scarce()
///     .sensitivity(1.5)
///     .unwrap();
/// assert_eq!(reserve.pattern(), "/inventory/{sku}/reserve");
/// ```
#[derive(Debug, Clone)]
pub struct Route {
    route: table::Route,
    risk: RouteRisk,
}

impl Route {
    /// A route for `method` (`*` for any) and `pattern` (the route table's
    /// patterns: `{name}` captures one segment, `*` or `{*name}` the rest). The last
    /// capture names the resource unless [`Route::resource`] says otherwise. The
    /// group defaults to the pattern.
    ///
    /// # Errors
    /// An invalid method or pattern.
    pub fn new(method: &str, pattern: &str) -> Result<Self, ConfigError> {
        let field = || format!("route[{method} {pattern}]");
        let methods = match method {
            "*" => Methods::ANY,
            m => Methods::from(
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| ConfigError::new("risk", field(), "invalid method"))?,
            ),
        };
        let route = table::Route::new(methods, pattern);
        // The pattern's own checks, now rather than when the table is built.
        Routes::builder()
            .route(route.clone())
            .build()
            .map_err(|e| ConfigError::new("risk", field(), e.message().to_owned()))?;
        Ok(Self {
            route,
            risk: RouteRisk::new(),
        })
    }

    /// See [`RouteRisk::group`].
    #[must_use]
    pub fn group(mut self, name: impl Into<Arc<str>>) -> Self {
        self.risk = self.risk.group(name);
        self
    }

    /// Names the capture that identifies the resource.
    ///
    /// # Errors
    /// When the pattern has no such capture.
    pub fn resource(mut self, capture: &str) -> Result<Self, ConfigError> {
        resource_position(&self.route, &Resource::Named(Arc::from(capture)))?;
        self.risk = self.risk.resource(capture);
        Ok(self)
    }

    /// See [`RouteRisk::no_resource`].
    #[must_use]
    pub fn no_resource(mut self) -> Self {
        self.risk = self.risk.no_resource();
        self
    }

    /// See [`RouteRisk::sensitivity`].
    ///
    /// # Errors
    /// When `weight` is negative, not finite, or above 10.
    pub fn sensitivity(mut self, weight: f32) -> Result<Self, ConfigError> {
        self.risk = self
            .risk
            .clone()
            .sensitivity(weight)
            .map_err(|e| self.field_error(e, "sensitivity"))?;
        Ok(self)
    }

    /// See [`RouteRisk::scarce`].
    #[must_use]
    pub fn scarce(mut self) -> Self {
        self.risk = self.risk.scarce();
        self
    }

    /// See [`RouteRisk::capacity`].
    ///
    /// # Errors
    /// When `items` is 0.
    pub fn capacity(mut self, items: u32) -> Result<Self, ConfigError> {
        self.risk = self
            .risk
            .clone()
            .capacity(items)
            .map_err(|e| self.field_error(e, "capacity"))?;
        Ok(self)
    }

    /// The pattern.
    pub fn pattern(&self) -> &str {
        self.route.pattern()
    }

    /// The route of the table, with its [`RouteRisk`] attached.
    pub fn into_route(self) -> table::Route {
        self.route.with(self.risk)
    }

    fn field_error(&self, e: ConfigError, what: &str) -> ConfigError {
        ConfigError::new(
            "risk",
            format!("route[{}].{what}", self.route.pattern()),
            e.message().to_owned(),
        )
    }
}

/// The segment position of the resource capture, `None` for no resource.
fn resource_position(route: &table::Route, resource: &Resource) -> Result<Option<usize>, ConfigError> {
    let captures = route.captures();
    match resource {
        Resource::None => Ok(None),
        Resource::Last => Ok(captures.last().map(|(i, _)| *i)),
        Resource::Named(name) => captures
            .iter()
            .find(|(_, n)| *n == &**name)
            .map(|(i, _)| Some(*i))
            .ok_or_else(|| {
                ConfigError::new(
                    "risk",
                    format!("route[{}].resource", route.pattern()),
                    format!("no capture named {name:?}"),
                )
            }),
    }
}

/// A route's attributes as the engine uses them.
#[derive(Debug, Clone)]
struct Compiled {
    pattern: Arc<str>,
    group_hash: u64,
    resource: Option<usize>,
    sensitivity: f32,
    scarce: bool,
    capacity: u32,
}

/// The layer's routes: a route table (shared, or its own) and the risk attributes
/// of its routes, by route index.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    routes: Routes,
    /// The routes of the layer's own table ([`RiskLayer::route`](crate::RiskLayer::route)).
    own: Vec<table::Route>,
    shared: bool,
    compiled: Arc<[Option<Compiled>]>,
}

impl RouteTable {
    /// Adds a route to the layer's own table.
    pub(crate) fn push(&mut self, route: Route, hasher: &KeyHasher) -> Result<(), ConfigError> {
        if self.shared {
            return Err(ConfigError::new(
                "risk",
                format!("route[{}]", route.route.label()),
                "the layer reads a shared route table: declare the route's RouteRisk there",
            )
            .kind_of(ConfigErrorKind::Conflict));
        }
        let mut own = self.own.clone();
        own.push(route.into_route());
        let routes = Routes::builder().routes(own.iter().cloned()).build()?;
        self.compile(routes, hasher)?;
        self.own = own;
        Ok(())
    }

    /// Reads the routes with a [`RouteRisk`] from a shared table.
    pub(crate) fn shared(&mut self, routes: &Routes, hasher: &KeyHasher) -> Result<(), ConfigError> {
        if !self.own.is_empty() {
            return Err(ConfigError::new(
                "risk",
                "routes",
                "routes were added one by one; declare them in the shared table instead",
            )
            .kind_of(ConfigErrorKind::Conflict));
        }
        self.compile(routes.clone(), hasher)?;
        self.shared = true;
        Ok(())
    }

    fn compile(&mut self, routes: Routes, hasher: &KeyHasher) -> Result<(), ConfigError> {
        let compiled = routes
            .routes()
            .iter()
            .map(|route| {
                let Some(risk) = route.attr::<RouteRisk>() else {
                    return Ok(None);
                };
                let group = risk.group.as_ref().unwrap_or(route.pattern_arc());
                Ok(Some(Compiled {
                    pattern: route.pattern_arc().clone(),
                    group_hash: hasher.hash_tagged(5, &**group),
                    resource: resource_position(route, &risk.resource)?,
                    sensitivity: risk.sensitivity,
                    scarce: risk.scarce,
                    capacity: risk.capacity,
                }))
            })
            .collect::<Result<Arc<[_]>, ConfigError>>()?;
        self.routes = routes;
        self.compiled = compiled;
        Ok(())
    }

    pub(crate) fn is_configured(&self) -> bool {
        self.shared || !self.own.is_empty()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.compiled.iter().all(Option::is_none)
    }

    pub(crate) fn sensitivity(&self, index: usize) -> f32 {
        self.get(index).map_or(1.0, |r| r.sensitivity)
    }

    pub(crate) fn pattern_arc(&self, index: usize) -> Option<&Arc<str>> {
        self.get(index).map(|r| &r.pattern)
    }

    fn get(&self, index: usize) -> Option<&Compiled> {
        self.compiled.get(index).and_then(Option::as_ref)
    }

    /// The facts of the request's route (matched once per request against the
    /// table), when it has risk attributes. `HEAD` is served by the `GET` route
    /// when no route names `HEAD` itself, as axum and the scope policy serve it.
    pub(crate) fn find(
        &self,
        ctx: Option<&nhi_guard_core::SecurityContext>,
        method: &Method,
        path: &str,
        extensions: &http::Extensions,
        hasher: &KeyHasher,
    ) -> Option<RouteFacts> {
        let id = self.routes.resolve_in(ctx, method, path, extensions)?;
        let c = self.get(id.index())?;
        let resource = c
            .resource
            .and_then(|pos| path.strip_prefix('/')?.split('/').nth(pos));
        Some(RouteFacts {
            index: u32::try_from(id.index()).unwrap_or(u32::MAX),
            group_hash: c.group_hash,
            resource_hash: resource.map(|r| hasher.hash_tagged(6, r)),
            resource_number: resource.and_then(|r| r.parse().ok()),
            scarce: c.scarce,
            capacity: c.capacity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RouteTable {
        fn find_plain(&self, method: &Method, path: &str, hasher: &KeyHasher) -> Option<RouteFacts> {
            self.find(None, method, path, &http::Extensions::new(), hasher)
        }
    }

    #[test]
    fn patterns_match_and_capture_the_resource() {
        let h = KeyHasher::new();
        let mut t = RouteTable::default();
        t.push(
            Route::new("GET", "/items/{id}").expect("route").group("items"),
            &h,
        )
        .expect("push");
        t.push(
            Route::new("POST", "/inventory/{sku}/reserve")
                .expect("route")
                .scarce(),
            &h,
        )
        .expect("push");
        t.push(
            Route::new("*", "/orders/{tenant}/{order}")
                .expect("route")
                .resource("tenant")
                .expect("capture"),
            &h,
        )
        .expect("push");
        let m = t.find_plain(&Method::GET, "/items/42", &h).expect("match");
        assert_eq!((m.index(), m.resource_number()), (0, Some(42)));
        assert!(t.find_plain(&Method::POST, "/items/42", &h).is_none());
        assert!(t.find_plain(&Method::GET, "/items/", &h).is_none());
        assert!(t.find_plain(&Method::GET, "/items/42/x", &h).is_none());
        let r = t
            .find_plain(&Method::POST, "/inventory/ab-1/reserve", &h)
            .expect("match");
        assert!(r.is_scarce() && r.resource_number().is_none() && r.resource_hash().is_some());
        assert_eq!(r.capacity(), None);
        let o = t
            .find_plain(&Method::DELETE, "/orders/acme/7", &h)
            .expect("match");
        assert_eq!(o.resource_hash(), Some(h.hash_tagged(6, "acme")));
        assert!(t.find_plain(&Method::GET, "no-slash", &h).is_none());
    }

    #[test]
    fn a_declared_capacity_makes_a_route_scarce() {
        let h = KeyHasher::new();
        let mut t = RouteTable::default();
        let seats = Route::new("POST", "/shows/{id}/hold")
            .expect("route")
            .capacity(500)
            .expect("capacity");
        t.push(seats, &h).expect("push");
        let m = t.find_plain(&Method::POST, "/shows/7/hold", &h).expect("match");
        assert!(m.is_scarce());
        assert_eq!(m.capacity(), Some(500));
        let e = Route::new("POST", "/x/{id}")
            .expect("route")
            .capacity(0)
            .expect_err("zero");
        assert!(e.to_string().contains("capacity"), "{e}");
    }

    #[test]
    fn head_is_matched_by_the_get_route_unless_a_head_route_exists() {
        let h = KeyHasher::new();
        let mut t = RouteTable::default();
        t.push(Route::new("GET", "/items/{id}").expect("route"), &h)
            .expect("push");
        t.push(Route::new("POST", "/items/{id}/hold").expect("route"), &h)
            .expect("push");
        t.push(Route::new("HEAD", "/files/{id}").expect("route"), &h)
            .expect("push");
        t.push(Route::new("GET", "/files/{id}").expect("route"), &h)
            .expect("push");
        let get = t.find_plain(&Method::GET, "/items/7", &h).expect("GET");
        let head = t.find_plain(&Method::HEAD, "/items/7", &h).expect("HEAD as GET");
        assert_eq!((head.index(), head.resource_number()), (get.index(), Some(7)));
        assert_eq!(head.resource_hash(), get.resource_hash());
        // Only GET stands in for HEAD.
        assert!(t.find_plain(&Method::HEAD, "/items/7/hold", &h).is_none());
        assert!(t.find_plain(&Method::OPTIONS, "/items/7", &h).is_none());
        // An explicit HEAD route wins over the GET one, whatever the order.
        assert_eq!(
            t.find_plain(&Method::HEAD, "/files/1", &h).expect("HEAD").index(),
            2
        );
        assert_eq!(
            t.find_plain(&Method::GET, "/files/1", &h).expect("GET").index(),
            3
        );
    }

    #[test]
    fn invalid_routes_fail_naming_the_field() {
        assert_eq!(
            Route::new("GET", "items").expect_err("no slash").field(),
            "route[GET items]"
        );
        assert!(Route::new("GET", "/items/{id").is_err());
        assert!(Route::new("GET", "/items/x{id}").is_err());
        assert!(Route::new("G ET", "/x").is_err());
        let e = Route::new("GET", "/items/{id}")
            .expect("route")
            .resource("sku")
            .expect_err("no sku");
        assert_eq!(e.field(), "route[/items/{id}].resource");
        assert!(
            Route::new("GET", "/x")
                .expect("route")
                .sensitivity(f32::NAN)
                .is_err()
        );
    }

    #[test]
    fn a_shared_table_gives_the_routes_with_risk_attributes() {
        use nhi_guard_core::route::Route as TableRoute;
        let h = KeyHasher::new();
        let routes = Routes::builder()
            .route(TableRoute::get("/items/{id}").with(RouteRisk::new().group("items")))
            .route(TableRoute::get("/items/{id}/price").with(RouteRisk::new().group("items")))
            .route(TableRoute::get("/items/export"))
            .route(TableRoute::any("/t/{tenant}/x/{id}").with(RouteRisk::new().resource("tenant")))
            .build()
            .expect("valid");
        let mut t = RouteTable::default();
        t.shared(&routes, &h).expect("shared");
        let a = t.find_plain(&Method::GET, "/items/7", &h).expect("match");
        let b = t.find_plain(&Method::GET, "/items/8/price", &h).expect("match");
        assert_eq!(a.group_hash(), b.group_hash());
        assert_eq!((a.resource_number(), b.resource_number()), (Some(7), Some(8)));
        // The most specific route is the match, and it has no risk attributes.
        assert!(t.find_plain(&Method::GET, "/items/export", &h).is_none());
        let o = t.find_plain(&Method::PUT, "/t/acme/x/9", &h).expect("match");
        assert_eq!(o.resource_hash(), Some(h.hash_tagged(6, "acme")));
        // One way or the other, not both.
        let own = Route::new("GET", "/a").expect("route");
        let e = t.push(own.clone(), &h).expect_err("shared");
        assert_eq!(e.kind(), ConfigErrorKind::Conflict);
        let mut u = RouteTable::default();
        u.push(own, &h).expect("own");
        assert_eq!(
            u.shared(&routes, &h).expect_err("own").kind(),
            ConfigErrorKind::Conflict
        );
        // A resource capture the pattern lacks.
        let bad = Routes::builder()
            .route(TableRoute::get("/a/{id}").with(RouteRisk::new().resource("sku")))
            .build()
            .expect("valid table");
        let e = RouteTable::default().shared(&bad, &h).expect_err("no sku");
        assert_eq!(e.field(), "route[/a/{id}].resource");
        // Equally specific routes of the layer's own table are an error.
        let mut c = RouteTable::default();
        c.push(Route::new("GET", "/a/{x}").expect("route"), &h)
            .expect("first");
        let e = c
            .push(Route::new("GET", "/a/{y}").expect("route"), &h)
            .expect_err("conflict");
        assert_eq!(e.kind(), ConfigErrorKind::Conflict);
    }
}
