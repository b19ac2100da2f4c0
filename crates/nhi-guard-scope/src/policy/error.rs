//! The error of an invalid policy.

use std::fmt;

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
    pub(super) message: String,
}

impl PolicyError {
    pub(super) fn new(kind: PolicyErrorKind, rule: &str, message: String) -> Self {
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

impl From<nhi_guard_core::route::RouteError> for PolicyError {
    /// The route table's error as the policy's, naming the same rule.
    fn from(e: nhi_guard_core::route::RouteError) -> Self {
        use nhi_guard_core::route::RouteErrorKind;
        let kind = match e.kind() {
            RouteErrorKind::Conflict => PolicyErrorKind::Conflict,
            RouteErrorKind::NoMethod => PolicyErrorKind::NoMethod,
            _ => PolicyErrorKind::InvalidPattern,
        };
        Self::new(kind, e.route(), e.message().to_owned())
    }
}

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
