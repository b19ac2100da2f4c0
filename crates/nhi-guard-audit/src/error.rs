//! Configuration and delivery errors.

use std::fmt;

/// Invalid audit configuration, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid audit configuration `{field}`: {message}")]
pub struct ConfigError {
    field: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// The configuration field at fault (`capacity`, `allow_header`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why a flush, checkpoint or shutdown request could not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// The writer has already shut down (or its thread ended).
    WriterGone,
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WriterGone => f.write_str("the audit writer has shut down"),
        }
    }
}

impl std::error::Error for AuditError {}
