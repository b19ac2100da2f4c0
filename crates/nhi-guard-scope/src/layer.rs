//! [`ScopeLayer`]: configuration of the scope control.

use std::fmt;
use std::sync::Arc;

use crate::usage::SharedUsageStore;
use nhi_guard_core::clock::SharedClock;
use nhi_guard_core::denial::{DefaultRenderer, SharedRenderer};
use nhi_guard_core::metrics::ControlMetrics;
use nhi_guard_core::settings::{Explicit, LayerSettings};
use nhi_guard_core::{ClientAddrResolver, Control, RenderDenial, SystemClock};
use tower_layer::Layer;

use crate::policy::{Fallback, Policy, PolicyError, Require, Rule};
use crate::service::Scope;
use crate::target::PathCheck;

#[derive(Clone)]
pub(crate) enum Matcher {
    /// A route table.
    Policy(Arc<Policy>),
    /// One requirement for every request reaching the layer (per-route use).
    Fixed(Arc<Rule>),
}

impl Matcher {
    /// The request's rule: matched once per request against the policy's table.
    #[inline]
    pub(crate) fn find(
        &self,
        ctx: &nhi_guard_core::SecurityContext,
        method: &http::Method,
        path: &str,
        extensions: &http::Extensions,
    ) -> (Option<&Rule>, Fallback) {
        match self {
            Self::Policy(p) => (p.resolve(ctx, method, path, extensions), p.fallback()),
            Self::Fixed(r) => (Some(r), Fallback::Deny),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) matcher: Matcher,
    pub(crate) path_check: PathCheck,
    pub(crate) shadow: bool,
    pub(crate) renderer: SharedRenderer,
    pub(crate) store: Option<SharedUsageStore>,
    pub(crate) clock: SharedClock,
    pub(crate) resolver: ClientAddrResolver,
    pub(crate) explicit: Explicit,
    pub(crate) metrics: ControlMetrics,
}

/// Checks every request's principal against the scopes its route requires.
///
/// Built from a [`Policy`] (a route table, for the whole service) with
/// [`ScopeLayer::new`], or from one [`Require`] for a single route or nested
/// router with [`ScopeLayer::require`] / [`ScopeLayer::for_route`] (axum's
/// `route_layer`).
///
/// The principal is read from the request's `Principal` extension, else from the
/// [`SecurityContext`](nhi_guard_core::SecurityContext). Without one, a route that is
/// not public gets 401; a principal lacking scopes gets 403 `insufficient_scope`
/// (gRPC: `PERMISSION_DENIED`); a route outside the policy gets the policy's
/// [`Fallback`]. The context records the route template, the [`ScopeOutcome`]
/// (rule, required, granted, missing) and the decision.
///
/// Before the policy is consulted, a path that a server could read differently
/// from the policy (a dot segment, `//`, a backslash, an encoded `/`, `\` or
/// unreserved character; see [`target`](crate::target)) is refused with 400
/// `request_target_ambiguous` (gRPC `INVALID_ARGUMENT`), recorded as a scope
/// denial. [`ScopeLayer::path_check`] relaxes or turns off that check.
///
/// Policies match `req.uri().path()` as the layer sees it: put a policy layer
/// around the whole axum app (axum strips the prefix of nested routers from the
/// URI), or write the patterns of a layer inside `Router::nest` relative to it.
///
/// [`ScopeOutcome`]: nhi_guard_core::context::ScopeOutcome
#[derive(Clone)]
#[must_use]
pub struct ScopeLayer {
    pub(crate) config: Arc<Config>,
}

impl fmt::Debug for ScopeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ScopeLayer");
        match &self.config.matcher {
            Matcher::Policy(p) => d.field("rules", &p.len()).field("fallback", &p.fallback()),
            Matcher::Fixed(r) => d.field("rule", &r.label()),
        };
        d.field("path_check", &self.config.path_check)
            .field("shadow", &self.config.shadow)
            .field("usage_store", &self.config.store)
            .field("clock", &self.config.clock)
            .finish_non_exhaustive()
    }
}

