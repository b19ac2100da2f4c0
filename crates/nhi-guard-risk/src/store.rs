//! Risk state that several replicas share: windowed counters, distinct counts and
//! sticky decisions (throttle, step-up, block) with their cool-down.
//!
//! The risk layer (`nhi-guard-risk`) scores every request from in-process, memory-
//! bounded signal state and keeps its sticky decisions in an in-process store. A
//! [`RiskStore`] is the optional shared backend (`nhi-guard-redis`): decisions put
//! there are honoured by every replica, and cluster-wide counters let replicas add up
//! evidence (authentication failures, distinct credentials) that each one alone sees
//! only a part of.
//!
//! Every entry expires on its own: a sticky decision at its `until`, a counter after
//! its window, so a store may forget idle keys without changing any decision.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use nhi_guard_risk::store::RiskKey;
//!
//! let key = RiskKey::network_of(IpAddr::V4(Ipv4Addr::new(127, 9, 8, 7)));
//! assert_eq!(key.to_string(), "net:127.9.8.0/24");
//! assert_eq!(RiskKey::parse("net:127.9.8.0/24"), Some(key));
//! ```

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::Serialize;

use nhi_guard_core::principal::{ClientId, CredentialFingerprint};
use nhi_guard_core::registry::canonical_ip;

/// What a risk decision is attached to: the key that earned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RiskKey {
    /// One client address.
    Address(IpAddr),
    /// A network: the /24 of an IPv4 address, the /64 of an IPv6 address.
    Network(IpNet),
    /// One presented credential, by fingerprint.
    Credential(CredentialFingerprint),
    /// One client of the inventory.
    Client(ClientId),
}

impl RiskKey {
    /// The address key of `ip` (IPv4-mapped IPv6 addresses become IPv4).
    pub fn address(ip: IpAddr) -> Self {
        Self::Address(canonical_ip(ip))
    }

    /// The network key of `ip`: its /24 (IPv4) or /64 (IPv6).
    pub fn network_of(ip: IpAddr) -> Self {
        Self::Network(network_of(ip))
    }

    /// The kind as a stable word (`address`, `network`, `credential`, `client`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Address(_) => "address",
            Self::Network(_) => "network",
            Self::Credential(_) => "credential",
            Self::Client(_) => "client",
        }
    }

    /// Parses the form [`fmt::Display`] writes (`addr:…`, `net:…`, `cred:…`,
    /// `client:…`).
    pub fn parse(s: &str) -> Option<Self> {
        let (kind, rest) = s.split_once(':')?;
        match kind {
            "addr" => rest.parse().ok().map(Self::address),
            "net" => rest.parse::<IpNet>().ok().map(|n| Self::Network(n.trunc())),
            "cred" => {
                if rest.len() != 24 || !rest.is_ascii() {
                    return None;
                }
                let mut digest = [0u8; 32];
                for (i, b) in digest.iter_mut().take(12).enumerate() {
                    *b = u8::from_str_radix(&rest[2 * i..2 * i + 2], 16).ok()?;
                }
                Some(Self::Credential(CredentialFingerprint::from_sha256(&digest)))
            }
            "client" if !rest.is_empty() => Some(Self::Client(ClientId::from(rest))),
            _ => None,
        }
    }
}

/// The /24 (IPv4) or /48 (IPv6) network of an address: the block one operator
/// (a site, a cloud region's customer) usually holds. An IPv6 client's own key is
/// already its /64 ([`nhi_guard_core::ClientAddr::key_ip`]), so its network is the /48
/// around it.
pub fn network_of(ip: IpAddr) -> IpNet {
    let ip = canonical_ip(ip);
    let prefix = if ip.is_ipv4() { 24 } else { 48 };
    // Both prefixes are valid for their family, so this never falls back.
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

impl fmt::Display for RiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(ip) => write!(f, "addr:{ip}"),
            Self::Network(net) => write!(f, "net:{net}"),
            Self::Credential(fp) => write!(f, "cred:{fp}"),
            Self::Client(id) => write!(f, "client:{id}"),
        }
    }
}

impl Serialize for RiskKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A graded action that lasts for a cool-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StickyAction {
    /// The key's requests are slowed to a small allowance (429 beyond it).
    Throttle,
    /// Requests with the key must present a freshly issued or sender-constrained
    /// credential (RFC 9470 challenge otherwise).
    StepUp,
    /// The key's requests are refused (403).
    Block,
}

impl StickyAction {
    /// Stable name (`throttle`, `step_up`, `block`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::StepUp => "step_up",
            Self::Block => "block",
        }
    }

    /// Parses [`StickyAction::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "throttle" => Some(Self::Throttle),
            "step_up" => Some(Self::StepUp),
            "block" => Some(Self::Block),
            _ => None,
        }
    }
}

/// A sticky decision: an action on a key until a time, with the reason that earned
/// it (signal names, never a secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StickyDecision {
    /// The key it applies to.
    pub key: RiskKey,
    /// The action.
    pub action: StickyAction,
    /// When it lapses.
    #[serde(serialize_with = "serialize_time")]
    pub until: SystemTime,
    /// The score that earned it.
    pub score: u32,
    /// Why (the contributing signals).
    pub reason: Arc<str>,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&nhi_guard_core::rfc3339(*t))
}

