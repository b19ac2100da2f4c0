//! The [`Signal`] trait and what a signal sees of a request.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::store::RiskKey;
use http::StatusCode;
use ipnet::IpNet;
use nhi_guard_core::{ClientId, CredentialFingerprint};

use crate::state::KeyHasher;

/// When a signal can be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Needs only the client address: also evaluated by the [`crate::RiskEdgeLayer`]
    /// placed in front of the identity layer, so an address that sprays credentials
    /// is stopped before its credentials are even verified.
    Edge,
    /// Needs the verified principal: evaluated by the [`crate::RiskLayer`] placed
    /// after the identity layer.
    Identified,
}

/// A request's canonical address and /24 (or /48) network with their keyed hashes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddrFacts {
    addr: (IpAddr, u64),
    network: (IpNet, u64),
}

/// The configured route a request matched (see [`crate::Route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteFacts {
    pub(crate) index: u32,
    pub(crate) group_hash: u64,
    pub(crate) resource_hash: Option<u64>,
    pub(crate) resource_number: Option<u64>,
    pub(crate) scarce: bool,
    /// The declared number of items (0: undeclared).
    pub(crate) capacity: u32,
}

impl RouteFacts {
    /// Index of the matched route in the layer's route table.
    pub fn index(&self) -> usize {
        self.index as usize
    }
    /// Keyed hash of the route's group name (routes of one group share state).
    pub fn group_hash(&self) -> u64 {
        self.group_hash
    }
    /// Keyed hash of the resource identifier captured from the path, if the route
    /// names one.
    pub fn resource_hash(&self) -> Option<u64> {
        self.resource_hash
    }
    /// The resource identifier as a number, when it is one (for sequential walks).
    pub fn resource_number(&self) -> Option<u64> {
        self.resource_number
    }
    /// Whether the route holds a scarce resource (reservations, holds).
    pub fn is_scarce(&self) -> bool {
        self.scarce
    }
    /// The number of items the route's resource has, when declared
    /// ([`crate::Route::capacity`]).
    pub fn capacity(&self) -> Option<u32> {
        (self.capacity > 0).then_some(self.capacity)
    }
}

/// What signals see of one request: read once from the security context, with the
/// tracked keys already hashed (keyed, per process) so signals look up their state
/// without hashing or allocating.
#[derive(Clone)]
pub struct RequestFacts {
    pub(crate) now: SystemTime,
    pub(crate) now_nanos: u64,
    pub(crate) addr: Option<(IpAddr, u64)>,
    pub(crate) network: Option<(IpNet, u64)>,
    pub(crate) client: Option<(ClientId, u64)>,
    pub(crate) credential: Option<(CredentialFingerprint, u64)>,
    pub(crate) identity_failure: Option<&'static str>,
    pub(crate) missing_scopes: bool,
    pub(crate) route: Option<RouteFacts>,
    pub(crate) credential_class: CredentialClass,
    pub(crate) tier_multiplier: f32,
    pub(crate) bulk: bool,
}

/// How the presented credential can answer a step-up challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CredentialClass {
    /// No verified credential.
    #[default]
    None,
    /// A bearer access token; `fresh` when issued within the step-up `max_age`.
    Bearer {
        /// Issued within `max_age`.
        fresh: bool,
    },
    /// Sender-constrained: a certificate-bound token (RFC 8705) or a client
    /// certificate. A thief of the bytes cannot use it, so it satisfies a step-up.
    SenderConstrained,
    /// A static API key: cannot be refreshed, so a step-up escalates to a block.
    ApiKey,
}

