//! Configuration errors: the one [`ConfigError`] of every control.

pub use nhi_guard_core::config::ConfigError;
