//! The route table from a configuration file: one [`RouteEntry`] per route, each
//! field the builder value of its control (`Methods` from core, `Require` from
//! scope, `RouteRisk` from risk, `RateGroup` from rate limit, all deserializable
//! with their builders' checks), so a file and code build the same table.
//!
//! ```
//! use nhi_guard::config::{RouteEntry, routes_from_entries};
//!
//! #[derive(serde::Deserialize)]
//! struct File {
//!     route: Vec<RouteEntry>,
//! }
//! let file: File = toml::from_str(r#"
//!     [[route]]
//!     method = "GET"
//!     path = "/orders/{id}"
//!     require = { all_of = ["orders:read"] }
//!     risk = { group = "orders", resource = "id" }
//!     rate_group = "orders"
//! "#).unwrap();
//! let routes = routes_from_entries(file.route.iter().map(|r| (r.clone(), "route[0]".to_owned()))).unwrap();
//! assert_eq!(routes.routes().len(), 1);
//! ```

use nhi_guard_core::config::{ConfigError, ConfigErrorKind};
use nhi_guard_core::route::{Methods, Route, Routes};
use nhi_guard_ratelimit::RateGroup;
use nhi_guard_risk::RouteRisk;
use nhi_guard_scope::Require;

/// One `[[route]]` of a configuration file:
///
/// ```toml
/// [[route]]
/// method = "POST"                           # or ["GET", "HEAD"], or "ANY"
/// path = "/inventory/{sku}/reserve"         # {param}, {*rest}, literal segments
/// require = { all_of = ["inventory:write"] } # or { any_of = [...] }, { public = true },
///                                           # { authenticated = true }; none: the fallback
/// risk = { scarce = true }                  # group, resource, sensitivity, scarce, capacity
/// rate_group = "reservations"               # shares the group's per-route quota
/// ```
///
/// Unknown fields are errors.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// The methods (`HEAD` is served by `GET`).
    pub method: Methods,
    /// The pattern.
    pub path: String,
    /// The scope requirement (`nhi_guard::scope::Require`).
    pub require: Option<Require>,
    /// The risk attributes (`nhi_guard::risk::RouteRisk`).
    pub risk: Option<RouteRisk>,
    /// The rate-limit group (`nhi_guard::ratelimit::RateGroup`).
    pub rate_group: Option<RateGroup>,
}

impl RouteEntry {
    /// The route of the table, with its attributes.
    pub fn into_route(self) -> Route {
        let mut route = Route::new(self.method, self.path);
        if let Some(require) = self.require {
            route = route.with(require);
        }
        if let Some(risk) = self.risk {
            route = route.with(risk);
        }
        if let Some(group) = self.rate_group {
            route = route.with(group);
        }
        route
    }
}

/// The table of `entries`, each given with where it was written (a file's
/// `path:line`, say), which an error names: a bad pattern names its entry, two
/// equally specific routes whose methods overlap name the later one (the message
/// names both patterns).
///
/// # Errors
/// The first entry that cannot join the table, as `ConfigError` of control
/// `routes` and field `route[WHERE]`.
pub fn routes_from_entries(
    entries: impl IntoIterator<Item = (RouteEntry, String)>,
) -> Result<Routes, ConfigError> {
    let entries: Vec<(Route, String)> = entries
        .into_iter()
        .map(|(e, place)| (e.into_route(), place))
        .collect();
    let build = |routes: &[(Route, String)]| {
        routes
            .iter()
            .fold(Routes::builder(), |b, (r, _)| b.route(r.clone()))
            .build()
    };
    build(&entries).map_err(|first| {
        // Pin the error on the entry that caused it: the shortest prefix that fails
        // ends with it (start-up only, and only when the table is wrong).
        (1..=entries.len())
            .find_map(|end| {
                let e = build(&entries[..end]).err()?;
                let place = &entries[end - 1].1;
                Some(
                    ConfigError::new("routes", format!("route[{place}]"), e.message().to_owned())
                        .kind_of(ConfigErrorKind::Invalid),
                )
            })
            .unwrap_or_else(|| first.into())
    })
}
