//! Routes the risk layer knows about: their group, the capture that names the
//! resource, their sensitivity, and whether they hold a scarce resource.

use std::sync::Arc;

use http::Method;

use crate::error::ConfigError;
use crate::signal::RouteFacts;
use crate::state::KeyHasher;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Capture(Box<str>),
}

/// A route pattern with its risk attributes.
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
    method: Option<Method>,
    pattern: Arc<str>,
    segments: Box<[Segment]>,
    group: Arc<str>,
    resource: Option<usize>,
    sensitivity: f32,
    scarce: bool,
    capacity: u32,
}

impl Route {
    /// A route for `method` (`*` for any) and `pattern`: `/`-separated segments,
    /// `{name}` capturing one segment. The last capture names the resource unless
    /// [`Route::resource`] says otherwise. The group defaults to the pattern.
    ///
    /// # Errors
    /// An invalid method, a pattern not starting with `/`, or a malformed capture.
    pub fn new(method: &str, pattern: &str) -> Result<Self, ConfigError> {
        let field = || format!("route[{method} {pattern}]");
        let method = match method {
            "*" => None,
            m => Some(
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| ConfigError::new("risk", field(), "invalid method"))?,
            ),
        };
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(ConfigError::new("risk", field(), "pattern must start with '/'"));
        };
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if let Some(name) = seg.strip_prefix('{') {
                let name = name
                    .strip_suffix('}')
                    .filter(|n| !n.is_empty() && !n.contains(['{', '}']))
                    .ok_or_else(|| ConfigError::new("risk", field(), format!("malformed capture {seg:?}")))?;
                segments.push(Segment::Capture(name.into()));
            } else if seg.contains(['{', '}']) {
                return Err(ConfigError::new(
                    "risk",
                    field(),
                    format!("malformed capture {seg:?}"),
                ));
            } else {
                segments.push(Segment::Literal(seg.into()));
            }
        }
        let resource = segments.iter().rposition(|s| matches!(s, Segment::Capture(_)));
        Ok(Self {
            method,
            pattern: Arc::from(pattern),
            segments: segments.into(),
            group: Arc::from(pattern),
            resource,
            sensitivity: 1.0,
            scarce: false,
            capacity: 0,
        })
    }

    /// Names the group whose routes share enumeration state (e.g. `GET /items/{id}`
    /// and `GET /items/{id}/price` both in `items`).
    #[must_use]
    pub fn group(mut self, name: impl Into<Arc<str>>) -> Self {
        self.group = name.into();
        self
    }

    /// Names the capture that identifies the resource.
    ///
    /// # Errors
    /// When the pattern has no such capture.
    pub fn resource(mut self, capture: &str) -> Result<Self, ConfigError> {
        let pos = self
            .segments
            .iter()
            .position(|s| matches!(s, Segment::Capture(n) if &**n == capture))
            .ok_or_else(|| {
                ConfigError::new(
                    "risk",
                    format!("route[{}].resource", self.pattern),
                    format!("no capture named {capture:?}"),
                )
            })?;
        self.resource = Some(pos);
        Ok(self)
    }

    /// No resource identifier (a bulk or collection endpoint).
    #[must_use]
    pub fn no_resource(mut self) -> Self {
        self.resource = None;
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
                format!("route[{}].sensitivity", self.pattern),
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
    /// default), crowd or not. Implies [`Route::scarce`].
    ///
    /// # Errors
    /// When `items` is 0.
    pub fn capacity(mut self, items: u32) -> Result<Self, ConfigError> {
        if items == 0 {
            return Err(ConfigError::new(
                "risk",
                format!("route[{}].capacity", self.pattern),
                "must be at least 1 item",
            ));
        }
        self.capacity = items;
        self.scarce = true;
        Ok(self)
    }

    /// The pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Matches `method` and `path`, returning the resource segment (if the route
    /// names one) on success.
    fn matches<'p>(&self, method: &Method, path: &'p str) -> Option<Option<&'p str>> {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return None;
        }
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut resource = None;
        for (i, seg) in self.segments.iter().enumerate() {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if **l == *part => {}
                Segment::Literal(_) => return None,
                Segment::Capture(_) if part.is_empty() => return None,
                Segment::Capture(_) => {
                    if self.resource == Some(i) {
                        resource = Some(part);
                    }
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(resource)
    }
}

