//! What a limit is keyed on and which quota it applies.

use std::fmt;
use std::sync::Arc;

use crate::store::Quota;
use nhi_guard_core::SecurityContext;

/// A function computing a custom key from the request head and the security
/// context. `None` means the limit does not apply to this request.
pub type KeyFn = dyn Fn(&http::request::Parts, &SecurityContext) -> Option<String> + Send + Sync;

#[derive(Clone)]
pub(crate) enum KeyKind {
    Address,
    Client,
    ClientRoute,
    Custom(Arc<KeyFn>),
}

impl fmt::Debug for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Address => "Address",
            Self::Client => "Client",
            Self::ClientRoute => "ClientRoute",
            Self::Custom(_) => "Custom(<fn>)",
        })
    }
}

/// Where a limit's quota comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QuotaSource {
    Fixed(Quota),
    /// The principal's inventory tier.
    Tier,
}

/// One rate limit: a name (the policy in `RateLimit-Policy`), what it is keyed on,
/// its quota and the cost of one request.
///
/// ```
/// use nhi_guard_ratelimit::store::Quota;
/// use nhi_guard_ratelimit::Limit;
///
/// let per_ip = Limit::per_address("per-ip", Quota::per_second(100).unwrap());
/// let per_client = Limit::per_client("per-client"); // quota from the client's tier
/// let exports = Limit::per_client_route("per-client-route")
///     .route_quota("exports", Quota::per_minute(6).unwrap());
/// # let _ = (per_ip, per_client, exports);
/// ```
#[derive(Debug, Clone)]
pub struct Limit {
    pub(crate) name: Arc<str>,
    /// The name as an RFC 8941 sf-string, for the header fields.
    pub(crate) quoted: Arc<str>,
    pub(crate) key: KeyKind,
    pub(crate) quota: QuotaSource,
    pub(crate) cost: u32,
    pub(crate) route_quotas: Vec<(Arc<str>, Quota)>,
    /// Verified clients neither count nor are refused (the flood shield in front
    /// of identity).
    pub(crate) exempt_verified: bool,
}

impl Limit {
    fn new(name: &str, key: KeyKind, quota: QuotaSource) -> Self {
        let mut quoted = String::with_capacity(name.len() + 2);
        quoted.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        Self {
            name: Arc::from(name),
            quoted: Arc::from(quoted),
            key,
            quota,
            cost: 1,
            route_quotas: Vec::new(),
            exempt_verified: false,
        }
    }

    /// A limit per client address (the resolved address of the security context;
    /// works before authentication). Requests without a known address are not
    /// limited by it.
    pub fn per_address(name: &str, quota: Quota) -> Self {
        Self::new(name, KeyKind::Address, QuotaSource::Fixed(quota))
    }

    /// A limit per verified client id, with the quota of the client's inventory
    /// tier. Applies only to requests with a verified principal (place the layer
    /// inside identity).
    pub fn per_client(name: &str) -> Self {
        Self::new(name, KeyKind::Client, QuotaSource::Tier)
    }

    /// A limit per verified client and route group (see
    /// [`RateLimitLayer::route_group`](crate::RateLimitLayer::route_group)), with
    /// the client's tier quota unless [`Limit::route_quota`] names the group.
    pub fn per_client_route(name: &str) -> Self {
        Self::new(name, KeyKind::ClientRoute, QuotaSource::Tier)
    }

    /// A limit keyed by `key_fn` over the request head and the security context.
    /// The function runs on every request; `None` skips the limit.
    pub fn custom<F>(name: &str, quota: Quota, key_fn: F) -> Self
    where
        F: Fn(&http::request::Parts, &SecurityContext) -> Option<String> + Send + Sync + 'static,
    {
        Self::new(name, KeyKind::Custom(Arc::new(key_fn)), QuotaSource::Fixed(quota))
    }

    /// A fixed quota instead of the client's tier.
    #[must_use]
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = QuotaSource::Fixed(quota);
        self
    }

    /// The quota for requests in route group `group`, overriding the limit's quota
    /// there.
    #[must_use]
    pub fn route_quota(mut self, group: &str, quota: Quota) -> Self {
        self.route_quotas.retain(|(g, _)| &**g != group);
        self.route_quotas.push((Arc::from(group), quota));
        self
    }

    /// The cost of one request (default 1; 0 is refused when the layer is built).
    /// A request's [`RequestCost`] extension overrides it.
    #[must_use]
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Makes a per-address limit the flood shield in front of authentication, which
    /// a verified client is never refused by: its own tier governs it.
    ///
    /// - A request without a credential is counted on arrival and refused once the
    ///   address is over the quota (anonymous floods never reach identity).
    /// - A request that presents a credential (`Authorization`, or the API-key
    ///   header of [`RateLimitLayer::api_key_header`](crate::RateLimitLayer::api_key_header))
    ///   is not refused by this limit: identity decides, and the request is counted
    ///   against the address afterwards only if it did not verify. Repeated bad
    ///   credentials are refused before verification by the failure-only limit
    ///   ([`AuthFailureLimitLayer`](crate::AuthFailureLimitLayer)), which belongs
    ///   beside this one.
    /// - A request whose client identity already verified (the layer sits inside
    ///   identity) is neither counted nor refused.
    ///
    /// Only per-address limits take it; the layer refuses it on others when built.
    #[must_use]
    pub fn exempt_verified(mut self) -> Self {
        self.exempt_verified = true;
        self
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn needs_parts(&self) -> bool {
        matches!(self.key, KeyKind::Custom(_))
    }
}

/// The cost of this request for every limit of the layers it passes, set in the
/// request's extensions by the application or an outer layer (e.g. a bulk
/// endpoint costs 10). Values below 1 count as 1; a cost above a limit's burst is
/// charged the whole burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCost(pub u32);
