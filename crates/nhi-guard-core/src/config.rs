//! [`ConfigError`]: the one configuration error of every control and of the
//! facade's builder: which control, which field, what kind of problem, and a
//! message for people.
//!
//! ```
//! use nhi_guard_core::config::{ConfigError, ConfigErrorKind};
//!
//! let e = ConfigError::new("rate_limit", "limit.cost", "must be at least 1");
//! assert_eq!((e.control(), e.field(), e.kind()), ("rate_limit", "limit.cost", ConfigErrorKind::Invalid));
//! assert_eq!(e.to_string(), "rate_limit: `limit.cost`: must be at least 1");
//! ```

use std::borrow::Cow;
use std::fmt;

/// What kind of problem a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A value is not acceptable (out of range, malformed, empty).
    Invalid,
    /// Something the configuration needs is absent.
    Missing,
    /// Two parts of the configuration disagree (two rules overlap, two resolvers
    /// differ, a name is used twice).
    Conflict,
}

impl ConfigErrorKind {
    /// `invalid`, `missing` or `conflict`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Missing => "missing",
            Self::Conflict => "conflict",
        }
    }
}

/// An invalid configuration: the control (`identity`, `scope`, `rate_limit`,
/// `risk`, `audit`, `redis`, `registry`, `stack`), the field at fault, the kind of
/// problem and a message. It never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    control: &'static str,
    field: Cow<'static, str>,
    kind: ConfigErrorKind,
    message: String,
}

impl ConfigError {
    /// An [`ConfigErrorKind::Invalid`] value of `control`'s `field`.
    pub fn new(
        control: &'static str,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            control,
            field: field.into(),
            kind: ConfigErrorKind::Invalid,
            message: message.into(),
        }
    }

    /// The same error of another kind.
    #[must_use]
    pub fn kind_of(mut self, kind: ConfigErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The control at fault.
    pub fn control(&self) -> &'static str {
        self.control
    }

    /// The field at fault (`limit.cost`, `thresholds.block`, `issuer.audience`...).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What kind of problem it is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// What is wrong, for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`: {}", self.control, self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}
