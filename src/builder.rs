//! [`NhiGuard::builder`]: the five controls composed in the order DESIGN.md fixes,
//! with one registry, one clock and one address resolver.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use nhi_guard_audit::AuditLayer;
use nhi_guard_audit::{Audit, ResponseFuture as AuditFuture};
use nhi_guard_core::ClientAddrResolver;
use nhi_guard_core::GuardBody;
use nhi_guard_core::clock::{SharedClock, SystemClock};
use nhi_guard_core::config::{ConfigError, ConfigErrorKind};
use nhi_guard_core::future::ResponseFuture as CoreFuture;
use nhi_guard_core::registry::SharedRegistry;
use nhi_guard_core::route::Routes;
use nhi_guard_core::settings::LayerSettings;
use nhi_guard_identity::{IdentityLayer, IdentityLayerBuilder};
use nhi_guard_identity::{IdentityService, ResponseFuture as IdentityFuture};
use nhi_guard_ratelimit::{
    AuthFailureLimit, FailureFuture, RateLimitService, ResponseFuture as RateLimitFuture,
};
use nhi_guard_ratelimit::{AuthFailureLimitLayer, RateLimitLayer};
use nhi_guard_risk::{ResponseFuture as RiskFuture, Risk, RiskEdge};
use nhi_guard_risk::{RiskEdgeLayer, RiskLayer};
use nhi_guard_scope::Scope;
use nhi_guard_scope::report::warn_unreachable_rules;
use nhi_guard_scope::{Policy, Require, ScopeLayer};
use pin_project_lite::pin_project;
use tower::layer::util::Stack;
use tower::util::Either;
use tower::util::future::EitherResponseFuture;
use tower_layer::Layer;
use tower_service::Service;

use crate::maybe::{Boxed, Maybe};
use crate::span::SpanSettings;

/// Entry point of the whole stack.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use nhi_guard::NhiGuard;
/// use nhi_guard::prelude::*;
/// use nhi_guard::identity::IdentityLayerBuilder;
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
/// let guard = NhiGuard::builder(registry)
///     .identity(IdentityLayerBuilder::new())
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
            resolver: None,
            audit: None,
            address_limit: None,
            failure_limit: None,
            identity: None,
            risk: None,
            rate_limit: None,
            scope: None,
            routes: None,
            check_policy_scopes: false,
            realm: None,
        }
    }
}

/// Which part of the configuration is wrong: the one [`ConfigError`] of every
/// control, so a control's error goes into the stack's with `?`.
pub type BuildError = ConfigError;

/// Configures the whole stack. Each control is optional and configured through its
/// own builder; [`NhiGuardBuilder::build`] validates them together.
#[must_use]
pub struct NhiGuardBuilder {
    registry: SharedRegistry,
    clock: SharedClock,
    resolver: Option<ClientAddrResolver>,
    audit: Option<AuditLayer>,
    address_limit: Option<RateLimitLayer>,
    failure_limit: Option<AuthFailureLimitLayer>,
    identity: Option<IdentityLayerBuilder>,
    risk: Option<RiskLayer>,
    rate_limit: Option<RateLimitLayer>,
    scope: Option<ScopeLayer>,
    routes: Option<Routes>,
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
    /// The clock of every control that was not given its own (default: the
    /// system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// One client-address resolver (trusted proxies) for the whole stack. A
    /// resolver given to one layer instead is used by the whole stack too; two
    /// different resolvers are a build error (the address is resolved once per
    /// request, by the outermost layer).
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// The `realm` of the `WWW-Authenticate` challenges of every control that was
    /// not given its own renderer or realm (default `api`).
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

    /// The identity layer, given as its builder so that the stack's clock,
    /// address resolver and, when the builder has none
    /// (`IdentityLayerBuilder::new()`), registry reach it. With a scope layer in the stack, identity runs in
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

