//! `IdentityLayer`: configuration and its builder.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use nhi_guard_core::address::ClientAddrResolver;
use nhi_guard_core::clock::{SharedClock, SystemClock};
use nhi_guard_core::denial::{DefaultRenderer, RenderDenial, SharedRenderer};
use nhi_guard_core::hash::FxBuildHasher;
use nhi_guard_core::registry::{ClientRegistry, InventoryRequirement, SharedRegistry};
use nhi_guard_core::settings::{Explicit, LayerSettings};

use crate::cache::TokenCache;
use crate::jwt::Issuer;
use crate::mtls::CertificateDetails;
use crate::revocation::Revocations;
use crate::service::IdentityService;
use crate::ungoverned::UngovernedClients;

/// A kind of credential, for [`IdentityLayerBuilder::order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Credential {
    /// `Authorization: Bearer <JWT access token>`.
    Bearer,
    /// `X-API-Key: <key>` (header configurable) or `Authorization: ApiKey <key>`.
    ApiKey,
    /// The mTLS client certificate ([`crate::PeerCertificates`] in the request).
    ClientCertificate,
}

pub use nhi_guard_core::config::ConfigError;

pub(crate) struct Config {
    pub(crate) issuers: Vec<Issuer>,
    /// Filled from the configuration only: the unkeyed hasher is safe for lookups.
    pub(crate) by_iss: HashMap<Arc<str>, usize, FxBuildHasher>,
    pub(crate) registry: SharedRegistry,
    pub(crate) order: Vec<Credential>,
    pub(crate) api_key_header: HeaderName,
    pub(crate) api_key_in_authorization: bool,
    pub(crate) optional: bool,
    pub(crate) renderer: SharedRenderer,
    pub(crate) resolver: ClientAddrResolver,
    pub(crate) clock: SharedClock,
    pub(crate) cache: Option<TokenCache>,
    pub(crate) max_token_bytes: usize,
    pub(crate) cert_mapper: Option<CertificateMapper>,
    pub(crate) metrics: nhi_guard_core::metrics::ControlMetrics,
    pub(crate) ungoverned: Option<UngovernedClients>,
    pub(crate) revocations: Option<Revocations>,
}

/// Maps a client certificate without SPIFFE id to a client id of the inventory.
pub(crate) type CertificateMapper = Arc<dyn Fn(&CertificateDetails) -> Option<String> + Send + Sync>;

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityConfig")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &*i.iss).collect::<Vec<_>>(),
            )
            .field("order", &self.order)
            .field("api_key_header", &self.api_key_header)
            .field("optional", &self.optional)
            .field("token_cache", &self.cache.is_some())
            .field("max_token_bytes", &self.max_token_bytes)
            .field("certificate_mapper", &self.cert_mapper.is_some())
            .field("ungoverned", &self.ungoverned)
            .field("revocations", &self.revocations)
            .finish_non_exhaustive()
    }
}

/// Verifies the caller's credential (JWT access token, API key or mTLS client
/// certificate), maps it to an active, unexpired client of the inventory that
/// calls from an allowed network, and records the resulting
/// [`Principal`](nhi_guard_core::Principal) in the
/// [`SecurityContext`](nhi_guard_core::SecurityContext) and in the request's
/// extensions. Refusals are RFC 6750 / RFC 9457 responses (or gRPC
/// `UNAUTHENTICATED`).
///
/// Build it with [`IdentityLayer::builder`].
#[derive(Clone)]
pub struct IdentityLayer {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for IdentityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdentityLayer").field(&self.config).finish()
    }
}

impl IdentityLayer {
    /// Starts a configuration that maps credentials to clients of `registry`.
    pub fn builder(registry: impl ClientRegistry) -> IdentityLayerBuilder {
        IdentityLayerBuilder::new().registry(Arc::new(registry))
    }
}

impl Default for IdentityLayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl IdentityLayerBuilder {
    /// Starts a configuration without a registry: give it with
    /// [`IdentityLayerBuilder::registry`], or hand the builder to
    /// `NhiGuard::builder(registry)`, which gives the stack's registry to a
    /// builder that has none (the registry is passed once).
    pub fn new() -> Self {
        Self {
            issuers: Vec::new(),
            registry: None,
            order: vec![
                Credential::Bearer,
                Credential::ApiKey,
                Credential::ClientCertificate,
            ],
            api_key_header: Ok(HeaderName::from_static("x-api-key")),
            api_key_in_authorization: true,
            optional: false,
            renderer: None,
            realm: None,
            resolver: ClientAddrResolver::new(),
            clock: Arc::new(SystemClock),
            explicit: Explicit::default(),
            cache_capacity: Some(10_000),
            max_token_bytes: 8 * 1024,
            cert_mapper: None,
            ungoverned: None,
            revocations: None,
        }
    }