impl fmt::Debug for RequestFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFacts")
            .field("addr", &self.addr.map(|a| a.0))
            .field("network", &self.network.map(|n| n.0))
            .field("client", &self.client.as_ref().map(|c| &c.0))
            .field("credential", &self.credential.map(|c| c.0))
            .field("identity_failure", &self.identity_failure)
            .field("missing_scopes", &self.missing_scopes)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RequestFacts {
    /// Facts for a request at `now`; set the rest with the `with_*` builders. Used by
    /// the layers, and by tests of custom signals.
    pub fn new(now: SystemTime) -> Self {
        let now_nanos = nhi_guard_core::clock::duration_nanos(
            now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
        );
        Self {
            now,
            now_nanos,
            addr: None,
            network: None,
            client: None,
            credential: None,
            identity_failure: None,
            missing_scopes: false,
            route: None,
            credential_class: CredentialClass::None,
            tier_multiplier: 1.0,
            bulk: false,
        }
    }

    /// Sets the client address (and its network).
    #[must_use]
    pub fn with_addr(mut self, hasher: &KeyHasher, ip: IpAddr) -> Self {
        let ip = nhi_guard_core::registry::canonical_ip(ip);
        let net = crate::store::network_of(ip);
        self.addr = Some((ip, hasher.hash_tagged(1, &ip)));
        self.network = Some((net, hasher.hash_tagged(2, &net)));
        self
    }

    /// The hashed address and network, to hand to the inner half of the engine.
    pub(crate) fn addr_facts(&self) -> Option<AddrFacts> {
        Some(AddrFacts {
            addr: self.addr?,
            network: self.network?,
        })
    }

    pub(crate) fn set_addr_facts(&mut self, a: AddrFacts) {
        self.addr = Some(a.addr);
        self.network = Some(a.network);
    }

    /// Sets the verified client.
    #[must_use]
    pub fn with_client(mut self, hasher: &KeyHasher, client: ClientId) -> Self {
        let h = hasher.hash_tagged(3, client.as_str());
        self.client = Some((client, h));
        self
    }

    /// Sets the presented credential.
    #[must_use]
    pub fn with_credential(mut self, hasher: &KeyHasher, fp: CredentialFingerprint) -> Self {
        self.credential = Some((fp, hasher.hash_tagged(4, fp.as_bytes())));
        self
    }

    /// Sets the identity failure reason.
    #[must_use]
    pub fn with_identity_failure(mut self, reason: &'static str) -> Self {
        self.identity_failure = Some(reason);
        self
    }

    /// Sets the matched route.
    #[must_use]
    pub fn with_route(mut self, route: RouteFacts) -> Self {
        self.route = Some(route);
        self
    }

    /// Marks that the principal lacked a scope the route requires.
    #[must_use]
    pub fn with_missing_scopes(mut self) -> Self {
        self.missing_scopes = true;
        self
    }

    /// The request time.
    pub fn now(&self) -> SystemTime {
        self.now
    }
    /// The request time in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.now_nanos
    }
    /// The client address.
    pub fn addr(&self) -> Option<IpAddr> {
        self.addr.map(|a| a.0)
    }
    /// Keyed hash of the client address.
    pub fn addr_hash(&self) -> Option<u64> {
        self.addr.map(|a| a.1)
    }
    /// The client's network (/24, or /48 for IPv6).
    pub fn network(&self) -> Option<IpNet> {
        self.network.map(|n| n.0)
    }
    /// Keyed hash of the network.
    pub fn network_hash(&self) -> Option<u64> {
        self.network.map(|n| n.1)
    }
    /// The verified client, once identity ran and succeeded.
    pub fn client(&self) -> Option<&ClientId> {
        self.client.as_ref().map(|c| &c.0)
    }
    /// Keyed hash of the client id.
    pub fn client_hash(&self) -> Option<u64> {
        self.client.as_ref().map(|c| c.1)
    }
    /// The presented credential's fingerprint (also when verification failed).
    pub fn credential(&self) -> Option<CredentialFingerprint> {
        self.credential.map(|c| c.0)
    }
    /// Keyed hash of the credential fingerprint.
    pub fn credential_hash(&self) -> Option<u64> {
        self.credential.map(|c| c.1)
    }
    /// Why identity failed, if it did.
    pub fn identity_failure(&self) -> Option<&'static str> {
        self.identity_failure
    }
    /// Whether the principal lacked a required scope (known after the scope layer).
    pub fn missing_scopes(&self) -> bool {
        self.missing_scopes
    }
    /// The configured route the request matched.
    pub fn route(&self) -> Option<&RouteFacts> {
        self.route.as_ref()
    }
    /// How the credential can answer a step-up.
    pub fn credential_class(&self) -> CredentialClass {
        self.credential_class
    }

    /// Sets how the credential can answer a step-up.
    #[must_use]
    pub fn with_credential_class(mut self, class: CredentialClass) -> Self {
        self.credential_class = class;
        self
    }

    /// Whether the client's tier is a bulk tier ([`crate::RiskLayer::bulk_tier`]):
    /// entitled to volume, so volume signals leave it alone.
    pub fn is_bulk(&self) -> bool {
        self.bulk
    }

    /// Marks the client's tier as a bulk tier.
    #[must_use]
    pub fn with_bulk(mut self, bulk: bool) -> Self {
        self.bulk = bulk;
        self
    }

    /// The hash of [`RequestFacts::actor`], without building its key.
    #[inline]
    pub fn actor_hash(&self) -> Option<u64> {
        self.client_hash().or(self.credential_hash()).or(self.addr_hash())
    }

    /// The most specific "who": the client, else the credential, else the address;
    /// with the key a decision on it would use.
    pub fn actor(&self) -> Option<(u64, RiskKey)> {
        if let Some((id, h)) = &self.client {
            Some((*h, RiskKey::Client(id.clone())))
        } else if let Some((fp, h)) = self.credential {
            Some((h, RiskKey::Credential(fp)))
        } else {
            self.addr.map(|(ip, h)| (h, RiskKey::Address(ip)))
        }
    }
}

