//! [`NhiGuard::builder`]: the five controls composed in the order DESIGN.md fixes,
//! with one registry, one clock and one address resolver.

use std::fmt;
use std::sync::Arc;

use nhi_guard_audit::AuditLayer;
use nhi_guard_core::ClientAddrResolver;
use nhi_guard_core::clock::{SharedClock, SystemClock};
use nhi_guard_core::denial::DefaultRenderer;
use nhi_guard_core::registry::SharedRegistry;
use nhi_guard_identity::{IdentityLayer, IdentityLayerBuilder};
use nhi_guard_ratelimit::{AuthFailureLimitLayer, RateLimitLayer};
use nhi_guard_risk::{RiskEdgeLayer, RiskLayer};
use nhi_guard_scope::ScopeLayer;
use nhi_guard_scope::report::warn_unreachable_rules;
use tower::layer::util::Stack;
use tower::util::Either;
use tower_layer::Layer;

use crate::maybe::{Boxed, Maybe};

/// Entry point of the whole stack.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use nhi_guard::NhiGuard;
/// use nhi_guard::prelude::*;
/// use nhi_guard::identity::IdentityLayer;
/// use nhi_guard::scope::{Policy, Require, ScopeLayer};
///
/// let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
/// let registry = std::sync::Arc::new(InMemoryRegistry::new(
///     Inventory::builder()
///         .client(
///             ClientRecord::builder("billing-export", "finance@example.com", "Nightly export", expires)
///                 .scopes(ScopeSet::parse("invoices:read").unwrap())
///                 .api_key("nhik_live_4f9c2a7d1e8b")
///                 .build()
///                 .unwrap(),
///         )
///         .build()
///         .unwrap(),
/// ));
/// let policy = Policy::builder()
///     .get("/invoices", Require::all_of("invoices:read"))
///     .build()
///     .unwrap();
/// let guard = NhiGuard::builder(registry.clone())
///     .identity(IdentityLayer::builder(registry))
///     .scope(ScopeLayer::new(policy))
///     .build()
///     .unwrap();
/// let app: axum::Router = axum::Router::new()
///     .route("/invoices", axum::routing::get(|| async { "[]" }))
///     .layer(guard);
/// # let _ = app;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct NhiGuard;

impl NhiGuard {
    /// Starts a stack around `registry`, the client inventory every control consults.
    pub fn builder(registry: SharedRegistry) -> NhiGuardBuilder {
        NhiGuardBuilder {
            registry,
            clock: Arc::new(SystemClock),
            resolver: ClientAddrResolver::new(),
            audit: None,
            address_limit: None,
            failure_limit: None,
            identity: None,
            risk: None,
            rate_limit: None,
            scope: None,
            check_policy_scopes: false,
            realm: None,
        }
    }
}

/// Which part of the configuration is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    control: &'static str,
    field: &'static str,
    message: String,
}

impl BuildError {
    fn new(control: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self {
            control,
            field,
            message: message.into(),
        }
    }

    /// The control at fault (`identity`, `scope`, `rate_limit`, `risk`, `audit`, `registry`).
    pub fn control(&self) -> &'static str {
        self.control
    }

    /// The field at fault.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.control, self.field, self.message)
    }
}

impl std::error::Error for BuildError {}

/// Configures the whole stack. Each control is optional and configured through its
/// own builder; [`NhiGuardBuilder::build`] validates them together.
#[must_use]
pub struct NhiGuardBuilder {
    registry: SharedRegistry,
    clock: SharedClock,
    resolver: ClientAddrResolver,
    audit: Option<AuditLayer>,
    address_limit: Option<RateLimitLayer>,
    failure_limit: Option<AuthFailureLimitLayer>,
    identity: Option<IdentityLayerBuilder>,
    risk: Option<RiskLayer>,
    rate_limit: Option<RateLimitLayer>,
    scope: Option<ScopeLayer>,
    check_policy_scopes: bool,
    realm: Option<Arc<str>>,
}

impl fmt::Debug for NhiGuardBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NhiGuardBuilder")
            .field("audit", &self.audit.is_some())
            .field("address_limit", &self.address_limit.is_some())
            .field("failure_limit", &self.failure_limit.is_some())
            .field("identity", &self.identity.is_some())
            .field("risk", &self.risk.is_some())
            .field("rate_limit", &self.rate_limit.is_some())
            .field("scope", &self.scope.is_some())
            .finish_non_exhaustive()
    }
}

impl NhiGuardBuilder {
    /// One clock for every control (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// One client-address resolver (trusted proxies) for every control.
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// The `realm` of every control's `WWW-Authenticate` challenge (default `api`).
    /// Sets the default renderer of each control; a control given its own renderer
    /// afterwards keeps it.
    pub fn realm(mut self, realm: impl Into<Arc<str>>) -> Self {
        self.realm = Some(realm.into());
        self
    }

