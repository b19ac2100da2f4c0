//! The validated snapshot: [`Inventory`], its builder and the rate-limit tiers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::error::Location;
use super::{ApiKeyHash, ClientRecord, InventoryError, InventoryErrorKind};
use crate::hash::FxBuildHasher;
use crate::principal::ClientId;

type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// The name of the tier a client gets when it names none.
pub const DEFAULT_TIER: &str = "default";

/// How long before a client's expiry it is flagged as expiring soon, unless
/// configured otherwise.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A rate-limit quota: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Tier {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests that may arrive at once on top of an idle client's allowance.
    pub burst: u32,
}

impl Tier {
    /// The quota of the built-in `default` tier when the inventory does not define
    /// one: 10 requests per second, bursts of 20.
    pub const BUILT_IN_DEFAULT: Tier = Tier {
        per_second: 10,
        burst: 20,
    };
}

/// A validated, immutable snapshot of the client inventory and its tiers.
#[derive(Debug)]
pub struct Inventory {
    // Fixed at build time and never filled from requests: the unkeyed hasher is
    // safe for lookups of any key, and several happen per request.
    clients: FxMap<ClientId, Arc<ClientRecord>>,
    /// The clients in the order they were given (entry order of the file), for
    /// errors that name an entry.
    pub(super) entries: Vec<Arc<ClientRecord>>,
    by_api_key: FxMap<ApiKeyHash, Arc<ClientRecord>>,
    by_spiffe_id: FxMap<Arc<str>, Arc<ClientRecord>>,
    tiers: FxMap<Arc<str>, Tier>,
    expiry_warning: Duration,
    max_key_age: Option<Duration>,
    /// Per-tier maximum key ages, overriding `max_key_age`.
    tier_key_ages: FxMap<Arc<str>, Duration>,
}

impl Inventory {
    /// Starts an inventory in code.
    pub fn builder() -> InventoryBuilder {
        InventoryBuilder::default()
    }

    /// Parses and validates a TOML inventory (schema in the module docs).
    ///
    /// # Errors
    /// [`InventoryError`] naming the client or tier and the field: unknown fields,
    /// missing owner, purpose or expiry, duplicate ids, bad CIDRs, malformed hashes,
    /// undefined tiers.
    pub fn from_toml_str(text: &str) -> Result<Self, InventoryError> {
        crate::inventory_toml::parse(text)?.build()
    }

    /// Reads and validates a TOML inventory file.
    ///
    /// # Errors
    /// As [`Inventory::from_toml_str`], plus I/O errors naming the path.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, InventoryError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            InventoryError::file(
                InventoryErrorKind::Io,
                None,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_toml_str(&text)
    }

    /// The client with this id.
    pub fn client(&self, id: &str) -> Option<&Arc<ClientRecord>> {
        self.clients.get(id)
    }

    /// The client that was issued the API key with this hash.
    pub fn client_by_api_key(&self, hash: &ApiKeyHash) -> Option<&Arc<ClientRecord>> {
        self.by_api_key.get(hash)
    }

    /// The client registered for this SPIFFE id.
    pub fn client_by_spiffe_id(&self, id: &str) -> Option<&Arc<ClientRecord>> {
        self.by_spiffe_id.get(id)
    }

    /// The quota of a tier; `default` falls back to [`Tier::BUILT_IN_DEFAULT`].
    pub fn tier(&self, name: &str) -> Option<Tier> {
        self.tiers
            .get(name)
            .copied()
            .or_else(|| (name == DEFAULT_TIER).then_some(Tier::BUILT_IN_DEFAULT))
    }

    /// All tiers defined by the inventory (without the built-in default).
    pub fn tiers(&self) -> impl Iterator<Item = (&str, Tier)> + '_ {
        self.tiers.iter().map(|(k, v)| (&**k, *v))
    }

    /// All clients, sorted by id.
    pub fn clients(&self) -> Vec<Arc<ClientRecord>> {
        let mut all: Vec<_> = self.clients.values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// How long before expiry a client is flagged as expiring soon.
    pub fn expiry_warning(&self) -> Duration {
        self.expiry_warning
    }

    /// The oldest an API key with a `created` date may be, if limited.
    pub fn max_key_age(&self) -> Option<Duration> {
        self.max_key_age
    }

    /// The oldest a key of a client of `tier` may be: the tier's own maximum, else
    /// the inventory's.
    pub fn max_key_age_for(&self, tier: &str) -> Option<Duration> {
        self.tier_key_ages.get(tier).copied().or(self.max_key_age)
    }
}

