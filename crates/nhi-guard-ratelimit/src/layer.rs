//! `RateLimitLayer`: configuration only.

use std::fmt;
use std::sync::Arc;

use crate::store::{Quota, RateLimitStore};
use http::HeaderName;
use nhi_guard_core::address::ClientAddrResolver;
use nhi_guard_core::clock::{SharedClock, SystemClock};
use nhi_guard_core::denial::{DefaultRenderer, RenderDenial, SharedRenderer};
use nhi_guard_core::presented::DEFAULT_API_KEY_HEADER;
use nhi_guard_core::registry::SharedRegistry;
use nhi_guard_core::settings::{Explicit, LayerSettings};
use tower_layer::Layer;

use crate::limit::Limit;
use crate::memory::{InMemoryRateLimitStore, MAX_LIMITS};
use crate::service::RateLimitService;

pub use nhi_guard_core::config::ConfigError;

/// Where the layer keeps its state.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// The in-process store, called synchronously (no future, no allocation).
    Local(Arc<InMemoryRateLimitStore>),
    /// A shared store (Redis), called through its future.
    Shared(Arc<dyn RateLimitStore>),
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) limits: Vec<Limit>,
    pub(crate) backend: Backend,
    pub(crate) clock: SharedClock,
    pub(crate) resolver: ClientAddrResolver,
    pub(crate) renderer: SharedRenderer,
    pub(crate) explicit: Explicit,
    pub(crate) registry: Option<SharedRegistry>,
    pub(crate) default_quota: Quota,
    pub(crate) route_groups: crate::route::RouteGroups,
    pub(crate) shadow: bool,
    pub(crate) headers_on_allowed: bool,
    pub(crate) needs_parts: bool,
    pub(crate) needs_group: bool,
    pub(crate) needs_principal: bool,
    /// Some limit is [`Limit::exempt_verified`]: whether a request presents a
    /// credential matters.
    pub(crate) has_exempt: bool,
    /// Where API keys are presented (the header identity reads).
    pub(crate) api_key_header: HeaderName,
    pub(crate) metrics: nhi_guard_core::metrics::ControlMetrics,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("limits", &self.limits)
            .field("backend", &self.backend)
            .field("clock", &self.clock)
            .field("registry", &self.registry.is_some())
            .field("default_quota", &self.default_quota)
            .field("route_groups", &self.route_groups)
            .field("shadow", &self.shadow)
            .field("headers_on_allowed", &self.headers_on_allowed)
            .field("api_key_header", &self.api_key_header)
            .finish_non_exhaustive()
    }
}

