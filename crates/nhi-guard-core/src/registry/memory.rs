//! [`InMemoryRegistry`]: one snapshot served without locks, swapped atomically.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::{
    ApiKeyHash, ClientRecord, ClientRegistry, Inventory, InventoryError, InventoryRequirement, Tier,
};

/// An in-memory registry serving one [`Inventory`] snapshot, replaceable at run time
/// without locks on the read path.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use nhi_guard_core::registry::{ClientRecord, ClientRegistry, InMemoryRegistry, Inventory};
///
/// let expires = SystemTime::now() + Duration::from_secs(86_400 * 90);
/// let inventory = Inventory::builder()
///     .client(ClientRecord::builder("billing-export", "finance@example.com", "Nightly export", expires).build().unwrap())
///     .build()
///     .unwrap();
/// let registry = InMemoryRegistry::new(inventory);
/// assert!(registry.client("billing-export").is_some());
///
/// registry.replace(Inventory::builder().build().unwrap()).unwrap();
/// assert!(registry.client("billing-export").is_none());
/// ```
#[derive(Debug)]
pub struct InMemoryRegistry {
    current: ArcSwap<Inventory>,
    /// Bumped after each swap ([`ClientRegistry::generation`]).
    generation: AtomicU64,
    /// Held while a replacement is checked and stored, so that a requirement
    /// registered at the same time is checked against the inventory that stays.
    requirements: Mutex<Vec<InventoryRequirement>>,
}

impl InMemoryRegistry {
    /// Serves `inventory`, and sets the inventory gauges
    /// ([`metrics::inventory`](crate::metrics::inventory)).
    pub fn new(inventory: Inventory) -> Self {
        let registry = Self {
            current: ArcSwap::from_pointee(inventory),
            generation: AtomicU64::new(0),
            requirements: Mutex::new(Vec::new()),
        };
        crate::metrics::inventory(&registry, SystemTime::now());
        registry
    }

    fn requirements_lock(&self) -> MutexGuard<'_, Vec<InventoryRequirement>> {
        // The vector is only pushed to: a panic elsewhere cannot leave it torn.
        self.requirements.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The requirements registered with [`ClientRegistry::require`] that every
    /// replacement inventory is checked against.
    pub fn requirements(&self) -> Vec<InventoryRequirement> {
        self.requirements_lock().clone()
    }

    /// Loads a TOML file.
    ///
    /// # Errors
    /// As [`Inventory::from_toml_file`].
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, InventoryError> {
        Inventory::from_toml_file(path).map(Self::new)
    }

    /// Atomically replaces the inventory, after checking it against every
    /// registered [`InventoryRequirement`]. Requests already holding a record keep
    /// it; the next look-up sees the new snapshot. The inventory gauges
    /// ([`metrics::inventory`](crate::metrics::inventory)) follow.
    ///
    /// # Errors
    /// [`InventoryError`] naming the client and field of the first requirement
    /// the new inventory does not meet; the current inventory stays.
    pub fn replace(&self, inventory: Inventory) -> Result<(), InventoryError> {
        let requirements = self.requirements_lock();
        for requirement in requirements.iter() {
            requirement.check(&inventory)?;
        }
        self.current.store(Arc::new(inventory));
        // After the store: whoever reads the new number reads the new inventory.
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(requirements);
        crate::metrics::inventory(self, SystemTime::now());
        tracing::info!(target: "nhi_guard::registry", "client inventory replaced");
        Ok(())
    }

