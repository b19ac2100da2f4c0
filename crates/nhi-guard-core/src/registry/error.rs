//! The error of a rejected inventory, naming the client (or tier) and the field.

use std::fmt;

/// What kind of problem an [`InventoryError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InventoryErrorKind {
    /// The file could not be read.
    Io,
    /// The text is not valid TOML.
    Syntax,
    /// A field that is not part of the schema.
    UnknownField,
    /// A required field is absent or empty.
    Missing,
    /// A field has the wrong type or an invalid value.
    Invalid,
    /// Two clients share an id, an API key or a SPIFFE id.
    Duplicate,
    /// A client names a tier that is not defined.
    UnknownTier,
}

/// A rejected inventory, naming the client (or tier) and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryError {
    pub(super) kind: InventoryErrorKind,
    pub(super) location: Location,
    pub(super) field: Option<String>,
    pub(super) message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    File,
    Client {
        id: Option<String>,
        index: Option<usize>,
    },
    Tier(String),
}

impl InventoryError {
    pub(super) fn client(
        id: Option<String>,
        index: Option<usize>,
        field: impl Into<String>,
        kind: InventoryErrorKind,
        message: String,
    ) -> Self {
        Self {
            kind,
            location: Location::Client { id, index },
            field: Some(field.into()),
            message,
        }
    }

    pub(super) fn file(kind: InventoryErrorKind, field: Option<String>, message: String) -> Self {
        Self {
            kind,
            location: Location::File,
            field,
            message,
        }
    }

    fn at_index(mut self, index: usize) -> Self {
        if let Location::Client { index: i, .. } = &mut self.location {
            *i = Some(index);
        }
        self
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> InventoryErrorKind {
        self.kind
    }

    /// The id of the client at fault, when known.
    pub fn client_id(&self) -> Option<&str> {
        match &self.location {
            Location::Client { id, .. } => id.as_deref(),
            _ => None,
        }
    }

    /// The field at fault, when there is one.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File => f.write_str("inventory")?,
            Location::Client { id, index } => {
                match id {
                    Some(id) => write!(f, "client `{id}`")?,
                    None => f.write_str("client")?,
                }
                if let Some(i) = index {
                    write!(f, " ([[client]] entry {})", i + 1)?;
                }
            }
            Location::Tier(name) => write!(f, "tier `{name}`")?,
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for InventoryError {}

pub(crate) fn client_error(
    id: Option<String>,
    index: usize,
    field: &str,
    kind: InventoryErrorKind,
    message: String,
) -> InventoryError {
    InventoryError::client(id, Some(index), field, kind, message)
}

pub(crate) fn tier_error(
    name: &str,
    field: Option<&str>,
    kind: InventoryErrorKind,
    message: String,
) -> InventoryError {
    InventoryError {
        kind,
        location: Location::Tier(name.to_owned()),
        field: field.map(str::to_owned),
        message,
    }
}

pub(crate) fn file_error(kind: InventoryErrorKind, field: Option<&str>, message: String) -> InventoryError {
    InventoryError::file(kind, field.map(str::to_owned), message)
}

pub(crate) fn with_index(e: InventoryError, index: usize) -> InventoryError {
    e.at_index(index)
}

impl From<InventoryError> for crate::config::ConfigError {
    /// The inventory's error as the controls' configuration error (control
    /// `registry`; a duplicate is a conflict).
    fn from(e: InventoryError) -> Self {
        use crate::config::{ConfigError, ConfigErrorKind};
        let kind = match e.kind {
            InventoryErrorKind::Duplicate => ConfigErrorKind::Conflict,
            _ => ConfigErrorKind::Invalid,
        };
        let field = e.field.clone().unwrap_or_else(|| "inventory".to_owned());
        ConfigError::new("registry", field, e.to_string()).kind_of(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, ConfigErrorKind};
    use crate::registry::{Inventory, Tier};

    #[test]
    fn converts_into_the_configuration_error() {
        let gold = Tier {
            per_second: 1,
            burst: 1,
        };
        let duplicate = Inventory::builder()
            .tier("gold", gold)
            .tier("gold", gold)
            .build()
            .expect_err("tier defined twice");
        let text = duplicate.to_string();
        let c = ConfigError::from(duplicate);
        assert_eq!(
            (c.control(), c.field(), c.kind(), c.message()),
            ("registry", "inventory", ConfigErrorKind::Conflict, text.as_str())
        );

        let zero = Inventory::builder()
            .tier(
                "gold",
                Tier {
                    per_second: 0,
                    burst: 1,
                },
            )
            .build()
            .expect_err("zero rate");
        let c = ConfigError::from(zero);
        assert_eq!(
            (c.field(), c.kind(), c.message()),
            (
                "per_second",
                ConfigErrorKind::Invalid,
                "tier `gold`, field `per_second`: must be at least 1"
            )
        );

        let missing = Inventory::from_toml_str("[[client]]\nid = \"x\"\n").expect_err("no owner");
        assert_eq!(missing.kind(), InventoryErrorKind::Missing);
        assert_eq!(ConfigError::from(missing).kind(), ConfigErrorKind::Invalid);
    }

    #[test]
    fn names_the_file_client_or_tier_at_fault() {
        let e = file_error(InventoryErrorKind::Syntax, None, "bad TOML".into());
        assert_eq!(
            (e.kind(), e.client_id(), e.field()),
            (InventoryErrorKind::Syntax, None, None)
        );
        assert_eq!(e.to_string(), "inventory: bad TOML");
        let e = file_error(InventoryErrorKind::UnknownField, Some("colour"), "unknown".into());
        assert_eq!(e.to_string(), "inventory, field `colour`: unknown");

        let e = client_error(
            None,
            2,
            "id",
            InventoryErrorKind::Missing,
            "must not be empty".into(),
        );
        assert_eq!(e.client_id(), None);
        assert_eq!(
            e.to_string(),
            "client ([[client]] entry 3), field `id`: must not be empty"
        );

        let e = InventoryError::client(
            Some("svc".into()),
            None,
            "owner",
            InventoryErrorKind::Missing,
            "x".into(),
        );
        assert_eq!(e.to_string(), "client `svc`, field `owner`: x");
        let e = with_index(e, 0);
        assert_eq!((e.client_id(), e.field()), (Some("svc"), Some("owner")));
        assert_eq!(
            e.to_string(),
            "client `svc` ([[client]] entry 1), field `owner`: x"
        );
        // An index applies to clients only.
        let e = with_index(
            tier_error(
                "gold",
                None,
                InventoryErrorKind::Duplicate,
                "defined twice".into(),
            ),
            4,
        );
        assert_eq!(e.to_string(), "tier `gold`: defined twice");
    }
}