impl ScopeLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: Policy) -> Self {
        Self::with_matcher(Matcher::Policy(Arc::new(policy)))
    }

    /// A layer enforcing one requirement on every request it sees: put it on one
    /// route or a nested router (`route_layer`), or on a tonic service.
    ///
    /// # Errors
    /// A [`PolicyError`] when the requirement's scopes are invalid or empty.
    pub fn require(requirement: Require) -> Result<Self, PolicyError> {
        let rule = requirement.compile(Arc::from(format!("route {requirement}")), None)?;
        Ok(Self::with_matcher(Matcher::Fixed(Arc::new(rule))))
    }

    /// A per-route layer with this layer's settings (shadow mode, renderer, usage
    /// store, clock, address resolver) and one requirement instead of the policy.
    ///
    /// # Errors
    /// As [`ScopeLayer::require`].
    pub fn for_route(&self, requirement: Require) -> Result<Self, PolicyError> {
        let rule = requirement.compile(Arc::from(format!("route {requirement}")), None)?;
        let mut config = (*self.config).clone();
        config.matcher = Matcher::Fixed(Arc::new(rule));
        Ok(Self {
            config: Arc::new(config),
        })
    }

    fn with_matcher(matcher: Matcher) -> Self {
        Self {
            config: Arc::new(Config {
                matcher,
                path_check: PathCheck::default(),
                shadow: false,
                renderer: DefaultRenderer::new().shared(),
                store: None,
                clock: Arc::new(SystemClock),
                resolver: ClientAddrResolver::new(),
                explicit: Explicit::default(),
                metrics: ControlMetrics::new(Control::Scope),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// How request paths that a server could read differently from the policy are
    /// treated (default [`PathCheck::Strict`]: refused with 400
    /// `request_target_ambiguous`). [`PathCheck::AllowEncodedSlash`] is for APIs
    /// whose segments carry `%2F`; [`PathCheck::Off`] only for services that read
    /// the raw path exactly as the policy does.
    pub fn path_check(mut self, check: PathCheck) -> Self {
        self.config_mut().path_check = check;
        self
    }

    /// Shadow mode: a request that would be refused is let through; the denial is
    /// recorded in the context (`shadow_denials`) and logged instead.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.config_mut().shadow = shadow;
        self
    }

    /// The `realm` of `WWW-Authenticate` challenges (default `api`), with the
    /// default rendering.
    pub fn realm(mut self, realm: impl Into<Arc<str>>) -> Self {
        let config = self.config_mut();
        config.renderer = DefaultRenderer::new().realm(realm).shared();
        config.explicit.renderer = true;
        self
    }

    /// Replaces the rendering of denials.
    pub fn renderer(mut self, renderer: impl RenderDenial) -> Self {
        let config = self.config_mut();
        config.renderer = Arc::new(renderer);
        config.explicit.renderer = true;
        self
    }

    /// Records scope use and refused scopes here, for the least-privilege report.
    pub fn usage_store(mut self, store: SharedUsageStore) -> Self {
        self.config_mut().store = Some(store);
        self
    }

    /// The clock of contexts this layer creates (default: the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        let config = self.config_mut();
        config.clock = clock;
        config.explicit.clock = true;
        self
    }

    /// How contexts this layer creates resolve the client address.
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        let config = self.config_mut();
        config.resolver = resolver;
        config.explicit.resolver = true;
        self
    }

    /// Takes the stack's clock, resolver and renderer for those this layer was not
    /// given (see [`nhi_guard_core::settings`]).
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

    /// The policy, when this layer has one (not for per-route layers).
    pub fn policy(&self) -> Option<&Policy> {
        match &self.config.matcher {
            Matcher::Policy(p) => Some(p),
            Matcher::Fixed(_) => None,
        }
    }
}

impl<S> Layer<S> for ScopeLayer {
    type Service = Scope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Scope::new(inner, self.config.clone())
    }
}