    /// The audit layer (outermost).
    pub fn audit(mut self, layer: AuditLayer) -> Self {
        self.audit = Some(layer);
        self
    }

    /// A rate limit that runs before authentication, typically keyed by address.
    pub fn address_rate_limit(mut self, layer: RateLimitLayer) -> Self {
        self.address_limit = Some(layer);
        self
    }

    /// The failure-only limit (fail2ban style): counts failed authentications by
    /// address and credential fingerprint; runs outside identity.
    pub fn auth_failure_limit(mut self, layer: AuthFailureLimitLayer) -> Self {
        self.failure_limit = Some(layer);
        self
    }

    /// The identity layer, given as its builder so that the stack's clock and
    /// address resolver reach it. With a scope layer in the stack, identity runs in
    /// optional mode: a request without any credential reaches the scope policy,
    /// which lets it through on public routes only and answers `401` elsewhere; an
    /// invalid credential is refused by identity as always.
    pub fn identity(mut self, builder: IdentityLayerBuilder) -> Self {
        self.identity = Some(builder);
        self
    }

    /// The risk layer; its edge half is placed before identity automatically.
    pub fn risk(mut self, layer: RiskLayer) -> Self {
        self.risk = Some(layer);
        self
    }

    /// The rate limit after authentication (per client, per client and route, tiers).
    pub fn rate_limit(mut self, layer: RateLimitLayer) -> Self {
        self.rate_limit = Some(layer);
        self
    }

    /// The scope layer (innermost).
    pub fn scope(mut self, layer: ScopeLayer) -> Self {
        self.scope = Some(layer);
        self
    }

    /// Whether `build` refuses a scope policy with a rule no client in the inventory
    /// can pass (default: off). Either way each such rule is logged as a warning,
    /// counted in the `nhi_guard_scope_unreachable_rules` gauge, and listed by the
    /// least-privilege report given the policy: a route added before its first
    /// client is onboarded, or after its last one left, must not stop a service
    /// from starting. Turn it on for a fixed inventory where such a rule can only
    /// be a mistake (a misspelt scope).
    pub fn check_policy_scopes(mut self, on: bool) -> Self {
        self.check_policy_scopes = on;
        self
    }