    /// Re-reads a TOML file and swaps it in; on error the current inventory stays.
    ///
    /// # Errors
    /// As [`Inventory::from_toml_file`] and [`InMemoryRegistry::replace`].
    pub fn reload_from_file(&self, path: impl AsRef<Path>) -> Result<(), InventoryError> {
        let inv = Inventory::from_toml_file(path)?;
        self.replace(inv)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Inventory> {
        self.current.load_full()
    }
}

impl ClientRegistry for InMemoryRegistry {
    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::Acquire))
    }

    fn client(&self, id: &str) -> Option<Arc<ClientRecord>> {
        self.current.load().client(id).cloned()
    }
    fn client_by_api_key(&self, hash: &ApiKeyHash) -> Option<Arc<ClientRecord>> {
        self.current.load().client_by_api_key(hash).cloned()
    }
    fn client_by_spiffe_id(&self, id: &str) -> Option<Arc<ClientRecord>> {
        self.current.load().client_by_spiffe_id(id).cloned()
    }
    fn tier(&self, name: &str) -> Option<Tier> {
        self.current.load().tier(name)
    }
    fn clients(&self) -> Vec<Arc<ClientRecord>> {
        self.current.load().clients()
    }
    fn expiry_warning(&self) -> Duration {
        self.current.load().expiry_warning()
    }
    fn max_key_age(&self) -> Option<Duration> {
        self.current.load().max_key_age()
    }
    fn max_key_age_for(&self, tier: &str) -> Option<Duration> {
        self.current.load().max_key_age_for(tier)
    }
    fn require(&self, requirement: InventoryRequirement) -> Result<(), InventoryError> {
        let mut requirements = self.requirements_lock();
        requirement.check(&self.current.load())?;
        if !requirements.contains(&requirement) {
            requirements.push(requirement);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, B, DAY, client, inventory};
    use super::*;
    use crate::registry::{DEFAULT_EXPIRY_WARNING, InventoryErrorKind, SharedRegistry};

    #[test]
    fn replace_checks_registered_requirements_and_keeps_the_current_inventory() {
        let registry = InMemoryRegistry::new(inventory(&[("x", &[A])]));
        let two = InventoryRequirement::trusted_issuers([A, B]);
        registry.require(two.clone()).expect("current inventory meets it");
        registry.require(two.clone()).expect("registered twice");
        assert_eq!(registry.requirements(), vec![two]);
        let first = registry.generation().expect("a generation");

        let e = registry
            .replace(inventory(&[("x", &[A]), ("new", &[])]))
            .expect_err("violates the requirement");
        assert_eq!((e.client_id(), e.field()), (Some("new"), Some("issuers")));
        assert!(registry.client("new").is_none());
        assert!(registry.client("x").is_some());
        assert_eq!(
            registry.generation(),
            Some(first),
            "a refused swap changes nothing"
        );

        registry
            .replace(inventory(&[("new", &[B])]))
            .expect("meets the requirement");
        assert!(registry.client("new").is_some());
        assert!(registry.client("x").is_none());
        assert_eq!(registry.generation(), Some(first + 1));
        let shared: SharedRegistry = Arc::new(registry);
        assert_eq!(shared.generation(), Some(first + 1), "through the shared handle");
    }

    #[test]
    fn require_refuses_a_current_inventory_that_does_not_meet_it() {
        let registry = Arc::new(InMemoryRegistry::new(inventory(&[("x", &[])])));
        let shared: SharedRegistry = registry.clone();
        let e = shared
            .require(InventoryRequirement::trusted_issuers([A, B]))
            .expect_err("x lists no issuers");
        assert_eq!(e.client_id(), Some("x"));
        // Not registered: a later replacement is not held to it.
        assert!(registry.requirements().is_empty());
        registry
            .replace(inventory(&[("y", &[])]))
            .expect("no requirement");
    }

    #[test]
    fn reload_from_file_keeps_the_current_inventory_on_a_violation() {
        let path =
            nhi_guard_testkit::temp::TempDir::unique("nhi-guard-core-registry-issuers").file("clients.toml");
        let client = |id: &str, issuers: &str| {
            format!(
                "[[client]]\nid = \"{id}\"\nowner = \"o@example.com\"\npurpose = \"p\"\n\
                 expires = \"2099-01-01T00:00:00Z\"\n{issuers}"
            )
        };
        std::fs::write(&path, client("x", "issuers = [\"https://a.example.com\"]\n")).expect("write");
        let registry = InMemoryRegistry::from_toml_file(&path).expect("valid file");
        registry
            .require(InventoryRequirement::trusted_issuers([A, B]))
            .expect("x lists its issuer");
        std::fs::write(
            &path,
            format!(
                "{}{}",
                client("x", "issuers = [\"https://a.example.com\"]\n"),
                client("y", "")
            ),
        )
        .expect("write");
        let e = registry.reload_from_file(&path).expect_err("y lists no issuer");
        assert!(
            e.to_string()
                .starts_with("client `y` ([[client]] entry 2), field `issuers`: missing"),
            "{e}"
        );
        assert!(registry.client("y").is_none());
        assert!(registry.client("x").is_some());
    }

    const T0: u64 = 1_800_000_000;
    const GOLD: Tier = Tier {
        per_second: 50,
        burst: 100,
    };

    fn client_toml(id: &str) -> String {
        format!(
            "[[client]]\nid = \"{id}\"\nowner = \"o@example.com\"\npurpose = \"p\"\n\
             expires = \"2099-01-01T00:00:00Z\"\n"
        )
    }

    #[test]
    fn replace_swaps_the_snapshot_whole_and_keeps_the_requirements() {
        let registry = InMemoryRegistry::new(inventory(&[("x", &[A]), ("z", &[A])]));
        let two = InventoryRequirement::trusted_issuers([A, B]);
        registry.require(two.clone()).expect("x and z list their issuer");
        // What a request in flight holds.
        let held = registry.client("x").expect("served");
        let before = registry.snapshot();

        registry
            .replace(inventory(&[("y", &[B])]))
            .expect("meets the requirement");
        // The old snapshot is whole and unchanged; the registry serves only the new.
        assert_eq!(held.id().as_str(), "x");
        assert_eq!(before.len(), 2);
        assert!(before.client("x").is_some() && before.client("y").is_none());
        let ids: Vec<_> = registry.clients().iter().map(|r| r.id().to_string()).collect();
        assert_eq!(ids, ["y"]);
        assert!(registry.client("x").is_none());
        assert_eq!(registry.snapshot().len(), 1);

        // The requirement survives the swap and still guards the next one.
        assert_eq!(registry.requirements(), vec![two]);
        let e = registry
            .replace(inventory(&[("y", &[B]), ("w", &[])]))
            .expect_err("w lists no issuer");
        assert_eq!((e.client_id(), e.field()), (Some("w"), Some("issuers")));
        assert!(registry.client("y").is_some());
        assert!(registry.client("w").is_none());
    }

    #[test]
    fn reload_from_file_keeps_the_current_inventory_when_the_file_is_bad() {
        let path =
            nhi_guard_testkit::temp::TempDir::unique("nhi-guard-core-registry-reload").file("clients.toml");
        std::fs::write(&path, client_toml("x")).expect("write");
        let registry = InMemoryRegistry::from_toml_file(&path).expect("valid file");
        assert!(registry.client("x").is_some());

        let missing = path.with_file_name("absent.toml");
        let e = registry.reload_from_file(&missing).expect_err("no such file");
        assert_eq!((e.kind(), e.field()), (InventoryErrorKind::Io, None));
        assert!(e.to_string().starts_with("inventory: cannot read "), "{e}");
        assert!(registry.client("x").is_some());

        std::fs::write(&path, format!("{}colour = \"blue\"\n", client_toml("y"))).expect("write");
        let e = registry.reload_from_file(&path).expect_err("unknown field");
        assert_eq!(
            (e.kind(), e.client_id(), e.field()),
            (InventoryErrorKind::UnknownField, Some("y"), Some("colour"))
        );
        assert!(registry.client("x").is_some());
        assert!(registry.client("y").is_none());

        std::fs::write(&path, client_toml("y")).expect("write");
        registry.reload_from_file(&path).expect("valid file");
        assert!(registry.client("x").is_none());
        assert!(registry.client("y").is_some());
    }

    #[test]
    fn serves_the_current_snapshot_through_the_trait() {
        let sid = "spiffe://example.test/ns/prod/sa/x";
        let registry = Arc::new(InMemoryRegistry::new(
            Inventory::builder()
                .tier("gold", GOLD)
                .expiry_warning(2 * DAY)
                .max_key_age(90 * DAY)
                .tier_max_key_age("gold", 30 * DAY)
                .client(
                    client("x", T0)
                        .tier("gold")
                        .api_key("key-x")
                        .spiffe_id(sid)
                        .build()
                        .expect("valid record"),
                )
                .build()
                .expect("valid inventory"),
        ));
        let shared: SharedRegistry = registry.clone();
        let id = |r: Option<Arc<ClientRecord>>| r.map(|r| r.id().to_string());
        assert_eq!(shared.tier("gold"), Some(GOLD));
        assert_eq!(shared.tier("default"), Some(Tier::BUILT_IN_DEFAULT));
        assert_eq!(shared.expiry_warning(), 2 * DAY);
        assert_eq!(shared.max_key_age(), Some(90 * DAY));
        assert_eq!(shared.max_key_age_for("gold"), Some(30 * DAY));
        assert_eq!(shared.max_key_age_for("default"), Some(90 * DAY));
        assert_eq!(
            id(shared.client_by_api_key(&ApiKeyHash::of_key(b"key-x"))),
            Some("x".into())
        );
        assert_eq!(id(shared.client_by_spiffe_id(sid)), Some("x".into()));

        registry
            .replace(Inventory::builder().build().expect("valid inventory"))
            .expect("no requirement");
        assert_eq!(shared.tier("gold"), None);
        assert_eq!(shared.expiry_warning(), DEFAULT_EXPIRY_WARNING);
        assert_eq!(shared.max_key_age(), None);
        assert_eq!(shared.max_key_age_for("gold"), None);
        assert_eq!(id(shared.client_by_api_key(&ApiKeyHash::of_key(b"key-x"))), None);
        assert_eq!(id(shared.client_by_spiffe_id(sid)), None);
        assert!(shared.clients().is_empty());
    }
}
