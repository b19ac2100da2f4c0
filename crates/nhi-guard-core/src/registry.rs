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

use std::collections::{BTreeMap, HashMap};

use crate::hash::FxBuildHasher;

type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::principal::ClientId;
use crate::scope::ScopeSet;

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

/// The SHA-256 of an issued API key. The inventory holds only these.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// Hashes a raw key.
    pub fn of_key(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    /// Wraps a digest.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// Parses `sha256:<64 hex digits>`.
    ///
    /// # Errors
    /// A message saying what is wrong with the text (which is not a secret).
    pub fn parse(s: &str) -> Result<Self, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("{s:?} must start with \"sha256:\""))?;
        if hex.len() != 64 {
            return Err(format!(
                "{s:?} must have 64 hex digits after \"sha256:\", found {}",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(format!("{s:?} has a character that is not a hex digit")),
            }
        }
        Ok(Self(out))
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ApiKeyHash(sha256:{:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// One governed non-human identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientRecord {
    id: ClientId,
    owner: String,
    purpose: String,
    #[serde(serialize_with = "serialize_time")]
    expires: SystemTime,
    status: ClientStatus,
    scopes: ScopeSet,
    tier: Arc<str>,
    networks: Option<Vec<IpNet>>,
    #[serde(skip)]
    api_keys: Vec<ApiKeyHash>,
    #[serde(skip)]
    api_key_dates: Vec<(ApiKeyHash, ApiKeyDates)>,
    spiffe_ids: Vec<Arc<str>>,
    issuers: Vec<Arc<str>>,
    labels: BTreeMap<String, String>,
}

/// When an API key was issued and when it must be rotated (both optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ApiKeyDates {
    /// When it was issued: with a maximum key age ([`InventoryBuilder::max_key_age`]),
    /// a key older than that is refused.
    pub created: Option<SystemTime>,
    /// When it must be rotated: past it, requests still pass and are flagged.
    pub rotate_by: Option<SystemTime>,
}

impl ApiKeyDates {
    /// Dates of a key.
    pub fn new(created: Option<SystemTime>, rotate_by: Option<SystemTime>) -> Self {
        Self { created, rotate_by }
    }
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
    /// `iss` claim (see [Issuers](self#issuers)); empty when the client lists none.
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
    /// as the tokens' `iss` (see [Issuers](self#issuers)). Once a client lists an
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

/// Checks the shape of an issuer identifier as OpenID Connect Discovery and
/// RFC 8414 define it: an absolute `https://` URL (or `http://`, for loopback and
/// in-cluster issuers) with a host, an optional port and path, and no user
/// information, query or fragment; ASCII without spaces (write internationalised
/// host names in punycode).
///
/// The text is not normalised: it is compared with a token's `iss` byte for byte,
/// so it must be written exactly as the issuer writes it, trailing slash included.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_issuer(iss: &str) -> Result<(), String> {
    let rest = iss
        .strip_prefix("https://")
        .or_else(|| iss.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{iss:?} must be an absolute URL starting with \"https://\" (or \"http://\")")
        })?;
    if let Some(c) = iss.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{iss:?} contains {c:?}; only visible ASCII is allowed (host names in punycode)"
        ));
    }
    if iss.contains(['?', '#']) {
        return Err(format!("{iss:?} must not have a query or a fragment"));
    }
    if iss.contains('\\') {
        return Err(format!("{iss:?} must not contain a backslash"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(format!("{iss:?} must not contain user information (`user@`)"));
    }
    let port = match authority.strip_prefix('[') {
        Some(literal) => {
            let (addr, after) = literal
                .split_once(']')
                .ok_or_else(|| format!("{iss:?} has an unterminated IPv6 address"))?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{iss:?} has an invalid IPv6 address"));
            }
            match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{iss:?} has an invalid host"))?,
                ),
            }
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty()
                || host.starts_with(['.', '-'])
                || host.contains("..")
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(format!("{iss:?} has no valid host"));
            }
            port
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || !port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(format!("{iss:?} has an invalid port {port:?}"));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{iss:?} has a `.` or `..` path segment"));
    }
    Ok(())
}

/// Checks the shape of a SPIFFE id: `spiffe://<trust domain>/<path>`, lower-case
/// trust domain of `[a-z0-9.-_]`, a non-empty path of segments without `.`/`..`,
/// no query or fragment.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_spiffe_id(id: &str) -> Result<(), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} must start with \"spiffe://\""))?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'))
    {
        return Err(format!("{id:?} has an invalid trust domain"));
    }
    if path.is_empty() {
        return Err(format!("{id:?} has no path"));
    }
    for seg in path.split('/') {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!("{id:?} has an invalid path segment {seg:?}"));
        }
    }
    Ok(())
}

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
    kind: InventoryErrorKind,
    location: Location,
    field: Option<String>,
    message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    File,
    Client {
        id: Option<String>,
        index: Option<usize>,
    },
    Tier(String),
}

impl InventoryError {
    fn client(
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

    fn file(kind: InventoryErrorKind, field: Option<String>, message: String) -> Self {
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

/// A validated, immutable snapshot of the client inventory and its tiers.
#[derive(Debug)]
pub struct Inventory {
    // Fixed at build time and never filled from requests: the unkeyed hasher is
    // safe for lookups of any key, and several happen per request.
    clients: FxMap<ClientId, Arc<ClientRecord>>,
    /// The clients in the order they were given (entry order of the file), for
    /// errors that name an entry.
    entries: Vec<Arc<ClientRecord>>,
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
    /// Held while a replacement is checked and stored, so that a requirement
    /// registered at the same time is checked against the inventory that stays.
    requirements: Mutex<Vec<InventoryRequirement>>,
}

impl InMemoryRegistry {
    /// Serves `inventory`.
    pub fn new(inventory: Inventory) -> Self {
        Self {
            current: ArcSwap::from_pointee(inventory),
            requirements: Mutex::new(Vec::new()),
        }
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
    /// it; the next look-up sees the new snapshot.
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
        drop(requirements);
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

    const A: &str = "https://a.example.com";
    const B: &str = "https://b.example.com/";

    fn record(id: &str, issuers: &[&str]) -> ClientRecord {
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

    fn inventory(clients: &[(&str, &[&str])]) -> Inventory {
        clients
            .iter()
            .fold(Inventory::builder(), |b, (id, issuers)| {
                b.client(record(id, issuers))
            })
            .build()
            .expect("valid inventory")
    }

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

    #[test]
    fn replace_checks_registered_requirements_and_keeps_the_current_inventory() {
        let registry = InMemoryRegistry::new(inventory(&[("x", &[A])]));
        let two = InventoryRequirement::trusted_issuers([A, B]);
        registry.require(two.clone()).expect("current inventory meets it");
        registry.require(two.clone()).expect("registered twice");
        assert_eq!(registry.requirements(), vec![two]);

        let e = registry
            .replace(inventory(&[("x", &[A]), ("new", &[])]))
            .expect_err("violates the requirement");
        assert_eq!((e.client_id(), e.field()), (Some("new"), Some("issuers")));
        assert!(registry.client("new").is_none());
        assert!(registry.client("x").is_some());

        registry
            .replace(inventory(&[("new", &[B])]))
            .expect("meets the requirement");
        assert!(registry.client("new").is_some());
        assert!(registry.client("x").is_none());
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
}