/// Builds an [`Inventory`] in code.
#[derive(Debug, Clone)]
#[must_use]
pub struct InventoryBuilder {
    clients: Vec<ClientRecord>,
    tiers: Vec<(String, Tier)>,
    expiry_warning: Duration,
    max_key_age: Option<Duration>,
    tier_key_ages: Vec<(String, Duration)>,
}

impl Default for InventoryBuilder {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            tiers: Vec::new(),
            expiry_warning: DEFAULT_EXPIRY_WARNING,
            max_key_age: None,
            tier_key_ages: Vec::new(),
        }
    }
}

impl InventoryBuilder {
    /// Adds a client.
    pub fn client(mut self, record: ClientRecord) -> Self {
        self.clients.push(record);
        self
    }

    /// Defines a tier.
    pub fn tier(mut self, name: impl Into<String>, tier: Tier) -> Self {
        self.tiers.push((name.into(), tier));
        self
    }

    /// Sets how long before expiry a client is flagged as expiring soon
    /// (default 14 days).
    pub fn expiry_warning(mut self, window: Duration) -> Self {
        self.expiry_warning = window;
        self
    }

    /// Refuses API keys issued (their `created` date) longer ago than `age`: a key
    /// must be rotated before then. Keys registered without a date are not limited.
    pub fn max_key_age(mut self, age: Duration) -> Self {
        self.max_key_age = Some(age);
        self
    }

    /// Sets the maximum key age of the clients of `tier` (which must be defined),
    /// overriding [`InventoryBuilder::max_key_age`] for them.
    pub fn tier_max_key_age(mut self, tier: impl Into<String>, age: Duration) -> Self {
        self.tier_key_ages.push((tier.into(), age));
        self
    }

