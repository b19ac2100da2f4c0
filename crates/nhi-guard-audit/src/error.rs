//! Configuration and delivery errors.

use std::fmt;

pub use nhi_guard_core::config::ConfigError;

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
