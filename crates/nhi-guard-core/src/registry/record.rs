//! One governed client: [`ClientRecord`], its builder and the governance check
//! every request makes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::Serialize;

use super::{
    ApiKeyDates, ApiKeyHash, DEFAULT_TIER, InventoryError, InventoryErrorKind, validate_issuer,
    validate_spiffe_id,
};
use crate::principal::ClientId;
use crate::scope::ScopeSet;

/// Whether a client may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientStatus {
    /// Served while unexpired.
    #[default]
    Active,
    /// Refused until reactivated.
    Suspended,
}

/// One governed non-human identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientRecord {
    pub(super) id: ClientId,
    owner: String,
    purpose: String,
    #[serde(serialize_with = "serialize_time")]
    expires: SystemTime,
    status: ClientStatus,
    scopes: ScopeSet,
    tier: Arc<str>,
    networks: Option<Vec<IpNet>>,
    #[serde(skip)]
    pub(super) api_keys: Vec<ApiKeyHash>,
    #[serde(skip)]
    api_key_dates: Vec<(ApiKeyHash, ApiKeyDates)>,
    pub(super) spiffe_ids: Vec<Arc<str>>,
    pub(super) issuers: Vec<Arc<str>>,
    labels: BTreeMap<String, String>,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::rfc3339(*t))
}

/// Why a known client is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientRejection {
    /// The client's status is `suspended`.
    Suspended,
    /// The client's registration has expired.
    Expired,
    /// The request comes from outside the client's allowed networks (or from an
    /// unknown address while the client has a network restriction).
    NetworkNotAllowed,
}

impl ClientRejection {
    /// Stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Suspended => "client_suspended",
            Self::Expired => "client_expired",
            Self::NetworkNotAllowed => "network_not_allowed",
        }
    }
}

/// A client that passed the governance check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The client expires within the registry's warning window: still served, but
    /// flagged for audit and the inventory report.
    pub expiring_soon: bool,
}

