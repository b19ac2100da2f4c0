//! Conditions every client of an inventory must meet: [`InventoryRequirement`].

use std::sync::Arc;

use super::{ClientRecord, Inventory, InventoryError, InventoryErrorKind};

/// A condition every client of an inventory must meet for a control to stay safe,
/// registered with [`ClientRegistry::require`]: checked against the inventory
/// served when it is registered and, by [`InMemoryRegistry`], against every
/// inventory it is asked to swap in, so that a reload cannot break it.
///
/// The identity layer registers [`InventoryRequirement::trusted_issuers`] when it
/// is built.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use nhi_guard_core::registry::{ClientRecord, Inventory, InventoryRequirement};
///
/// let expires = SystemTime::now() + Duration::from_secs(86_400 * 90);
/// let inventory = Inventory::builder()
///     .client(ClientRecord::builder("billing-export", "finance@example.com", "Nightly export", expires).build().unwrap())
///     .build()
///     .unwrap();
/// // One issuer: clients need not list it.
/// assert!(InventoryRequirement::trusted_issuers(["https://a.example.com"]).check(&inventory).is_ok());
/// // Two: every client must list its issuers.
/// let two = InventoryRequirement::trusted_issuers(["https://a.example.com", "https://b.example.com"]);
/// let err = two.check(&inventory).unwrap_err();
/// assert_eq!((err.client_id(), err.field()), (Some("billing-export"), Some("issuers")));
/// ```
///
/// [`ClientRegistry::require`]: super::ClientRegistry::require
/// [`InMemoryRegistry`]: super::InMemoryRegistry
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InventoryRequirement {
    kind: RequirementKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RequirementKind {
    /// Sorted, without duplicates.
    TrustedIssuers(Arc<[Arc<str>]>),
}

impl InventoryRequirement {
    /// Access tokens of these issuers are accepted. With more than one, every
    /// client must list the issuers whose tokens may name it (`issuers`), or a
    /// token of one issuer naming another issuer's client would be accepted; with
    /// one, nothing is required. In both cases a client whose `issuers` lists none
    /// of the trusted issuers (a typo, or a trailing slash that the tokens' `iss`
    /// lacks) can never present a token: the check logs one warning naming such a
    /// client, without failing (it may still use an API key or a certificate).
    pub fn trusted_issuers<I>(issuers: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<Arc<str>>,
    {
        let mut list: Vec<Arc<str>> = issuers.into_iter().map(Into::into).collect();
        list.sort_unstable();
        list.dedup();
        Self {
            kind: RequirementKind::TrustedIssuers(list.into()),
        }
    }

    /// Checks every client of `inventory`.
    ///
    /// # Errors
    /// [`InventoryError`] naming the first client (in entry order) that does not
    /// meet the requirement, its entry and the field.
    pub fn check(&self, inventory: &Inventory) -> Result<(), InventoryError> {
        self.check_entries(
            inventory
                .entries
                .iter()
                .enumerate()
                .map(|(i, record)| (Some(i), &**record)),
        )
    }

    /// Checks these clients, for a registry that holds no [`Inventory`].
    ///
    /// # Errors
    /// [`InventoryError`] naming the first client that does not meet the
    /// requirement, and the field.
    pub fn check_clients<'a>(
        &self,
        clients: impl IntoIterator<Item = &'a ClientRecord>,
    ) -> Result<(), InventoryError> {
        self.check_entries(clients.into_iter().map(|record| (None, record)))
    }

    fn check_entries<'a>(
        &self,
        entries: impl Iterator<Item = (Option<usize>, &'a ClientRecord)>,
    ) -> Result<(), InventoryError> {
        let RequirementKind::TrustedIssuers(trusted) = &self.kind;
        if trusted.is_empty() {
            return Ok(());
        }
        let mut unlisted: Option<(Option<usize>, &ClientRecord)> = None;
        let mut more_unlisted = 0usize;
        let mut untrusted: Option<&ClientRecord> = None;
        let mut more_untrusted = 0usize;
        for (index, record) in entries {
            if record.issuers.is_empty() {
                if trusted.len() > 1 {
                    match unlisted {
                        None => unlisted = Some((index, record)),
                        Some(_) => more_unlisted += 1,
                    }
                }
            } else if !record.issuers.iter().any(|iss| trusted.contains(iss)) {
                match untrusted {
                    None => untrusted = Some(record),
                    Some(_) => more_untrusted += 1,
                }
            }
        }
        if let Some((index, record)) = unlisted {
            let listed = trusted
                .iter()
                .map(|iss| format!("{iss:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let more = match more_unlisted {
                0 => String::new(),
                1 => "; 1 more client lists none either".to_owned(),
                n => format!("; {n} more clients list none either"),
            };
            return Err(InventoryError::client(
                Some(record.id().to_string()),
                index,
                "issuers",
                InventoryErrorKind::Missing,
                format!(
                    "missing: tokens of {} issuers are trusted ({listed}), so every client must list \
                     the issuers whose tokens may name it{more}",
                    trusted.len()
                ),
            ));
        }
        if let Some(record) = untrusted {
            tracing::warn!(
                target: "nhi_guard::registry",
                client_id = %record.id(),
                issuers = ?record.issuers(),
                trusted = ?trusted,
                more_clients = more_untrusted,
                "client lists no trusted issuer, so its tokens are refused \
                 (issuers are compared exactly, trailing slash included)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, B, inventory, record};
    use super::*;

    #[test]
    fn one_trusted_issuer_requires_nothing() {
        let inv = inventory(&[("plain", &[]), ("bound-elsewhere", &[B])]);
        assert_eq!(InventoryRequirement::trusted_issuers([A]).check(&inv), Ok(()));
        assert_eq!(
            InventoryRequirement::trusted_issuers(Vec::<Arc<str>>::new()).check(&inv),
            Ok(())
        );
    }

    #[test]
    fn several_trusted_issuers_require_every_client_to_list_its_issuers() {
        let two = InventoryRequirement::trusted_issuers([A, B]);
        assert_eq!(two.check(&inventory(&[("x", &[A]), ("y", &[A, B])])), Ok(()));
        let e = two
            .check(&inventory(&[("x", &[A]), ("y", &[]), ("z", &[])]))
            .expect_err("clients without issuers");
        assert_eq!(e.kind(), InventoryErrorKind::Missing);
        assert_eq!(e.client_id(), Some("y"));
        assert_eq!(e.field(), Some("issuers"));
        assert_eq!(
            e.to_string(),
            "client `y` ([[client]] entry 2), field `issuers`: missing: tokens of 2 issuers are trusted \
             (\"https://a.example.com\", \"https://b.example.com/\"), so every client must list the issuers \
             whose tokens may name it; 1 more client lists none either"
        );
        // The same through the registry's clients (no entry numbers).
        let e = two
            .check_clients([&record("y", &[])])
            .expect_err("client without issuers");
        assert!(
            e.to_string().starts_with("client `y`, field `issuers`: missing"),
            "{e}"
        );
        // Order and duplicates of the trusted list do not make another requirement.
        assert_eq!(two, InventoryRequirement::trusted_issuers([B, A, B]));
    }
}