/// How a request ended, for signals that learn from outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome {
    /// The response status (for gRPC, the HTTP status of the response; denials by
    /// guard layers carry their HTTP status in the recorded decision).
    pub status: StatusCode,
    /// Whether the risk layer itself refused the request.
    pub refused_by_risk: bool,
}

/// Points a signal adds to a request's score, the key that earned them (where a
/// sticky decision would be attached), and a short reason for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Points {
    /// Points (the score is capped at 100).
    pub points: u32,
    /// The key that earned them.
    pub key: RiskKey,
    /// A short reason, for humans (no secrets).
    pub reason: Cow<'static, str>,
}

/// A risk signal: reads what a request reveals and its own bounded state, and
/// returns points with a reason.
///
/// `evaluate` runs on the hot path for every request (it may also record the
/// request in the signal's state); it should not allocate unless it returns points.
/// `observe` runs once per request after the response, with the final context
/// (identity failure, scope denial, status); what it learns counts from the next
/// request on. State must be bounded (see [`crate::state::BoundedMap`]).
pub trait Signal: Send + Sync + fmt::Debug + 'static {
    /// A stable name (`auth_failure_velocity`, ...).
    fn name(&self) -> &'static str;

    /// When the signal can be evaluated. Defaults to [`Phase::Identified`].
    fn phase(&self) -> Phase {
        Phase::Identified
    }

    /// Points for this request, if any.
    fn evaluate(&self, facts: &RequestFacts) -> Option<Points>;

    /// Learns from how a request ended.
    fn observe(&self, facts: &RequestFacts, outcome: Outcome) {
        let _ = (facts, outcome);
    }

    /// Keys tracked and bytes held, for memory reports.
    fn memory(&self) -> SignalMemory {
        SignalMemory::default()
    }
}

/// Memory held by a signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalMemory {
    /// Keys currently tracked.
    pub keys: usize,
    /// The most keys it will track.
    pub capacity: usize,
    /// Bytes held by its tables.
    pub bytes: usize,
}

/// A points curve: nothing below `threshold`, then `base` points, plus `step` points
/// for every `per` units above the threshold, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Curve {
    /// Where points start.
    pub threshold: u32,
    /// Points at the threshold.
    pub base: u32,
    /// Points added per `per` units above the threshold.
    pub step: u32,
    /// Units per step (at least 1).
    pub per: u32,
    /// Most points.
    pub max: u32,
}

impl Curve {
    /// A curve.
    pub const fn new(threshold: u32, base: u32, step: u32, per: u32, max: u32) -> Self {
        Self {
            threshold,
            base,
            step,
            per,
            max,
        }
    }

    /// Points for `n`.
    #[inline]
    pub fn points(&self, n: u32) -> u32 {
        if n < self.threshold || self.threshold == 0 {
            return 0;
        }
        let extra = (n - self.threshold) / self.per.max(1);
        self.base
            .saturating_add(extra.saturating_mul(self.step))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_shape() {
        let c = Curve::new(5, 40, 8, 2, 100);
        assert_eq!(c.points(4), 0);
        assert_eq!(c.points(5), 40);
        assert_eq!(c.points(6), 40);
        assert_eq!(c.points(7), 48);
        assert_eq!(c.points(1000), 100);
    }
}