/// The routes of one layer, matched in order (first match wins).
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    routes: Vec<(Route, u64)>,
}

impl RouteTable {
    pub(crate) fn push(&mut self, route: Route, hasher: &KeyHasher) -> Result<(), ConfigError> {
        if self.routes.len() >= usize::from(u16::MAX) {
            return Err(ConfigError::new("risk", "routes", "too many routes"));
        }
        let group = hasher.hash_tagged(5, &*route.group);
        self.routes.push((route, group));
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub(crate) fn sensitivity(&self, index: usize) -> f32 {
        self.routes.get(index).map_or(1.0, |r| r.0.sensitivity)
    }

    pub(crate) fn pattern_arc(&self, index: usize) -> Option<&Arc<str>> {
        self.routes.get(index).map(|r| &r.0.pattern)
    }

    /// The facts of the first route matching the request. `HEAD` is served by the
    /// `GET` route when no route names `HEAD` itself, as axum and the scope policy
    /// serve it: walking items with `HEAD` is scored like walking them with `GET`.
    pub(crate) fn find(&self, method: &Method, path: &str, hasher: &KeyHasher) -> Option<RouteFacts> {
        self.find_exact(method, path, hasher).or_else(|| {
            (method == Method::HEAD)
                .then(|| self.find_exact(&Method::GET, path, hasher))
                .flatten()
        })
    }

    fn find_exact(&self, method: &Method, path: &str, hasher: &KeyHasher) -> Option<RouteFacts> {
        self.routes.iter().enumerate().find_map(|(i, (route, group))| {
            let resource = route.matches(method, path)?;
            Some(RouteFacts {
                index: i as u16,
                group_hash: *group,
                resource_hash: resource.map(|r| hasher.hash_tagged(6, r)),
                resource_number: resource.and_then(|r| r.parse().ok()),
                scarce: route.scarce,
                capacity: route.capacity,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let m = t.find(&Method::GET, "/items/42", &h).expect("match");
        assert_eq!((m.index(), m.resource_number()), (0, Some(42)));
        assert!(t.find(&Method::POST, "/items/42", &h).is_none());
        assert!(t.find(&Method::GET, "/items/", &h).is_none());
        assert!(t.find(&Method::GET, "/items/42/x", &h).is_none());
        let r = t
            .find(&Method::POST, "/inventory/ab-1/reserve", &h)
            .expect("match");
        assert!(r.is_scarce() && r.resource_number().is_none() && r.resource_hash().is_some());
        assert_eq!(r.capacity(), None);
        let o = t.find(&Method::DELETE, "/orders/acme/7", &h).expect("match");
        assert_eq!(o.resource_hash(), Some(h.hash_tagged(6, "acme")));
        assert!(t.find(&Method::GET, "no-slash", &h).is_none());
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
        let m = t.find(&Method::POST, "/shows/7/hold", &h).expect("match");
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
        let get = t.find(&Method::GET, "/items/7", &h).expect("GET");
        let head = t.find(&Method::HEAD, "/items/7", &h).expect("HEAD as GET");
        assert_eq!((head.index(), head.resource_number()), (get.index(), Some(7)));
        assert_eq!(head.resource_hash(), get.resource_hash());
        // Only GET stands in for HEAD.
        assert!(t.find(&Method::HEAD, "/items/7/hold", &h).is_none());
        assert!(t.find(&Method::OPTIONS, "/items/7", &h).is_none());
        // An explicit HEAD route wins over the GET one, whatever the order.
        assert_eq!(t.find(&Method::HEAD, "/files/1", &h).expect("HEAD").index(), 2);
        assert_eq!(t.find(&Method::GET, "/files/1", &h).expect("GET").index(), 3);
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
}