    /// Validates the configuration and returns the composed layer.
    ///
    /// # Errors
    /// [`BuildError`] naming the control and the field: risk or scope without
    /// identity, a client whose tier is not defined, a policy rule no client can
    /// pass (only with [`NhiGuardBuilder::check_policy_scopes`]), and the controls'
    /// own configuration errors.
    pub fn build(self) -> Result<NhiGuardLayer, BuildError> {
        let clients = self.registry.clients();
        for c in &clients {
            if self.registry.tier(c.tier()).is_none() {
                return Err(BuildError::new(
                    "registry",
                    "tier",
                    format!(
                        "client `{}` names tier {:?}, which is not defined",
                        c.id(),
                        c.tier()
                    ),
                ));
            }
        }
        if self.identity.is_none() {
            if self.risk.is_some() {
                return Err(BuildError::new(
                    "risk",
                    "identity",
                    "risk scoring needs the identity layer (its signals key on verified clients)",
                ));
            }
            if self.scope.is_some() {
                return Err(BuildError::new(
                    "scope",
                    "identity",
                    "scope checks need the identity layer to set a principal",
                ));
            }
        }
        if let Some(policy) = self.scope.as_ref().and_then(ScopeLayer::policy) {
            // A route before its first client, or after its last: a warning (log
            // line, gauge, least-privilege report), a refusal only when asked.
            let unreachable = warn_unreachable_rules(policy, &*self.registry);
            if self.check_policy_scopes
                && let Some(r) = unreachable.first()
            {
                return Err(BuildError::new(
                    "scope",
                    "policy",
                    format!(
                        "rule {} requires {}, which no client in the inventory can hold",
                        r.rule, r.missing
                    ),
                ));
            }
        }

        let clock = self.clock;
        let resolver = self.resolver;
        let renderer = self
            .realm
            .as_ref()
            .map(|r| DefaultRenderer::new().realm(r.clone()));
        // The limits in front of identity look for credentials where it does.
        let api_key_header = self
            .identity
            .as_ref()
            .and_then(|b| b.api_key_header_name().cloned());
        let identity = match self.identity {
            Some(mut b) => Some({
                if let Some(r) = &renderer {
                    b = b.renderer(r.clone());
                }
                if self.scope.is_some() {
                    // The scope policy decides which routes are public; identity
                    // still refuses every invalid credential, and the scope layer
                    // answers a missing one with the same 401 challenge.
                    b = b.optional(true);
                }
                b.clock(clock.clone())
                    .client_addr_resolver(resolver.clone())
                    .build()
                    .map_err(|e| BuildError::new("identity", e.field(), e.to_string()))?
            }),
            None => None,
        };
        let risk = self.risk.map(|mut r| {
            if let Some(rd) = &renderer {
                r = r.renderer(rd.clone());
            }
            r.clock(clock.clone()).client_addr_resolver(resolver.clone())
        });
        let edge = risk.as_ref().map(RiskLayer::edge);
        let with_common = |mut l: RateLimitLayer| {
            if let Some(r) = &renderer {
                l = l.renderer(r.clone());
            }
            if let Some(h) = &api_key_header {
                l = l.api_key_header(h.clone());
            }
            l.clock(clock.clone())
                .client_addr_resolver(resolver.clone())
                .registry(self.registry.clone())
        };
        let layers = Stack::new(
            Maybe(self.scope.map(|mut s| {
                if let Some(r) = &renderer {
                    s = s.renderer(r.clone());
                }
                s.clock(clock.clone()).client_addr_resolver(resolver.clone())
            })),
            Stack::new(
                Maybe(self.rate_limit.map(with_common)),
                Stack::new(
                    Maybe(risk),
                    Stack::new(
                        Maybe(identity),
                        Stack::new(
                            Maybe(edge),
                            Stack::new(
                                Maybe(self.failure_limit.map(|mut f| {
                                    if let Some(r) = &renderer {
                                        f = f.renderer(r.clone());
                                    }
                                    if let Some(h) = &api_key_header {
                                        f = f.api_key_header(h.clone());
                                    }
                                    f.clock(clock.clone()).client_addr_resolver(resolver.clone())
                                })),
                                Stack::new(
                                    Maybe(self.address_limit.map(with_common)),
                                    tower::util::option_layer(self.audit.map(|a| {
                                        a.clock(clock.clone()).client_addr_resolver(resolver.clone())
                                    })),
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        );
        Ok(NhiGuardLayer {
            layers: Arc::new(layers),
        })
    }
}

type Layers = Stack<
    Maybe<ScopeLayer>,
    Stack<
        Maybe<RateLimitLayer>,
        Stack<
            Maybe<RiskLayer>,
            Stack<
                Maybe<IdentityLayer>,
                Stack<
                    Maybe<RiskEdgeLayer>,
                    Stack<
                        Maybe<AuthFailureLimitLayer>,
                        Stack<Maybe<RateLimitLayer>, Either<AuditLayer, tower::layer::util::Identity>>,
                    >,
                >,
            >,
        >,
    >,
>;

/// The composed stack: audit → address rate limit → failure limit → risk edge →
/// identity → risk → rate limit → scope → your service. Cheap to clone.
///
/// Your service's future is boxed once per request (so it must be `Send +
/// 'static`, as axum and tonic require anyway): the seven layers then wrap a
/// pointer instead of moving the application's whole future as each wraps it.
#[derive(Clone)]
pub struct NhiGuardLayer {
    layers: Arc<Layers>,
}

impl fmt::Debug for NhiGuardLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NhiGuardLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for NhiGuardLayer {
    type Service = <Layers as Layer<Boxed<S>>>::Service;

    fn layer(&self, inner: S) -> Self::Service {
        self.layers.layer(Boxed(inner))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use nhi_guard_core::ScopeSet;
    use nhi_guard_core::registry::{ClientRecord, InMemoryRegistry, Inventory};
    use nhi_guard_identity::IdentityLayer;
    use nhi_guard_scope::{Policy, Require, ScopeLayer};

    use super::NhiGuard;

    /// A policy with a route no client can call yet (its scope is held by nobody).
    fn stack(strict: Option<bool>) -> Result<super::NhiGuardLayer, super::BuildError> {
        let registry = Arc::new(InMemoryRegistry::new(
            Inventory::builder()
                .client(
                    ClientRecord::builder(
                        "reporting-bot",
                        "analytics@example.com",
                        "Nightly report",
                        SystemTime::now() + Duration::from_secs(86_400),
                    )
                    .scopes(ScopeSet::parse("orders:read").expect("scopes"))
                    .build()
                    .expect("record"),
                )
                .build()
                .expect("inventory"),
        ));
        let policy = Policy::builder()
            .get("/orders", Require::all_of("orders:read"))
            .post("/refunds", Require::all_of("refunds:write"))
            .build()
            .expect("policy");
        let mut builder = NhiGuard::builder(registry.clone())
            .identity(IdentityLayer::builder(registry))
            .scope(ScopeLayer::new(policy));
        if let Some(on) = strict {
            builder = builder.check_policy_scopes(on);
        }
        builder.build()
    }

    #[test]
    fn a_rule_no_client_can_pass_is_a_warning_unless_strict() {
        assert!(stack(None).is_ok(), "the default only warns");
        assert!(stack(Some(false)).is_ok());
        let err = stack(Some(true)).expect_err("strict");
        assert_eq!((err.control(), err.field()), ("scope", "policy"));
        assert!(
            err.to_string().contains("POST /refunds requires refunds:write"),
            "{err}"
        );
    }
}