/// Applies GCRA rate limits to every request; see the [crate docs](crate).
///
/// Several limits may apply to one request: all must pass, and a request refused by
/// one spends nothing on the others. Decisions happen in `call`; `poll_ready` only
/// forwards to the inner service.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl Default for RateLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitLayer {
    /// A layer without limits, on an in-process store bounded to one million keys,
    /// the system clock, the default renderer, headers on every response.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                limits: Vec::new(),
                backend: Backend::Local(Arc::new(InMemoryRateLimitStore::new())),
                clock: Arc::new(SystemClock),
                resolver: ClientAddrResolver::new(),
                renderer: DefaultRenderer::new().shared(),
                explicit: Explicit::default(),
                registry: None,
                default_quota: Quota::from_tier(nhi_guard_core::Tier::BUILT_IN_DEFAULT),
                route_groups: crate::route::RouteGroups::default(),
                shadow: false,
                headers_on_allowed: true,
                needs_parts: false,
                needs_group: false,
                needs_principal: false,
                has_exempt: false,
                api_key_header: DEFAULT_API_KEY_HEADER,
                metrics: nhi_guard_core::metrics::ControlMetrics::new(nhi_guard_core::Control::RateLimit),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Adds a limit.
    ///
    /// # Errors
    /// `limits` when there would be more than 8; `limit.name` when the name is
    /// empty, not printable ASCII, or already used; `limit.cost` when the cost is 0.
    pub fn limit(mut self, limit: Limit) -> Result<Self, ConfigError> {
        if self.config.limits.len() >= MAX_LIMITS {
            return Err(ConfigError::new(
                "rate_limit",
                "limits",
                format!("at most {MAX_LIMITS} limits per layer"),
            ));
        }
        if limit.name.is_empty() || !limit.name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(ConfigError::new(
                "rate_limit",
                "limit.name",
                "must be non-empty printable ASCII (it is sent in the RateLimit-Policy field)",
            ));
        }
        if self.config.limits.iter().any(|l| l.name == limit.name) {
            return Err(ConfigError::new(
                "rate_limit",
                "limit.name",
                format!("`{}` is used twice", limit.name),
            ));
        }
        if limit.cost == 0 {
            return Err(ConfigError::new("rate_limit", "limit.cost", "must be at least 1"));
        }
        if limit.exempt_verified && !matches!(limit.key, crate::limit::KeyKind::Address) {
            return Err(ConfigError::new(
                "rate_limit",
                "limit.exempt_verified",
                format!(
                    "`{}` is not a per-address limit; only per-address limits exempt verified clients",
                    limit.name
                ),
            ));
        }
        let c = self.config_mut();
        c.has_exempt |= limit.exempt_verified;
        c.needs_principal |= limit.exempt_verified;
        c.needs_parts |= limit.needs_parts();
        c.needs_principal |= matches!(limit.quota, crate::limit::QuotaSource::Tier)
            || matches!(
                limit.key,
                crate::limit::KeyKind::Client | crate::limit::KeyKind::ClientRoute
            );
        c.needs_group |=
            matches!(limit.key, crate::limit::KeyKind::ClientRoute) || !limit.route_quotas.is_empty();
        c.limits.push(limit);
        Ok(self)
    }

    /// Keeps state in `store` (an [`InMemoryRateLimitStore`] of your own size or clock).
    #[must_use]
    pub fn in_memory_store(mut self, store: Arc<InMemoryRateLimitStore>) -> Self {
        self.config_mut().backend = Backend::Local(store);
        self
    }

    /// Keeps state in a shared store (e.g. `nhi_guard_redis::RedisStore`), whose
    /// failure policy decides what happens when it is unreachable. When it fails
    /// closed, the layer answers 503 (`UNAVAILABLE` for gRPC).
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn RateLimitStore>) -> Self {
        self.config_mut().backend = Backend::Shared(store);
        self
    }

    /// Reads time from `clock` (tests: `ManualClock` or `TokioClock`). Shared stores
    /// use their own time (Redis: the server's).
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        let config = self.config_mut();
        config.clock = clock;
        config.explicit.clock = true;
        self
    }

    /// Resolves client addresses with `resolver` (trusted proxies), when this layer
    /// creates the security context.
    #[must_use]
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        let config = self.config_mut();
        config.resolver = resolver;
        config.explicit.resolver = true;
        self
    }

    /// Renders denials with `renderer`.
    #[must_use]
    pub fn renderer(mut self, renderer: impl RenderDenial) -> Self {
        let config = self.config_mut();
        config.renderer = Arc::new(renderer);
        config.explicit.renderer = true;
        self
    }

    /// Takes the stack's clock, resolver and renderer for those this layer was not
    /// given (see [`nhi_guard_core::settings`]).
    #[must_use]
    pub fn inherit(mut self, stack: &LayerSettings) -> Self {
        let c = self.config_mut();
        c.explicit
            .fill(stack, &mut c.clock, &mut c.resolver, Some(&mut c.renderer));
        self
    }

    /// The client-address resolver set on this layer, if one was.
    pub fn own_client_addr_resolver(&self) -> Option<&ClientAddrResolver> {
        self.config.explicit.resolver.then_some(&self.config.resolver)
    }

    /// Looks tiers up in `registry` on each request (`registry.tier(principal's
    /// tier name)`), so a tier change in the inventory applies at once. Without a
    /// registry the tier quota the principal carries is used.
    #[must_use]
    pub fn registry(mut self, registry: SharedRegistry) -> Self {
        self.config_mut().registry = Some(registry);
        self
    }

    /// The quota for clients whose tier the registry does not know (default: the
    /// built-in default tier, 10 per second, bursts of 20).
    #[must_use]
    pub fn default_quota(mut self, quota: Quota) -> Self {
        self.config_mut().default_quota = quota;
        self
    }

    /// Names a route group in the layer's own route table: requests whose path
    /// starts with `path_prefix` (at a segment boundary; the route `ANY
    /// path_prefix/*`) belong to `group`; the longest prefix wins. Per-route limits
    /// key on the group, so path parameters (`/orders/123`) do not create a key
    /// each. Requests in no group are in the group `*`. With a shared route table,
    /// declare [`RateGroup`](crate::RateGroup)s on its routes instead
    /// ([`RateLimitLayer::routes`]).
    ///
    /// # Errors
    /// `route_group.path_prefix` when it does not start with `/`, is not a valid
    /// pattern, or is given twice; `route_group.name` when the name is empty; a
    /// conflict when the layer reads a shared table.
    pub fn route_group(mut self, group: &str, path_prefix: &str) -> Result<Self, ConfigError> {
        if !path_prefix.starts_with('/') {
            return Err(ConfigError::new(
                "rate_limit",
                "route_group.path_prefix",
                "must start with `/`",
            ));
        }
        if group.is_empty() {
            return Err(ConfigError::new(
                "rate_limit",
                "route_group.name",
                "must not be empty",
            ));
        }
        self.config_mut().route_groups.push_prefix(group, path_prefix)?;
        Ok(self)
    }

    /// Whether the layer has route groups: path prefixes
    /// ([`RateLimitLayer::route_group`]) or a shared table ([`RateLimitLayer::routes`]).
    pub fn has_route_groups(&self) -> bool {
        self.config.route_groups.is_configured()
    }

    /// Reads the route groups from the shared route table: a route's
    /// [`RateGroup`](crate::RateGroup), else its template. Requests in no route are
    /// in the group `*`. The stack's layers given the same table match each request
    /// once.
    ///
    /// # Errors
    /// A conflict when groups were already declared with
    /// [`RateLimitLayer::route_group`].
    pub fn routes(mut self, routes: &nhi_guard_core::route::Routes) -> Result<Self, ConfigError> {
        self.config_mut().route_groups.shared(routes)?;
        Ok(self)
    }

    /// Shadow mode: over-limit requests pass, and the denial they would have got is
    /// recorded in the security context (`shadow_denials`) and logged.
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.config_mut().shadow = shadow;
        self
    }

    /// The header API keys are presented in: the one the identity layer reads
    /// (default `x-api-key`; the `NhiGuard` builder copies identity's). Limits that
    /// [exempt verified clients](Limit::exempt_verified) look for a credential
    /// there and in `Authorization`.
    #[must_use]
    pub fn api_key_header(mut self, name: HeaderName) -> Self {
        self.config_mut().api_key_header = name;
        self
    }

    /// Whether allowed responses carry `RateLimit-Policy` / `RateLimit` too (default
    /// true; 429 responses always do).
    #[must_use]
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        self.config_mut().headers_on_allowed = on;
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, self.config.clone())
    }
}