    /// The inventory credentials are mapped to.
    pub fn registry(mut self, registry: SharedRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Whether a registry was given.
    pub fn has_registry(&self) -> bool {
        self.registry.is_some()
    }
}

impl<S> tower_layer::Layer<S> for IdentityLayer {
    type Service = IdentityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdentityService {
            inner,
            config: Some(self.config.clone()),
        }
    }
}

/// Builder of [`IdentityLayer`].
#[must_use]
pub struct IdentityLayerBuilder {
    issuers: Vec<Issuer>,
    registry: Option<SharedRegistry>,
    order: Vec<Credential>,
    api_key_header: Result<HeaderName, String>,
    api_key_in_authorization: bool,
    optional: bool,
    renderer: Option<SharedRenderer>,
    realm: Option<Arc<str>>,
    resolver: ClientAddrResolver,
    clock: SharedClock,
    explicit: Explicit,
    cache_capacity: Option<u64>,
    max_token_bytes: usize,
    cert_mapper: Option<CertificateMapper>,
    ungoverned: Option<UngovernedClients>,
    revocations: Option<Revocations>,
}

impl fmt::Debug for IdentityLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityLayerBuilder")
            .field("issuers", &self.issuers.len())
            .field("order", &self.order)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

impl IdentityLayerBuilder {
    /// Trusts tokens of `issuer`. Several issuers may be configured; a token is
    /// routed by its (unverified) `iss` to that issuer's keys only.
    ///
    /// A token is accepted for a client only from an issuer the client lists in
    /// the inventory (`issuers`, compared exactly with `iss`), when it lists any.
    /// With several issuers every client must list its issuers, so that a token of
    /// one issuer cannot name another issuer's client: [`build`](Self::build)
    /// fails otherwise, and registers the requirement with the registry
    /// ([`ClientRegistry::require`]) so that
    /// [`InMemoryRegistry::replace`](nhi_guard_core::InMemoryRegistry::replace)
    /// and `reload_from_file` refuse an inventory that breaks it later.
    pub fn issuer(mut self, issuer: Issuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Which credentials are accepted and, when a request presents several, which
    /// one decides (the first present in this order). Default: bearer token, API
    /// key, client certificate. A token bound to a certificate (RFC 8705) is
    /// checked against the certificate whatever the order.
    pub fn order(mut self, order: impl IntoIterator<Item = Credential>) -> Self {
        self.order = order.into_iter().collect();
        self
    }

    /// The header carrying API keys (default `X-API-Key`).
    pub fn api_key_header(mut self, name: &str) -> Self {
        self.api_key_header = HeaderName::try_from(name).map_err(|e| format!("{name:?}: {e}"));
        self
    }

    /// The header API keys are read from, when the name given is valid (an invalid
    /// one fails `build`). The `NhiGuard` builder hands it to the limits in front of
    /// identity, so they see the same credentials identity does.
    pub fn api_key_header_name(&self) -> Option<&HeaderName> {
        self.api_key_header.as_ref().ok()
    }

    /// Whether `Authorization: ApiKey <key>` is accepted too (default: yes).
    pub fn api_key_in_authorization(mut self, on: bool) -> Self {
        self.api_key_in_authorization = on;
        self
    }

    /// Optional mode: a request without any credential passes without a principal
    /// (for routes open to anonymous callers). A credential that is presented and
    /// invalid is still refused.
    pub fn optional(mut self, on: bool) -> Self {
        self.optional = on;
        self
    }

    /// Replaces the rendering of refusals.
    pub fn renderer(mut self, renderer: impl RenderDenial) -> Self {
        self.renderer = Some(Arc::new(renderer));
        self
    }

    /// The `realm` of `WWW-Authenticate` challenges with the default renderer.
    pub fn realm(mut self, realm: impl Into<Arc<str>>) -> Self {
        self.realm = Some(realm.into());
        self
    }

    /// How the client address is resolved (trusted proxies), for `networks`.
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        self.resolver = resolver;
        self.explicit.resolver = true;
        self
    }

