//! The inventory of non-human identities: who owns each client, what it is for,
//! when it expires, what it may ever do, how fast, and from where.
//!
//! An [`Inventory`] is an immutable, validated snapshot, built in code with
//! [`Inventory::builder`] or loaded from TOML with [`Inventory::from_toml_str`].
//! [`InMemoryRegistry`] serves one snapshot at a time and swaps in a new one
//! atomically: requests in flight keep the records they already hold.
//!
//! ```toml
//! [[client]]
//! id = "inventory-sync"
//! owner = "fulfilment-team@example.com"
//! purpose = "Syncs stock levels from the warehouse system"
//! expires = "2027-06-30T00:00:00Z"
//! scopes = ["orders:read", "orders:write", "inventory:read"]
//! tier = "standard"                 # optional, default "default"
//! networks = ["127.0.0.0/8"]        # optional; absent = any
//! status = "active"                 # optional: active | suspended
//! api_keys = ["sha256:<64 hex>",    # optional: SHA-256 of issued keys, or with dates:
//!   { hash = "sha256:<64 hex>", created = "2026-12-01T00:00:00Z", rotate_by = "2027-03-01T00:00:00Z" }]
//! spiffe_ids = ["spiffe://example.test/ns/prod/sa/inventory-sync"]  # optional
//! issuers = ["https://auth.example.com/"]  # optional; required with several issuers
//! labels = { team = "fulfilment" }  # optional, free-form strings
//!
//! [tiers.standard]
//! per_second = 50
//! burst = 100
//!
//! max_key_age_days = 90             # optional: this tier's maximum key age
//!
//! [keys]
//! max_age_days = 365                # optional: refuse keys created longer ago
//! ```
//!
//! # Issuers
//!
//! `issuers` lists the token issuers whose access tokens may name the client. A
//! client that lists issuers is refused a token of any other issuer, whatever the
//! number of trusted issuers. When the identity layer trusts several issuers every
//! client must list its issuers (otherwise issuer B could mint a token naming issuer
//! A's client): the layer registers an [`InventoryRequirement`] with the registry,
//! which refuses to build and, with [`InMemoryRegistry`], refuses any replacement
//! inventory with a client that lists none. API keys and client certificates do not
//! involve an issuer and are unaffected.
//!
//! An issuer is written exactly as its tokens' `iss` claim and compared byte for
//! byte, as the identity layer matches `iss` (OpenID Connect and RFC 8414 require
//! exact comparison): `https://tenant.auth0.com/` with its trailing slash and
//! `https://tenant.auth0.com` are different issuers, as are different letter cases.

mod api_key;
mod error;
mod inventory;
mod memory;
mod record;
mod requirement;
mod validate;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use self::api_key::{ApiKeyDates, ApiKeyHash};
pub use self::error::{InventoryError, InventoryErrorKind};
pub(crate) use self::error::{client_error, file_error, tier_error, with_index};
pub use self::inventory::{DEFAULT_EXPIRY_WARNING, DEFAULT_TIER, Inventory, InventoryBuilder, Tier};
pub use self::memory::InMemoryRegistry;
pub use self::record::{
    ClientRecord, ClientRecordBuilder, ClientRejection, ClientStatus, Standing, canonical_ip,
};
pub use self::requirement::InventoryRequirement;
pub use self::validate::{validate_issuer, validate_spiffe_id};

