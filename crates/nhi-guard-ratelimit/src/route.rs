//! Route groups: the attribute ([`RateGroup`]) a route of the one route table
//! carries to share one per-route limit key, and the layer's view of its table.

use std::sync::Arc;

use nhi_guard_core::SecurityContext;
use nhi_guard_core::config::{ConfigError, ConfigErrorKind};
use nhi_guard_core::route::{Route, Routes};

/// The rate-limit route group of a route of the shared route table: per-route
/// limits ([`Limit::per_client_route`](crate::Limit::per_client_route)) key on it,
/// and [`Limit::route_quota`](crate::Limit::route_quota) names it. A route without
/// one is its own group, named by its template.
///
/// ```
/// use nhi_guard_core::route::{Route, Routes};
/// use nhi_guard_ratelimit::{Limit, RateGroup, RateLimitLayer};
///
/// let routes = Routes::builder()
///     .route(Route::get("/exports/{day}").with(RateGroup::new("exports")))
///     .route(Route::post("/exports").with(RateGroup::new("exports")))
///     .build()
///     .unwrap();
/// let layer = RateLimitLayer::new()
///     .routes(&routes)
///     .unwrap()
///     .limit(Limit::per_client_route("per-client-route"))
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateGroup(Arc<str>);

/// From configuration: the group's name (`rate_group = "exports"`).
impl<'de> serde::Deserialize<'de> for RateGroup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name.trim().is_empty() {
            return Err(serde::de::Error::custom("a rate-limit group needs a name"));
        }
        Ok(Self::new(name))
    }
}

impl RateGroup {
    /// The group `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The layer's route table and each route's group, by route index.
#[derive(Debug, Clone)]
pub(crate) struct RouteGroups {
    routes: Option<Routes>,
    /// Groups declared with [`RateLimitLayer::route_group`](crate::RateLimitLayer::route_group).
    own: Vec<Route>,
    groups: Arc<[Arc<str>]>,
    /// `*`: the group of requests in no route of the layer's table, and of requests
    /// to a layer without a table whose context knows no route.
    any: Arc<str>,
}

impl Default for RouteGroups {
    fn default() -> Self {
        Self {
            routes: None,
            own: Vec::new(),
            groups: Arc::new([]),
            any: Arc::from("*"),
        }
    }
}

impl RouteGroups {
    /// Adds `ANY prefix/*` in `group` to the layer's own table.
    pub(crate) fn push_prefix(&mut self, group: &str, prefix: &str) -> Result<(), ConfigError> {
        if self.routes.is_some() && self.own.is_empty() {
            return Err(shared_conflict("route_group"));
        }
        let mut own = self.own.clone();
        own.push(Route::any(format!("{}/*", prefix.trim_end_matches('/'))).with(RateGroup::new(group)));
        let routes = Routes::builder()
            .routes(own.iter().cloned())
            .build()
            .map_err(|e| {
                let kind = ConfigError::from(e.clone()).kind();
                ConfigError::new("rate_limit", "route_group.path_prefix", e.to_string()).kind_of(kind)
            })?;
        self.set(routes);
        self.own = own;
        Ok(())
    }

    pub(crate) fn is_configured(&self) -> bool {
        self.routes.is_some()
    }

    /// Reads the groups from a shared table.
    pub(crate) fn shared(&mut self, routes: &Routes) -> Result<(), ConfigError> {
        if !self.own.is_empty() {
            return Err(shared_conflict("routes"));
        }
        self.set(routes.clone());
        Ok(())
    }

    fn set(&mut self, routes: Routes) {
        self.groups = routes
            .routes()
            .iter()
            .map(|r| {
                r.attr::<RateGroup>()
                    .map_or_else(|| r.pattern_arc().clone(), |g| g.0.clone())
            })
            .collect();
        self.routes = Some(routes);
    }

    /// The request's group: its route's in the layer's table (matched once per
    /// request), `*` outside every route; for a layer without a table, the route
    /// template the context knows (another layer's table, or set by hand), else `*`.
    pub(crate) fn group(
        &self,
        method: &http::Method,
        path: &str,
        extensions: &http::Extensions,
        ctx: &SecurityContext,
    ) -> Arc<str> {
        match &self.routes {
            Some(routes) => routes
                .resolve_in(Some(ctx), method, path, extensions)
                .and_then(|id| self.groups.get(id.index()).cloned())
                .unwrap_or_else(|| self.any.clone()),
            None => ctx.route().unwrap_or_else(|| self.any.clone()),
        }
    }
}

fn shared_conflict(field: &'static str) -> ConfigError {
    ConfigError::new(
        "rate_limit",
        field,
        "route groups come either from a shared route table (`routes`) or from path prefixes (`route_group`), not both",
    )
    .kind_of(ConfigErrorKind::Conflict)
}