impl ClientRecord {
    /// Starts a record with its required fields.
    pub fn builder(
        id: impl Into<String>,
        owner: impl Into<String>,
        purpose: impl Into<String>,
        expires: SystemTime,
    ) -> ClientRecordBuilder {
        ClientRecordBuilder {
            id: id.into(),
            owner: owner.into(),
            purpose: purpose.into(),
            expires,
            status: ClientStatus::Active,
            scopes: ScopeSet::empty(),
            tier: DEFAULT_TIER.to_owned(),
            networks: None,
            api_keys: Vec::new(),
            api_key_dates: Vec::new(),
            spiffe_ids: Vec::new(),
            issuers: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    /// The client id.
    pub fn id(&self) -> &ClientId {
        &self.id
    }
    /// The accountable owner (a team or person).
    pub fn owner(&self) -> &str {
        &self.owner
    }
    /// Why this client exists.
    pub fn purpose(&self) -> &str {
        &self.purpose
    }
    /// When the registration expires.
    pub fn expires(&self) -> SystemTime {
        self.expires
    }
    /// Active or suspended.
    pub fn status(&self) -> ClientStatus {
        self.status
    }
    /// The scope ceiling: no credential grants more than this.
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }
    /// The rate-limit tier name.
    pub fn tier(&self) -> &str {
        &self.tier
    }
    /// Allowed source networks; `None` means any.
    pub fn networks(&self) -> Option<&[IpNet]> {
        self.networks.as_deref()
    }
    /// SHA-256 hashes of the API keys issued to this client.
    pub fn api_keys(&self) -> &[ApiKeyHash] {
        &self.api_keys
    }

    /// The dates registered with the API key of `hash` (none when the inventory
    /// gave only its hash).
    pub fn api_key_dates(&self, hash: &ApiKeyHash) -> ApiKeyDates {
        self.api_key_dates
            .iter()
            .find(|(h, _)| h == hash)
            .map(|(_, d)| *d)
            .unwrap_or_default()
    }
    /// SPIFFE ids this client's workloads present.
    pub fn spiffe_ids(&self) -> &[Arc<str>] {
        &self.spiffe_ids
    }
    /// The issuers whose access tokens may name this client, exactly as their
    /// `iss` claim (see [Issuers](super#issuers)); empty when the client lists none.
    pub fn issuers(&self) -> &[Arc<str>] {
        &self.issuers
    }
    /// Whether the client lists `iss` among its issuers (exact, byte-for-byte
    /// comparison; false when the client lists none).
    pub fn lists_issuer(&self, iss: &str) -> bool {
        self.issuers.iter().any(|listed| **listed == *iss)
    }
    /// Free-form labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// Whether `addr` is inside the allowed networks (always true without a
    /// restriction; false for an unknown address under a restriction).
    pub fn allows_address(&self, addr: Option<IpAddr>) -> bool {
        match (&self.networks, addr) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(nets), Some(ip)) => {
                let ip = canonical_ip(ip);
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }

    /// The governance check every request makes: active, unexpired, and from an
    /// allowed network. `expiry_warning` is how long before expiry the client is
    /// flagged as expiring soon.
    ///
    /// # Errors
    /// The first [`ClientRejection`] that applies, in the order suspended, expired,
    /// network.
    pub fn admit(
        &self,
        now: SystemTime,
        addr: Option<IpAddr>,
        expiry_warning: Duration,
    ) -> Result<Standing, ClientRejection> {
        if self.status == ClientStatus::Suspended {
            return Err(ClientRejection::Suspended);
        }
        if now >= self.expires {
            return Err(ClientRejection::Expired);
        }
        if !self.allows_address(addr) {
            return Err(ClientRejection::NetworkNotAllowed);
        }
        let expiring_soon = self
            .expires
            .duration_since(now)
            .is_ok_and(|left| left <= expiry_warning);
        Ok(Standing { expiring_soon })
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to IPv4 so that dual-stack
/// sockets match IPv4 networks.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Builds a [`ClientRecord`] in code.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientRecordBuilder {
    id: String,
    owner: String,
    purpose: String,
    expires: SystemTime,
    status: ClientStatus,
    scopes: ScopeSet,
    tier: String,
    networks: Option<Vec<IpNet>>,
    api_keys: Vec<ApiKeyHash>,
    api_key_dates: Vec<(ApiKeyHash, ApiKeyDates)>,
    spiffe_ids: Vec<Arc<str>>,
    issuers: Vec<Arc<str>>,
    labels: BTreeMap<String, String>,
}

impl ClientRecordBuilder {
    /// Sets the scope ceiling.
    pub fn scopes(mut self, scopes: ScopeSet) -> Self {
        self.scopes = scopes;
        self
    }
    /// Sets the tier name.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = tier.into();
        self
    }
    /// Adds an allowed network (the first call turns the restriction on).
    pub fn network(mut self, net: IpNet) -> Self {
        self.networks.get_or_insert_with(Vec::new).push(net);
        self
    }
    /// Sets the status.
    pub fn status(mut self, status: ClientStatus) -> Self {
        self.status = status;
        self
    }
    /// Registers the hash of an issued API key.
    pub fn api_key_hash(mut self, hash: ApiKeyHash) -> Self {
        self.api_keys.push(hash);
        self
    }
    /// Registers the hash of an issued API key with when it was issued and when
    /// it must be rotated.
    pub fn api_key_hash_dated(mut self, hash: ApiKeyHash, dates: ApiKeyDates) -> Self {
        self.api_keys.push(hash);
        if dates != ApiKeyDates::default() {
            self.api_key_dates.push((hash, dates));
        }
        self
    }
    /// Registers an issued API key by hashing it; the key itself is not kept.
    pub fn api_key(self, key: &str) -> Self {
        self.api_key_hash(ApiKeyHash::of_key(key.as_bytes()))
    }
    /// Registers a SPIFFE id.
    pub fn spiffe_id(mut self, id: impl Into<String>) -> Self {
        self.spiffe_ids.push(Arc::from(id.into()));
        self
    }
    /// Lists an issuer whose access tokens may name this client, written exactly
    /// as the tokens' `iss` (see [Issuers](super#issuers)). Once a client lists an
    /// issuer, tokens of every other issuer are refused for it.
    pub fn issuer(mut self, iss: impl Into<Arc<str>>) -> Self {
        self.issuers.push(iss.into());
        self
    }
    /// Adds a free-form label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Validates and builds the record.
    ///
    /// # Errors
    /// [`InventoryError`] naming the client and the field: an empty id, owner or
    /// purpose, a malformed SPIFFE id, a network with host bits set, an issuer that
    /// is not an absolute http(s) URL (see [`validate_issuer`]) or is listed twice.
    pub fn build(self) -> Result<ClientRecord, InventoryError> {
        let at = |field: &'static str, kind, message: String| {
            InventoryError::client(Some(self.id.clone()), None, field, kind, message)
        };
        if self.id.trim().is_empty() {
            return Err(at("id", InventoryErrorKind::Missing, "must not be empty".into()));
        }
        if self.id.chars().any(char::is_control) {
            return Err(at(
                "id",
                InventoryErrorKind::Invalid,
                "must not contain control characters".into(),
            ));
        }
        if self.owner.trim().is_empty() {
            return Err(at(
                "owner",
                InventoryErrorKind::Missing,
                "must not be empty".into(),
            ));
        }
        if self.purpose.trim().is_empty() {
            return Err(at(
                "purpose",
                InventoryErrorKind::Missing,
                "must not be empty".into(),
            ));
        }
        if self.tier.trim().is_empty() {
            return Err(at(
                "tier",
                InventoryErrorKind::Invalid,
                "must not be empty".into(),
            ));
        }
        if let Some(nets) = &self.networks {
            for net in nets {
                if net.trunc() != *net {
                    return Err(at(
                        "networks",
                        InventoryErrorKind::Invalid,
                        format!("{net} has host bits set; did you mean {}?", net.trunc()),
                    ));
                }
            }
        }
        for id in &self.spiffe_ids {
            validate_spiffe_id(id).map_err(|m| at("spiffe_ids", InventoryErrorKind::Invalid, m))?;
        }
        for (i, iss) in self.issuers.iter().enumerate() {
            validate_issuer(iss).map_err(|m| at("issuers", InventoryErrorKind::Invalid, m))?;
            if self.issuers[..i].contains(iss) {
                return Err(at(
                    "issuers",
                    InventoryErrorKind::Duplicate,
                    format!("{iss:?} is listed twice"),
                ));
            }
        }
        Ok(ClientRecord {
            id: ClientId::from(self.id),
            owner: self.owner,
            purpose: self.purpose,
            expires: self.expires,
            status: self.status,
            scopes: self.scopes,
            tier: Arc::from(self.tier),
            networks: self.networks,
            api_keys: self.api_keys,
            api_key_dates: self.api_key_dates,
            spiffe_ids: self.spiffe_ids,
            issuers: self.issuers,
            labels: self.labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{A, DAY, at, client};
    use super::*;

    #[test]
    fn builder_validates_issuers() {
        let expires = SystemTime::now() + Duration::from_secs(86_400);
        let e = ClientRecord::builder("svc", "o", "p", expires)
            .issuer("not a url")
            .build()
            .expect_err("invalid issuer");
        assert_eq!(
            (e.field(), e.kind()),
            (Some("issuers"), InventoryErrorKind::Invalid)
        );
        assert!(
            e.to_string().starts_with("client `svc`, field `issuers`: "),
            "{e}"
        );
        let e = ClientRecord::builder("svc", "o", "p", expires)
            .issuer(A)
            .issuer(A)
            .build()
            .expect_err("duplicate issuer");
        assert_eq!(
            (e.field(), e.kind()),
            (Some("issuers"), InventoryErrorKind::Duplicate)
        );
    }

    const T0: u64 = 1_800_000_000;

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid network")
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("valid address"))
    }

    #[test]
    fn admit_refuses_suspended_then_expired_then_outside_networks() {
        let expires = T0 + 1_000;
        let suspended = client("svc", expires)
            .status(ClientStatus::Suspended)
            .network(net("10.0.0.0/8"))
            .build()
            .expect("valid record");
        assert_eq!(suspended.status(), ClientStatus::Suspended);
        // Suspension is reported before expiry and networks.
        assert_eq!(
            suspended.admit(at(expires + 5), ip("192.0.2.1"), DAY),
            Err(ClientRejection::Suspended)
        );

        let active = client("svc", expires)
            .network(net("10.0.0.0/8"))
            .build()
            .expect("valid record");
        assert_eq!(active.status(), ClientStatus::Active);
        // Expired from the expiry instant on, before the network is looked at.
        assert_eq!(
            active.admit(at(expires), ip("192.0.2.1"), DAY),
            Err(ClientRejection::Expired)
        );
        assert_eq!(
            active.admit(at(expires - 1), ip("192.0.2.1"), DAY),
            Err(ClientRejection::NetworkNotAllowed)
        );
        assert_eq!(
            active.admit(at(expires - 1), None, DAY),
            Err(ClientRejection::NetworkNotAllowed),
            "an unknown address under a restriction"
        );
        assert_eq!(
            active.admit(at(T0), ip("10.1.2.3"), Duration::ZERO),
            Ok(Standing { expiring_soon: false })
        );
        // An IPv4-mapped IPv6 peer matches the IPv4 network.
        assert!(active.allows_address(ip("::ffff:10.1.2.3")));
        assert!(!active.allows_address(ip("::ffff:192.0.2.1")));

        let codes = [
            ClientRejection::Suspended,
            ClientRejection::Expired,
            ClientRejection::NetworkNotAllowed,
        ]
        .map(ClientRejection::code);
        assert_eq!(
            codes,
            ["client_suspended", "client_expired", "network_not_allowed"]
        );
    }

    #[test]
    fn no_network_restriction_allows_any_address() {
        let open = client("svc", T0 + 10).build().expect("valid record");
        assert_eq!(open.networks(), None);
        assert!(open.allows_address(None));
        assert!(open.allows_address(ip("2001:db8::1")));
        assert_eq!(
            canonical_ip("::ffff:192.0.2.7".parse().expect("valid address")),
            "192.0.2.7".parse::<IpAddr>().expect("valid address")
        );
        let v6: IpAddr = "2001:db8::7".parse().expect("valid address");
        assert_eq!(canonical_ip(v6), v6);
    }

    #[test]
    fn expiring_soon_includes_the_end_of_the_warning_window() {
        let record = client("svc", T0 + 100).build().expect("valid record");
        let standing = |now: u64, warning: u64| {
            record
                .admit(at(now), None, Duration::from_secs(warning))
                .expect("admitted")
                .expiring_soon
        };
        assert!(standing(T0, 100), "exactly the window left");
        assert!(!standing(T0, 99));
        assert!(standing(T0 + 99, 1));
        assert!(!standing(T0, 0));
    }

    #[test]
    fn api_key_dates_are_kept_only_for_dated_keys() {
        let dated = ApiKeyHash::of_key(b"dated");
        let undated = ApiKeyHash::of_key(b"undated");
        let dates = ApiKeyDates::new(Some(at(T0)), Some(at(T0 + 90 * 86_400)));
        let record = client("svc", T0 + 365 * 86_400)
            .api_key_hash_dated(dated, dates)
            .api_key_hash_dated(undated, ApiKeyDates::default())
            .api_key("raw-key")
            .build()
            .expect("valid record");
        assert_eq!(
            record.api_keys(),
            [dated, undated, ApiKeyHash::of_key(b"raw-key")]
        );
        assert_eq!(record.api_key_dates(&dated), dates);
        assert_eq!(record.api_key_dates(&undated), ApiKeyDates::default());
        assert_eq!(
            record.api_key_dates(&ApiKeyHash::of_key(b"unknown")),
            ApiKeyDates::default()
        );
        assert_eq!(record.api_key_dates.len(), 1, "no entry for an undated key");
    }

    #[test]
    fn builder_rejects_empty_fields_control_characters_and_host_bits() {
        let fault = |b: ClientRecordBuilder| {
            let e = b.build().expect_err("invalid record");
            (e.field().map(str::to_owned), e.kind())
        };
        assert_eq!(
            fault(ClientRecord::builder(" ", "o", "p", at(T0))),
            (Some("id".into()), InventoryErrorKind::Missing)
        );
        assert_eq!(
            fault(ClientRecord::builder("a\nb", "o", "p", at(T0))),
            (Some("id".into()), InventoryErrorKind::Invalid)
        );
        assert_eq!(
            fault(ClientRecord::builder("svc", "", "p", at(T0))),
            (Some("owner".into()), InventoryErrorKind::Missing)
        );
        assert_eq!(
            fault(ClientRecord::builder("svc", "o", "\t", at(T0))),
            (Some("purpose".into()), InventoryErrorKind::Missing)
        );
        assert_eq!(
            fault(client("svc", T0).tier(" ")),
            (Some("tier".into()), InventoryErrorKind::Invalid)
        );
        assert_eq!(
            fault(client("svc", T0).spiffe_id("spiffe://Example.test/x")),
            (Some("spiffe_ids".into()), InventoryErrorKind::Invalid)
        );
        let e = client("svc", T0)
            .network(net("10.0.0.1/8"))
            .build()
            .expect_err("host bits set");
        assert_eq!(
            e.to_string(),
            "client `svc`, field `networks`: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn issuers_are_compared_byte_for_byte() {
        let record = client("svc", T0).issuer(A).build().expect("valid record");
        assert_eq!(record.issuers(), [Arc::<str>::from(A)]);
        assert!(record.lists_issuer(A));
        assert!(!record.lists_issuer("https://a.example.com/"));
        assert!(!record.lists_issuer("https://A.example.com"));
        let none = client("svc", T0).build().expect("valid record");
        assert!(!none.lists_issuer(A));
    }
}