/// The source of client records that the controls consult on every request.
///
/// Look-ups are synchronous and must be fast (they sit on the hot path); a
/// registry backed by a database keeps a local snapshot and refreshes it in the
/// background, as [`InMemoryRegistry`] does with [`InMemoryRegistry::replace`].
pub trait ClientRegistry: Send + Sync + fmt::Debug + 'static {
    /// The client with this id.
    fn client(&self, id: &str) -> Option<Arc<ClientRecord>>;
    /// The client issued the API key with this hash.
    fn client_by_api_key(&self, hash: &ApiKeyHash) -> Option<Arc<ClientRecord>>;
    /// The client registered for this SPIFFE id.
    fn client_by_spiffe_id(&self, id: &str) -> Option<Arc<ClientRecord>>;
    /// The quota of a tier.
    fn tier(&self, name: &str) -> Option<Tier>;
    /// All clients (for reports), sorted by id.
    fn clients(&self) -> Vec<Arc<ClientRecord>>;
    /// A number that changes whenever any answer of this registry may change (a
    /// new inventory swapped in), so a control may keep what it derived from the
    /// registry while the number stays the same: the identity layer keeps a cached
    /// token's principal. `None` (the default): unknown, derive on every request.
    fn generation(&self) -> Option<u64> {
        None
    }
    /// How long before expiry a client is flagged as expiring soon.
    fn expiry_warning(&self) -> Duration {
        DEFAULT_EXPIRY_WARNING
    }
    /// The oldest an API key with a `created` date may be, if limited.
    fn max_key_age(&self) -> Option<Duration> {
        None
    }
    /// The oldest a key of a client of `tier` may be: the tier's own maximum, else
    /// [`ClientRegistry::max_key_age`].
    fn max_key_age_for(&self, tier: &str) -> Option<Duration> {
        let _ = tier;
        self.max_key_age()
    }
    /// Registers a condition every inventory this registry serves must meet, and
    /// checks the inventory served now. Controls call it when they are built: the
    /// identity layer requires every client to list its issuers when it trusts
    /// several.
    ///
    /// The default checks the clients served now ([`ClientRegistry::clients`])
    /// once. A registry that swaps its inventory at run time should keep the
    /// requirement and refuse a replacement that does not meet it, as
    /// [`InMemoryRegistry`] does. Controls also check at request time what they
    /// depend on, so a registry that keeps the default refuses nothing less
    /// safely: a reload that breaks a requirement shows as refused requests
    /// instead of a failed reload.
    ///
    /// A requirement stays registered for the registry's lifetime; registering an
    /// equal one again changes nothing.
    ///
    /// # Errors
    /// The inventory served now does not meet the requirement.
    fn require(&self, requirement: InventoryRequirement) -> Result<(), InventoryError> {
        requirement.check_clients(self.clients().iter().map(|record| &**record))
    }
}

/// A shared, type-erased registry.
pub type SharedRegistry = Arc<dyn ClientRegistry>;

impl<R: ClientRegistry + ?Sized> ClientRegistry for Arc<R> {
    fn client(&self, id: &str) -> Option<Arc<ClientRecord>> {
        (**self).client(id)
    }
    fn client_by_api_key(&self, hash: &ApiKeyHash) -> Option<Arc<ClientRecord>> {
        (**self).client_by_api_key(hash)
    }
    fn client_by_spiffe_id(&self, id: &str) -> Option<Arc<ClientRecord>> {
        (**self).client_by_spiffe_id(id)
    }
    fn tier(&self, name: &str) -> Option<Tier> {
        (**self).tier(name)
    }
    fn clients(&self) -> Vec<Arc<ClientRecord>> {
        (**self).clients()
    }
    fn generation(&self) -> Option<u64> {
        (**self).generation()
    }
    fn max_key_age(&self) -> Option<Duration> {
        (**self).max_key_age()
    }
    fn max_key_age_for(&self, tier: &str) -> Option<Duration> {
        (**self).max_key_age_for(tier)
    }
    fn expiry_warning(&self) -> Duration {
        (**self).expiry_warning()
    }
    fn require(&self, requirement: InventoryRequirement) -> Result<(), InventoryError> {
        (**self).require(requirement)
    }
}

#[cfg(test)]
mod test_support {
    //! Records and inventories shared by the registry's unit tests.

    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::{ClientRecord, ClientRecordBuilder, Inventory};

    pub(super) const A: &str = "https://a.example.com";
    pub(super) const B: &str = "https://b.example.com/";

    pub(super) const DAY: Duration = Duration::from_secs(86_400);

    /// A fixed instant, `secs` seconds after the epoch.
    pub(super) fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// A record builder with a fixed owner and purpose, expiring at `expires`
    /// seconds after the epoch.
    pub(super) fn client(id: &str, expires: u64) -> ClientRecordBuilder {
        ClientRecord::builder(id, "team@example.com", "tests", at(expires))
    }

    pub(super) fn record(id: &str, issuers: &[&str]) -> ClientRecord {
        let expires = SystemTime::now() + Duration::from_secs(86_400);
        issuers
            .iter()
            .fold(
                ClientRecord::builder(id, "team@example.com", "tests", expires),
                |b, iss| b.issuer(*iss),
            )
            .build()
            .expect("valid record")
    }