    /// The clock (tests use `ManualClock` or `TokioClock`).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self.explicit.clock = true;
        self
    }

    /// Takes the stack's clock, resolver and renderer for those this layer was not
    /// given (see [`nhi_guard_core::settings`]); a realm set here counts as a
    /// renderer.
    pub fn inherit(mut self, stack: &LayerSettings) -> Self {
        self.explicit
            .fill(stack, &mut self.clock, &mut self.resolver, None);
        if self.renderer.is_none() && self.realm.is_none() {
            self.renderer = stack.denial_renderer().cloned();
        }
        self
    }

    /// The client-address resolver set on this layer, if one was.
    pub fn own_client_addr_resolver(&self) -> Option<&ClientAddrResolver> {
        self.explicit.resolver.then_some(&self.resolver)
    }

    /// Capacity of the verified-token cache (default 10 000 tokens); `0` turns
    /// the cache off.
    pub fn token_cache(mut self, capacity: u64) -> Self {
        self.cache_capacity = (capacity > 0).then_some(capacity);
        self
    }

    /// Largest accepted token in bytes (default 8 KiB).
    pub fn max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = max;
        self
    }

    /// Maps client certificates that carry no SPIFFE id (no URI SAN) to a client
    /// id of the inventory, for example from the subject's common name. Without a
    /// mapper such certificates are refused. Certificates with a URI SAN always
    /// follow the X.509-SVID rules and match `spiffe_ids`.
    ///
    /// ```
    /// # use nhi_guard_core::{InMemoryRegistry, Inventory};
    /// use nhi_guard_identity::IdentityLayer;
    /// # let registry = InMemoryRegistry::new(Inventory::builder().build().unwrap());
    /// let layer = IdentityLayer::builder(registry)
    ///     .certificate_mapper(|cert| cert.common_name.clone())
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn certificate_mapper(
        mut self,
        mapper: impl Fn(&CertificateDetails) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.cert_mapper = Some(Arc::new(mapper));
        self
    }

    /// Records ungoverned callers in `recorder`: tokens of a trusted issuer naming
    /// a client the inventory does not know, and API keys that match no client
    /// (by a hash prefix only). They are refused as without it; keep a clone of
    /// the recorder to report on them ([`UngovernedClients::snapshot`]).
    pub fn ungoverned(mut self, recorder: UngovernedClients) -> Self {
        self.ungoverned = Some(recorder);
        self
    }

    /// Refuses what `revocations` revokes: every credential of a revoked client
    /// (`client_revoked`), a revoked API key (`api_key_revoked`), a token by its
    /// `jti` (`token_revoked`). Checked on every request after the token cache;
    /// keep a clone to revoke and lift ([`Revocations::revoke`]).
    pub fn revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the field: an issuer without audience or keys, an
    /// unsupported algorithm, a duplicate issuer, an invalid header name, an
    /// empty credential order, a zero token size; `registry` when several issuers
    /// are trusted and a client of the inventory lists none (the message names
    /// the client), or when no registry was given.
    pub fn build(self) -> Result<IdentityLayer, ConfigError> {
        let registry = self.registry.ok_or_else(|| {
            ConfigError::new(
                "identity",
                "registry",
                "no client inventory: give one (IdentityLayerBuilder::registry) or build the layer \
                 through NhiGuard::builder(registry)",
            )
            .kind_of(nhi_guard_core::config::ConfigErrorKind::Missing)
        })?;
        let api_key_header = self
            .api_key_header
            .map_err(|m| ConfigError::new("identity", "api_key_header", m))?;
        if self.order.is_empty() {
            return Err(ConfigError::new(
                "identity",
                "order",
                "at least one credential kind is required",
            ));
        }
        let mut order = Vec::new();
        for c in self.order {
            if order.contains(&c) {
                return Err(ConfigError::new(
                    "identity",
                    "order",
                    format!("{c:?} is listed twice"),
                ));
            }
            order.push(c);
        }
        if order.contains(&Credential::Bearer) && self.issuers.is_empty() && order.len() == 1 {
            return Err(ConfigError::new(
                "identity",
                "issuer",
                "bearer tokens need at least one issuer",
            ));
        }
        if self.max_token_bytes < 64 {
            return Err(ConfigError::new(
                "identity",
                "max_token_bytes",
                "must be at least 64",
            ));
        }
        let mut by_iss = HashMap::default();
        for (i, issuer) in self.issuers.iter().enumerate() {
            issuer
                .validate()
                .map_err(|m| ConfigError::new("identity", "issuer", m))?;
            if by_iss.insert(issuer.iss.clone(), i).is_some() {
                return Err(ConfigError::new(
                    "identity",
                    "issuer",
                    format!("{:?} is configured twice", issuer.iss),
                ));
            }
        }
        // Last, once nothing else can fail: the registry keeps the requirement.
        if order.contains(&Credential::Bearer) && !self.issuers.is_empty() {
            registry
                .require(InventoryRequirement::trusted_issuers(
                    self.issuers.iter().map(|i| i.iss.clone()),
                ))
                .map_err(|e| ConfigError::new("identity", "registry", e.to_string()))?;
        }
        let renderer = match self.renderer {
            Some(r) => r,
            None => {
                let mut r = DefaultRenderer::new();
                if let Some(realm) = self.realm {
                    r = r.realm(realm);
                }
                r.shared()
            }
        };
        Ok(IdentityLayer {
            config: Arc::new(Config {
                issuers: self.issuers,
                by_iss,
                registry,
                order,
                api_key_header,
                api_key_in_authorization: self.api_key_in_authorization,
                optional: self.optional,
                renderer,
                resolver: self.resolver,
                clock: self.clock,
                cache: self.cache_capacity.map(TokenCache::new),
                max_token_bytes: self.max_token_bytes,
                cert_mapper: self.cert_mapper,
                metrics: nhi_guard_core::metrics::ControlMetrics::new(nhi_guard_core::Control::Identity),
                ungoverned: self.ungoverned,
                revocations: self.revocations,
            }),
        })
    }
}
