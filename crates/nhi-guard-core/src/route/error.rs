//! The error of an invalid route table.

use std::fmt;

use crate::config::{ConfigError, ConfigErrorKind};

/// The kind of a [`RouteError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouteErrorKind {
    /// A pattern does not parse.
    InvalidPattern,
    /// Two equally specific routes overlap.
    Conflict,
    /// A route lists no method.
    NoMethod,
}

/// An invalid route table, naming the route at fault (`METHODS pattern`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    kind: RouteErrorKind,
    route: String,
    message: String,
}

impl RouteError {
    /// An error of `kind` about `route` (`METHODS pattern`).
    pub fn new(kind: RouteErrorKind, route: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            route: route.to_owned(),
            message: message.into(),
        }
    }

    /// What is wrong.
    pub fn kind(&self) -> RouteErrorKind {
        self.kind
    }

    /// The route at fault (`METHODS pattern`).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The message, without the route.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route `{}`: {}", self.route, self.message)
    }
}

impl std::error::Error for RouteError {}

impl From<RouteError> for ConfigError {
    /// Control `routes`, the route as the field; overlapping routes are a conflict,
    /// a route without methods a missing value.
    fn from(e: RouteError) -> Self {
        let kind = match e.kind {
            RouteErrorKind::Conflict => ConfigErrorKind::Conflict,
            RouteErrorKind::NoMethod => ConfigErrorKind::Missing,
            _ => ConfigErrorKind::Invalid,
        };
        ConfigError::new("routes", e.route, e.message).kind_of(kind)
    }
}