impl StickyDecision {
    /// Whether it still applies at `now`.
    pub fn is_active(&self, now: SystemTime) -> bool {
        now < self.until
    }

    /// Time left at `now` (zero once lapsed).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.until.duration_since(now).unwrap_or_default()
    }
}

/// Why a risk store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("risk store unavailable: {message}")]
pub struct RiskStoreError {
    message: Arc<str>,
}

impl RiskStoreError {
    /// A new error. `message` must not contain secrets or key material.
    pub fn new(message: impl Into<Arc<str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The future a [`RiskStore`] returns.
pub type RiskStoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, RiskStoreError>> + Send + 'static>>;

/// Shared risk state: windowed counters, distinct counts and sticky decisions.
///
/// Times are passed in (the caller's clock) so every replica and every test agrees
/// on windows and expiry. Implementations must let entries expire on their own.
pub trait RiskStore: Send + Sync + fmt::Debug + 'static {
    /// Adds one to the counter `name` in the fixed window of length `window`
    /// containing `now` and returns the count in that window.
    fn increment(&self, name: Arc<str>, window: Duration, now: SystemTime) -> RiskStoreFuture<u64>;

    /// Adds `member` to the distinct-count set `name` in the fixed window of length
    /// `window` containing `now` and returns the (possibly estimated) number of
    /// distinct members in that window.
    fn add_distinct(
        &self,
        name: Arc<str>,
        member: Arc<[u8]>,
        window: Duration,
        now: SystemTime,
    ) -> RiskStoreFuture<u64>;

    /// Stores a sticky decision made at `now`; it replaces a weaker or shorter one on
    /// the same key and never shortens a stronger one.
    fn put(&self, decision: StickyDecision, now: SystemTime) -> RiskStoreFuture<()>;

    /// The strongest active decision on any of `keys` at `now`.
    fn find(&self, keys: Arc<[RiskKey]>, now: SystemTime) -> RiskStoreFuture<Option<StickyDecision>>;

    /// Every active decision at `now`.
    fn list(&self, now: SystemTime) -> RiskStoreFuture<Vec<StickyDecision>>;

    /// Lifts the decision on `key`; whether there was one.
    fn lift(&self, key: RiskKey) -> RiskStoreFuture<bool>;
}

impl<T: RiskStore + ?Sized> RiskStore for Arc<T> {
    fn increment(&self, name: Arc<str>, window: Duration, now: SystemTime) -> RiskStoreFuture<u64> {
        (**self).increment(name, window, now)
    }
    fn add_distinct(
        &self,
        name: Arc<str>,
        member: Arc<[u8]>,
        window: Duration,
        now: SystemTime,
    ) -> RiskStoreFuture<u64> {
        (**self).add_distinct(name, member, window, now)
    }
    fn put(&self, decision: StickyDecision, now: SystemTime) -> RiskStoreFuture<()> {
        (**self).put(decision, now)
    }
    fn find(&self, keys: Arc<[RiskKey]>, now: SystemTime) -> RiskStoreFuture<Option<StickyDecision>> {
        (**self).find(keys, now)
    }
    fn list(&self, now: SystemTime) -> RiskStoreFuture<Vec<StickyDecision>> {
        (**self).list(now)
    }
    fn lift(&self, key: RiskKey) -> RiskStoreFuture<bool> {
        (**self).lift(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn keys_round_trip_through_their_text_form() {
        let keys = [
            RiskKey::address("127.1.2.3".parse().expect("ip")),
            RiskKey::network_of("127.1.2.3".parse().expect("ip")),
            RiskKey::network_of(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6))),
            RiskKey::Credential(CredentialFingerprint::of(b"secret")),
            RiskKey::Client(ClientId::from("billing")),
        ];
        for k in keys {
            assert_eq!(RiskKey::parse(&k.to_string()), Some(k.clone()), "{k}");
        }
        assert_eq!(
            RiskKey::network_of(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6))).to_string(),
            "net:2001:db8:1::/48"
        );
        assert_eq!(RiskKey::parse("cred:zz"), None);
        assert_eq!(RiskKey::parse("client:"), None);
        assert_eq!(RiskKey::parse("nonsense"), None);
    }

    #[test]
    fn decisions_lapse() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let d = StickyDecision {
            key: RiskKey::Client(ClientId::from("c")),
            action: StickyAction::Block,
            until: now + Duration::from_secs(5),
            score: 90,
            reason: Arc::from("test"),
        };
        assert!(d.is_active(now));
        assert_eq!(d.remaining(now), Duration::from_secs(5));
        assert!(!d.is_active(now + Duration::from_secs(5)));
        assert!(StickyAction::Block > StickyAction::StepUp && StickyAction::StepUp > StickyAction::Throttle);
        assert_eq!(StickyAction::parse("step_up"), Some(StickyAction::StepUp));
    }
}