    /// The one route table of the stack: each route declares its scope
    /// requirement (`Require`), risk attributes (`RouteRisk`) and rate-limit group
    /// (`RateGroup`) once, and every layer matches a request against it once.
    ///
    /// The table becomes the scope policy when no scope layer is given (deny for
    /// routes without a `Require` and for requests outside the table), the risk
    /// layer's routes when it has none of its own, and the route groups of the rate
    /// limits that have none.
    pub fn routes(mut self, routes: Routes) -> Self {
        self.routes = Some(routes);
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
    pub fn build(mut self) -> Result<NhiGuardLayer, BuildError> {
        if let Some(routes) = self.routes.take() {
            self.use_routes(&routes)?;
        }
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
                )
                .kind_of(ConfigErrorKind::Missing));
            }
            if self.scope.is_some() {
                return Err(BuildError::new(
                    "scope",
                    "identity",
                    "scope checks need the identity layer to set a principal",
                )
                .kind_of(ConfigErrorKind::Missing));
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

        // The settings every layer takes: the stack fills only what a layer left
        // unset. The client address is resolved once per request, by the
        // outermost layer, so every resolver given must be the same one.
        let mut stack = LayerSettings::new().clock(self.clock.clone());
        if let Some(realm) = &self.realm {
            stack = stack.realm(realm.clone());
        }
        let own_resolvers = [
            (
                "audit",
                self.audit.as_ref().and_then(AuditLayer::own_client_addr_resolver),
            ),
            (
                "address_rate_limit",
                self.address_limit
                    .as_ref()
                    .and_then(RateLimitLayer::own_client_addr_resolver),
            ),
            (
                "auth_failure_limit",
                self.failure_limit
                    .as_ref()
                    .and_then(AuthFailureLimitLayer::own_client_addr_resolver),
            ),
            (
                "identity",
                self.identity
                    .as_ref()
                    .and_then(IdentityLayerBuilder::own_client_addr_resolver),
            ),
            (
                "risk",
                self.risk.as_ref().and_then(RiskLayer::own_client_addr_resolver),
            ),
            (
                "rate_limit",
                self.rate_limit
                    .as_ref()
                    .and_then(RateLimitLayer::own_client_addr_resolver),
            ),
            (
                "scope",
                self.scope.as_ref().and_then(ScopeLayer::own_client_addr_resolver),
            ),
        ];
        // The inventory gauges as the stack starts (the registry sets them again on
        // each replacement, if it is an `InMemoryRegistry`).
        nhi_guard_core::metrics::inventory(&*self.registry, self.clock.now());
        let mut resolver = self.resolver.map(|r| ("the stack", r));
        for (control, own) in own_resolvers {
            let Some(own) = own else { continue };
            match &resolver {
                None => resolver = Some((control, own.clone())),
                Some((_, r)) if r == own => {}
                Some((first, _)) => {
                    return Err(BuildError::new(
                        control,
                        "client_addr_resolver",
                        format!(
                            "differs from the one given to {first}: the outermost layer resolves \
                             the client address for the whole stack, so give one resolver \
                             (NhiGuardBuilder::client_addr_resolver)"
                        ),
                    )
                    .kind_of(ConfigErrorKind::Conflict));
                }
            }
        }
        let span = Arc::new(SpanSettings {
            resolver: resolver
                .as_ref()
                .map_or_else(ClientAddrResolver::new, |(_, r)| r.clone()),
            clock: self.clock.clone(),
        });
        if let Some((_, r)) = resolver {
            stack = stack.client_addr_resolver(r);
        }
        // The limits in front of identity look for credentials where it does.
        let api_key_header = self
            .identity
            .as_ref()
            .and_then(|b| b.api_key_header_name().cloned());
        let identity = match self.identity {
            Some(mut b) => Some({
                if !b.has_registry() {
                    // The registry is passed once, to the stack.
                    b = b.registry(self.registry.clone());
                }
                if self.scope.is_some() {
                    // The scope policy decides which routes are public; identity
                    // still refuses every invalid credential, and the scope layer
                    // answers a missing one with the same 401 challenge.
                    b = b.optional(true);
                }
                b.inherit(&stack).build()?
            }),
            None => None,
        };
        let risk = self.risk.map(|r| r.inherit(&stack));
        let edge = risk.as_ref().map(RiskLayer::edge);
        let with_common = |mut l: RateLimitLayer| {
            if let Some(h) = &api_key_header {
                l = l.api_key_header(h.clone());
            }
            l.inherit(&stack).registry(self.registry.clone())
        };
        let layers = Stack::new(
            Maybe(self.scope.map(|s| s.inherit(&stack))),
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
                                    if let Some(h) = &api_key_header {
                                        f = f.api_key_header(h.clone());
                                    }
                                    f.inherit(&stack)
                                })),
                                Stack::new(
                                    Maybe(self.address_limit.map(with_common)),
                                    tower::util::option_layer(self.audit.map(|a| a.inherit(&stack))),
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        );
        Ok(NhiGuardLayer {
            layers: Arc::new(layers),
            span,
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

impl NhiGuardBuilder {
    /// Hands the one route table to the layers that have no routes of their own.
    fn use_routes(&mut self, routes: &Routes) -> Result<(), BuildError> {
        if self.scope.is_none() && routes.routes().iter().any(|r| r.attr::<Require>().is_some()) {
            self.scope = Some(ScopeLayer::new(Policy::from_routes(routes)?));
        }
        if let Some(risk) = self.risk.take() {
            self.risk = Some(if risk.has_routes() {
                risk
            } else {
                risk.routes(routes)?
            });
        }
        for limit in [&mut self.address_limit, &mut self.rate_limit] {
            if let Some(l) = limit.take() {
                *limit = Some(if l.has_route_groups() {
                    l
                } else {
                    l.routes(routes)?
                });
            }
        }
        Ok(())
    }
}

/// The composed stack: audit → address rate limit → failure limit → risk edge →
/// identity → risk → rate limit → scope → your service. Cheap to clone.
///
/// Your service's future is boxed once per request (so it must be `Send +
/// 'static`, as axum and tonic require anyway): the seven layers then wrap a
/// pointer instead of moving the application's whole future as each wraps it.
#[derive(Clone)]
pub struct NhiGuardLayer {
    layers: Arc<Layers>,
    span: Arc<SpanSettings>,
}

impl fmt::Debug for NhiGuardLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NhiGuardLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for NhiGuardLayer {
    type Service = NhiGuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NhiGuardService {
            inner: self.layers.layer(Boxed(inner)),
            span: self.span.clone(),
        }
    }
}

// The composed service and its future, spelled out level by level (the compiler
// checks they are what the layers build). Written as a chain of concrete types:
// rustdoc derives `NhiGuardService`'s auto-trait impls from them, and it took
// minutes and tens of gigabytes through `Layer` projections or a type that doubles
// at each level.
type L1<S> = Scope<Boxed<S>>;
type L2<S> = RateLimitService<L1<S>>;
type L3<S> = Risk<L2<S>>;
type L4<S> = IdentityService<L3<S>>;
type L5<S> = RiskEdge<L4<S>>;
type L6<S> = AuthFailureLimit<L5<S>>;
type L7<S> = RateLimitService<L6<S>>;
type Inner<S> = Either<Audit<L7<S>>, L7<S>>;

type B1<B> = GuardBody<B>;
type B2<B> = GuardBody<B1<B>>;
type B3<B> = GuardBody<B2<B>>;
type B4<B> = GuardBody<B3<B>>;
type B5<B> = GuardBody<B4<B>>;
type B6<B> = GuardBody<B5<B>>;

/// The response body of [`NhiGuardService`]: your service's body, or a refusal's
/// problem body, inside each control's [`GuardBody`].
pub type NhiGuardBody<B> = GuardBody<B6<B>>;

type F0<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;
type F1<B, E> = CoreFuture<F0<B, E>, B>;
type F2<S, Q, B, E> = RateLimitFuture<L1<S>, Q, F1<B, E>, B1<B>>;
type F3<S, Q, B, E> = RiskFuture<F2<S, Q, B, E>, B2<B>, E>;
type F4<S, Q, B, E> = IdentityFuture<F3<S, Q, B, E>, B3<B>, E>;
type F5<S, Q, B, E> = RiskFuture<F4<S, Q, B, E>, B4<B>, E>;
type F6<S, Q, B, E> = FailureFuture<F5<S, Q, B, E>, B5<B>>;
type F7<S, Q, B, E> = RateLimitFuture<L6<S>, Q, F6<S, Q, B, E>, B6<B>>;
type F8<S, Q, B, E> = EitherResponseFuture<AuditFuture<F7<S, Q, B, E>, NhiGuardBody<B>, E>, F7<S, Q, B, E>>;

/// The service of [`NhiGuardLayer`]: the controls around your service `S`.
///
/// Refusals are answered without calling `S`; a request that passes reaches it with
/// the [`SecurityContext`](nhi_guard_core::SecurityContext) and the verified
/// [`Principal`](nhi_guard_core::Principal) in its extensions. Cheap to clone when
/// `S` is.
///
/// # The request span
///
/// Each request runs inside one `INFO` span named `nhi_guard.request` (target
/// `nhi_guard::request`), whose fields use OpenTelemetry's semantic-convention
/// names where one exists:
///
/// | field | value |
/// | --- | --- |
/// | `http.request.method` | the method |
/// | `url.path` | the path, never the query (which may carry a credential) |
/// | `http.route` | the template of the matched route (`/orders/{id}`), when a route table matched |
/// | `client.address` | the resolved client address (trusted proxies honoured) |
/// | `enduser.id` | the verified client's id (never a credential or a fingerprint) |
/// | `nhi.request_id` | the request id of the audit record |
/// | `nhi.decision` | `allow` or `deny` |
/// | `nhi.control`, `nhi.reason` | the refusing control and its stable reason code |
/// | `nhi.risk.score` | the risk score (0–100), when the risk layer assessed the request |
/// | `http.response.status_code` | the response status |
/// | `otel.name`, `otel.kind` | `{method} {route}` (`{method}` when the router matched no template before the guard ran) and `server`, for `tracing-opentelemetry` |
///
/// Every control emits its own `DEBUG` event (target `nhi_guard::decision`,
/// fields `nhi.control`, `nhi.decision`, `nhi.reason`) inside it. When no
/// subscriber enables the span, the service creates nothing, formats nothing and
/// allocates nothing for it. A control used alone, outside this service, opens no
/// span: its events land in the application's own request span (tower-http's
/// `TraceLayer`, say).
pub struct NhiGuardService<S> {
    inner: Inner<S>,
    span: Arc<SpanSettings>,
}

impl<S: Clone> Clone for NhiGuardService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            span: self.span.clone(),
        }
    }
}

impl<S> fmt::Debug for NhiGuardService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NhiGuardService").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for NhiGuardService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<NhiGuardBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some((span, ctx)) = crate::span::open(&self.span, &mut req) else {
            return ResponseFuture {
                inner: self.inner.call(req),
                traced: None,
            };
        };
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner,
            traced: Some(Box::new(Traced { span, ctx })),
        }
    }
}

pin_project! {
    /// The response future of [`NhiGuardService`].
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        inner: F8<S, ReqBody, ResBody, S::Error>,
        // Boxed: absent (a null pointer) when tracing is off.
        traced: Option<Box<Traced>>,
    }
}

/// The request span of a traced request, and what it records at the end.
struct Traced {
    span: tracing::Span,
    ctx: nhi_guard_core::SecurityContext,
}

impl<S, ReqBody, ResBody> fmt::Debug for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Output = Result<Response<NhiGuardBody<ResBody>>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(traced) = this.traced.as_deref() else {
            return this.inner.poll(cx);
        };
        let out = {
            let _entered = traced.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        let status = out.as_ref().ok().map(Response::status);
        crate::span::close(&traced.span, &traced.ctx, status);
        *this.traced = None;
        Poll::Ready(out)
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