    pub(super) fn inventory(clients: &[(&str, &[&str])]) -> Inventory {
        clients
            .iter()
            .fold(Inventory::builder(), |b, (id, issuers)| {
                b.client(record(id, issuers))
            })
            .build()
            .expect("valid inventory")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{A, B, DAY, client, record};
    use super::*;

    /// A registry implemented by a user, with only the required methods: the
    /// default `require` checks what it serves now.
    #[derive(Debug)]
    struct Custom(Vec<Arc<ClientRecord>>);

    impl ClientRegistry for Custom {
        fn client(&self, id: &str) -> Option<Arc<ClientRecord>> {
            self.0.iter().find(|r| r.id().as_str() == id).cloned()
        }
        fn client_by_api_key(&self, _: &ApiKeyHash) -> Option<Arc<ClientRecord>> {
            None
        }
        fn client_by_spiffe_id(&self, _: &str) -> Option<Arc<ClientRecord>> {
            None
        }
        fn tier(&self, _: &str) -> Option<Tier> {
            None
        }
        fn clients(&self) -> Vec<Arc<ClientRecord>> {
            self.0.clone()
        }
    }

    #[test]
    fn default_require_checks_the_clients_served_now() {
        let two = InventoryRequirement::trusted_issuers([A, B]);
        let ok = Custom(vec![Arc::new(record("x", &[A]))]);
        assert_eq!(ok.require(two.clone()), Ok(()));
        let bad = Custom(vec![Arc::new(record("x", &[A])), Arc::new(record("y", &[]))]);
        let e = bad.require(two).expect_err("y lists no issuer");
        assert_eq!(e.client_id(), Some("y"));
    }

    #[test]
    fn trait_defaults_use_the_global_limits() {
        let custom = Custom(vec![Arc::new(record("x", &[]))]);
        assert_eq!(custom.expiry_warning(), DEFAULT_EXPIRY_WARNING);
        assert_eq!(custom.max_key_age(), None);
        assert_eq!(custom.max_key_age_for("gold"), None);
        assert!(custom.client("x").is_some());
        assert!(custom.client("y").is_none());
    }

    /// Calls through `R`'s own implementation, whatever `R` is.
    fn limits<R: ClientRegistry + ?Sized>(
        r: &R,
        tier: &str,
    ) -> (Duration, Option<Duration>, Option<Duration>) {
        (r.expiry_warning(), r.max_key_age(), r.max_key_age_for(tier))
    }

    #[test]
    fn arc_forwards_every_method_to_the_registry() {
        let gold = Tier {
            per_second: 5,
            burst: 5,
        };
        let inner = InMemoryRegistry::new(
            Inventory::builder()
                .tier("gold", gold)
                .expiry_warning(DAY)
                .max_key_age(90 * DAY)
                .tier_max_key_age("gold", 30 * DAY)
                .client(
                    client("x", 1_800_000_000)
                        .api_key("k")
                        .build()
                        .expect("valid record"),
                )
                .build()
                .expect("valid inventory"),
        );
        let expected = (DAY, Some(90 * DAY), Some(30 * DAY));
        assert_eq!(limits(&inner, "gold"), expected);
        let arc = Arc::new(inner);
        assert_eq!(limits(&arc, "gold"), expected, "Arc<InMemoryRegistry>");
        let shared: SharedRegistry = arc.clone();
        assert_eq!(limits(&shared, "gold"), expected, "SharedRegistry");
        assert_eq!(shared.tier("gold"), Some(gold));
        assert_eq!(
            shared
                .client_by_api_key(&ApiKeyHash::of_key(b"k"))
                .map(|r| r.id().to_string()),
            Some("x".to_owned())
        );
        assert_eq!(shared.clients().len(), 1);
        // `require` reaches the registry: it is kept for later replacements.
        let one = InventoryRequirement::trusted_issuers([A]);
        shared.require(one.clone()).expect("one issuer requires nothing");
        assert_eq!(arc.requirements(), vec![one]);
        let e = shared
            .require(InventoryRequirement::trusted_issuers([A, B]))
            .expect_err("x lists no issuer");
        assert_eq!(e.client_id(), Some("x"));
    }
}