    /// Validates the whole inventory.
    ///
    /// # Errors
    /// [`InventoryError`] for duplicate client ids, API keys shared by two clients,
    /// SPIFFE ids shared by two clients, a zero quota, or a client naming a tier
    /// that is not defined.
    pub fn build(self) -> Result<Inventory, InventoryError> {
        let mut tiers = FxMap::default();
        for (name, tier) in self.tiers {
            let err = |field: &str, message: &str| InventoryError {
                kind: InventoryErrorKind::Invalid,
                location: Location::Tier(name.clone()),
                field: Some(field.to_owned()),
                message: message.to_owned(),
            };
            if tier.per_second == 0 {
                return Err(err("per_second", "must be at least 1"));
            }
            if tier.burst == 0 {
                return Err(err("burst", "must be at least 1"));
            }
            if tiers.insert(Arc::<str>::from(name.as_str()), tier).is_some() {
                return Err(InventoryError {
                    kind: InventoryErrorKind::Duplicate,
                    location: Location::Tier(name),
                    field: None,
                    message: "defined twice".into(),
                });
            }
        }
        let mut inv = Inventory {
            clients: FxMap::with_capacity_and_hasher(self.clients.len(), FxBuildHasher::default()),
            entries: Vec::with_capacity(self.clients.len()),
            by_api_key: FxMap::default(),
            by_spiffe_id: FxMap::default(),
            tiers,
            expiry_warning: self.expiry_warning,
            max_key_age: self.max_key_age,
            tier_key_ages: FxMap::default(),
        };
        for (tier, age) in self.tier_key_ages {
            if tier != DEFAULT_TIER && !inv.tiers.contains_key(tier.as_str()) {
                return Err(InventoryError {
                    kind: InventoryErrorKind::UnknownTier,
                    location: Location::Tier(tier),
                    field: Some("max_key_age_days".into()),
                    message: "a maximum key age for a tier that is not defined".into(),
                });
            }
            inv.tier_key_ages.insert(Arc::from(tier.as_str()), age);
        }
        for (index, record) in self.clients.into_iter().enumerate() {
            let id = record.id.to_string();
            let err = |field: &str, kind, message: String| {
                InventoryError::client(Some(id.clone()), Some(index), field, kind, message)
            };
            if record.tier() != DEFAULT_TIER && !inv.tiers.contains_key(record.tier()) {
                return Err(err(
                    "tier",
                    InventoryErrorKind::UnknownTier,
                    format!("tier {:?} is not defined under [tiers]", record.tier()),
                ));
            }
            let record = Arc::new(record);
            for hash in &record.api_keys {
                if let Some(other) = inv.by_api_key.insert(*hash, record.clone()) {
                    return Err(err(
                        "api_keys",
                        InventoryErrorKind::Duplicate,
                        format!("an API key hash is also registered to client `{}`", other.id()),
                    ));
                }
            }
            for sid in &record.spiffe_ids {
                if let Some(other) = inv.by_spiffe_id.insert(sid.clone(), record.clone()) {
                    return Err(err(
                        "spiffe_ids",
                        InventoryErrorKind::Duplicate,
                        format!("{sid:?} is also registered to client `{}`", other.id()),
                    ));
                }
            }
            inv.entries.push(record.clone());
            if inv.clients.insert(record.id.clone(), record).is_some() {
                return Err(err(
                    "id",
                    InventoryErrorKind::Duplicate,
                    "duplicate client id".into(),
                ));
            }
        }
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{DAY, client};
    use super::*;

    const T0: u64 = 1_800_000_000;
    const GOLD: Tier = Tier {
        per_second: 50,
        burst: 100,
    };

    fn record(id: &str) -> ClientRecord {
        client(id, T0).build().expect("valid record")
    }

    #[test]
    fn the_default_tier_falls_back_to_the_built_in_quota() {
        let inv = Inventory::builder().build().expect("valid inventory");
        assert_eq!(inv.tier(DEFAULT_TIER), Some(Tier::BUILT_IN_DEFAULT));
        assert_eq!(
            Tier::BUILT_IN_DEFAULT,
            Tier {
                per_second: 10,
                burst: 20
            }
        );
        assert_eq!(inv.tier("gold"), None);
        assert_eq!(inv.tiers().count(), 0, "the built-in default is not listed");

        let own_default = Tier {
            per_second: 1,
            burst: 2,
        };
        let inv = Inventory::builder()
            .tier("default", own_default)
            .tier("gold", GOLD)
            .build()
            .expect("valid inventory");
        assert_eq!(inv.tier(DEFAULT_TIER), Some(own_default));
        assert_eq!(inv.tier("gold"), Some(GOLD));
        assert_eq!(inv.tier("Gold"), None);
        let mut tiers: Vec<_> = inv.tiers().collect();
        tiers.sort_by_key(|(name, _)| *name);
        assert_eq!(tiers, [("default", own_default), ("gold", GOLD)]);
    }

    #[test]
    fn looks_clients_up_by_id_api_key_and_spiffe_id() {
        let sid = "spiffe://example.test/ns/prod/sa/b";
        let inv = Inventory::builder()
            .client(
                client("b", T0)
                    .api_key("key-b")
                    .spiffe_id(sid)
                    .build()
                    .expect("valid record"),
            )
            .client(record("a"))
            .build()
            .expect("valid inventory");
        assert_eq!((inv.len(), inv.is_empty()), (2, false));
        assert!(inv.client("nobody").is_none());
        assert!(inv.client("B").is_none(), "ids are case-sensitive");
        assert_eq!(inv.client("a").map(|r| r.id().as_str()), Some("a"));
        assert_eq!(
            inv.client_by_api_key(&ApiKeyHash::of_key(b"key-b"))
                .map(|r| r.id().as_str()),
            Some("b")
        );
        assert!(inv.client_by_api_key(&ApiKeyHash::of_key(b"key-a")).is_none());
        assert_eq!(inv.client_by_spiffe_id(sid).map(|r| r.id().as_str()), Some("b"));
        assert!(
            inv.client_by_spiffe_id("spiffe://example.test/ns/prod/sa/a")
                .is_none()
        );
        // Sorted by id, not in the order given.
        let ids: Vec<_> = inv.clients().iter().map(|r| r.id().to_string()).collect();
        assert_eq!(ids, ["a", "b"]);

        let empty = Inventory::builder().build().expect("valid inventory");
        assert_eq!((empty.len(), empty.is_empty()), (0, true));
        assert!(empty.clients().is_empty());
    }

    #[test]
    fn a_tier_key_age_overrides_the_inventory_maximum() {
        let inv = Inventory::builder()
            .tier("partner", GOLD)
            .tier("standard", GOLD)
            .max_key_age(90 * DAY)
            .tier_max_key_age("partner", 30 * DAY)
            .build()
            .expect("valid inventory");
        assert_eq!(inv.max_key_age(), Some(90 * DAY));
        assert_eq!(inv.max_key_age_for("partner"), Some(30 * DAY));
        assert_eq!(inv.max_key_age_for("standard"), Some(90 * DAY));
        assert_eq!(inv.max_key_age_for(DEFAULT_TIER), Some(90 * DAY));

        // Without an inventory maximum, only the overridden tier is limited; the
        // default tier may be given one without being defined.
        let inv = Inventory::builder()
            .tier("standard", GOLD)
            .tier_max_key_age(DEFAULT_TIER, 7 * DAY)
            .build()
            .expect("valid inventory");
        assert_eq!(inv.max_key_age(), None);
        assert_eq!(inv.max_key_age_for("standard"), None);
        assert_eq!(inv.max_key_age_for(DEFAULT_TIER), Some(7 * DAY));

        let e = Inventory::builder()
            .tier_max_key_age("nope", DAY)
            .build()
            .expect_err("undefined tier");
        assert_eq!(e.kind(), InventoryErrorKind::UnknownTier);
        assert_eq!(
            e.to_string(),
            "tier `nope`, field `max_key_age_days`: a maximum key age for a tier that is not defined"
        );
    }

    #[test]
    fn expiry_warning_defaults_to_fourteen_days() {
        assert_eq!(DEFAULT_EXPIRY_WARNING, 14 * DAY);
        let inv = Inventory::builder().build().expect("valid inventory");
        assert_eq!(inv.expiry_warning(), DEFAULT_EXPIRY_WARNING);
        assert_eq!(inv.max_key_age(), None);
        let inv = Inventory::builder()
            .expiry_warning(3 * DAY)
            .build()
            .expect("valid inventory");
        assert_eq!(inv.expiry_warning(), 3 * DAY);
    }

    #[test]
    fn build_rejects_bad_tiers_and_clients_naming_their_entry() {
        let e = Inventory::builder()
            .tier(
                "gold",
                Tier {
                    per_second: 1,
                    burst: 0,
                },
            )
            .build()
            .expect_err("zero burst");
        assert_eq!(
            (e.kind(), e.field(), e.client_id()),
            (InventoryErrorKind::Invalid, Some("burst"), None)
        );
        assert_eq!(e.to_string(), "tier `gold`, field `burst`: must be at least 1");

        let e = Inventory::builder()
            .tier("gold", GOLD)
            .tier("gold", GOLD)
            .build()
            .expect_err("tier defined twice");
        assert_eq!((e.kind(), e.field()), (InventoryErrorKind::Duplicate, None));
        assert_eq!(e.to_string(), "tier `gold`: defined twice");

        let e = Inventory::builder()
            .client(record("a"))
            .client(client("b", T0).tier("gold").build().expect("valid record"))
            .build()
            .expect_err("undefined tier");
        assert_eq!(
            (e.kind(), e.client_id(), e.field()),
            (InventoryErrorKind::UnknownTier, Some("b"), Some("tier"))
        );
        assert_eq!(
            e.to_string(),
            "client `b` ([[client]] entry 2), field `tier`: tier \"gold\" is not defined under [tiers]"
        );

        let e = Inventory::builder()
            .client(client("a", T0).api_key("shared").build().expect("valid record"))
            .client(client("b", T0).api_key("shared").build().expect("valid record"))
            .build()
            .expect_err("shared key");
        assert_eq!(
            e.to_string(),
            "client `b` ([[client]] entry 2), field `api_keys`: an API key hash is also registered to \
             client `a`"
        );

        let e = Inventory::builder()
            .client(record("a"))
            .client(record("a"))
            .build()
            .expect_err("duplicate id");
        assert_eq!(
            (e.kind(), e.field(), e.to_string().contains("entry 2")),
            (InventoryErrorKind::Duplicate, Some("id"), true)
        );
    }
}
