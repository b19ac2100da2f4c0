//! [`Scope`]: the service that enforces a [`ScopeLayer`](crate::ScopeLayer).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use nhi_guard_core::context::{Decision, ScopeOutcome};
use nhi_guard_core::denial::{GrpcCode, respond};
use nhi_guard_core::future::ResponseFuture;
use nhi_guard_core::{Control, Denial, GuardBody, Principal, Protocol, ScopeSet, SecurityContext};
use tower_service::Service;

use crate::layer::Config;
use crate::policy::{Access, Fallback, Rule};
use crate::target::Ambiguity;

/// The reason code of a request that no rule covers under [`Fallback::Deny`].
pub const ROUTE_NOT_IN_POLICY: &str = "route_not_in_policy";

/// The reason code of a request whose path a server could read differently from
/// the policy (see [`PathCheck`](crate::PathCheck)): 400, gRPC `INVALID_ARGUMENT`.
pub const REQUEST_TARGET_AMBIGUOUS: &str = "request_target_ambiguous";

/// The refusal of an ambiguous path: 400 without a `WWW-Authenticate` challenge
/// (the credential is not at fault), gRPC `INVALID_ARGUMENT`; the detail names
/// the form refused.
fn ambiguous_target(ambiguity: Ambiguity) -> Denial {
    Denial::custom(
        Control::Scope,
        StatusCode::BAD_REQUEST,
        REQUEST_TARGET_AMBIGUOUS,
        "Ambiguous request target",
        ambiguity.detail(),
        GrpcCode::InvalidArgument,
    )
}

/// Enforces the scope policy in front of `S`. Created by
/// [`ScopeLayer`](crate::ScopeLayer).
#[derive(Clone)]
pub struct Scope<S> {
    inner: S,
    // `None`: passes requests through (see `passthrough`).
    config: Option<Arc<Config>>,
}

impl<S: fmt::Debug> fmt::Debug for Scope<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("inner", &self.inner)
            .field("shadow", &self.config.as_ref().map(|c| c.shadow))
            .finish_non_exhaustive()
    }
}

impl<S> Scope<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self {
            inner,
            config: Some(config),
        }
    }

    /// A service that hands every request to `inner` untouched, its response body
    /// wrapped as the control's own: what the `nhi-guard` facade puts in this
    /// control's place when it is off, so the composed service has one type
    /// whichever controls are on.
    #[doc(hidden)]
    pub fn passthrough(inner: S) -> Self {
        Self { inner, config: None }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// Why a request is (or, in shadow mode, would be) refused. Small on purpose: the
/// full [`Denial`] is only built when a request is refused.
enum Refusal {
    NoPrincipal,
    NotInPolicy,
    Missing(ScopeSet),
}

impl Refusal {
    fn missing(&self) -> Option<&ScopeSet> {
        match self {
            Self::Missing(m) => Some(m),
            _ => None,
        }
    }

    fn into_denial(self, rule: Option<&Rule>) -> Denial {
        match self {
            Self::NoPrincipal => Denial::missing_credential(Control::Scope),
            Self::NotInPolicy => Denial::forbidden(
                Control::Scope,
                ROUTE_NOT_IN_POLICY,
                "No access policy covers this route",
            ),
            Self::Missing(missing) => Denial::insufficient_scope(
                Control::Scope,
                rule.map(|r| r.access().required().clone()).unwrap_or_default(),
                missing,
            ),
        }
    }
}

/// What the policy says about one request, given the rule that matched (none when
/// the fallback applies).
fn evaluate(rule: Option<&Rule>, fallback: Fallback, principal: Option<&Principal>) -> Result<(), Refusal> {
    let Some(rule) = rule else {
        return match (fallback, principal) {
            (Fallback::Allow, _) | (Fallback::Authenticated, Some(_)) => Ok(()),
            (Fallback::Deny, Some(_)) => Err(Refusal::NotInPolicy),
            (_, None) => Err(Refusal::NoPrincipal),
        };
    };
    match (rule.access(), principal) {
        (Access::Public, _) => Ok(()),
        (_, None) => Err(Refusal::NoPrincipal),
        (access, Some(p)) => access.check(p.scopes()).map_err(Refusal::Missing),
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Scope<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(config) = self.config.as_deref() else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        // Borrowed from the request when an outer layer created it: the check
        // finishes before the request moves on.
        let rejection = if let Some(ctx) = SecurityContext::from_extensions(req.extensions()) {
            let started = config.metrics.start();
            let rejection = check(config, &req, ctx);
            config.metrics.decided(started);
            rejection
        } else {
            let ctx = SecurityContext::get_or_insert(&mut req, &config.resolver, &*config.clock);
            let started = config.metrics.start();
            let rejection = check(config, &req, &ctx);
            config.metrics.decided(started);
            rejection
        };
        match rejection {
            None => ResponseFuture::inner(self.inner.call(req)),
            Some(response) => ResponseFuture::rejected(response),
        }
    }
}

/// Decides on one request and records the outcome; `Some` is the rejection.
fn check<ReqBody, ResBody>(
    config: &Config,
    req: &Request<ReqBody>,
    ctx: &SecurityContext,
) -> Option<Response<GuardBody<ResBody>>> {
    let from_ctx;
    let principal = match req.extensions().get::<Principal>() {
        Some(p) => Some(p),
        None => {
            from_ctx = ctx.principal();
            from_ctx.as_ref()
        }
    };

    // Judged before the policy: a path the policy cannot judge unambiguously.
    let path = req.uri().path();
    if let Err(ambiguity) = config.path_check.check(path) {
        let client = principal.map(|p| p.client_id().as_str()).unwrap_or("");
        let denial = ambiguous_target(ambiguity);
        if config.shadow {
            ctx.record_shadow_denial(&denial);
            config.metrics.shadow_deny(&denial);
            tracing::warn!(
                target: "nhi_guard::scope",
                request_id = %ctx.request_id(),
                client_id = client,
                reason = denial.reason(),
                ambiguity = ambiguity.as_str(),
                shadow = true,
                "scope policy would refuse an ambiguous request path (shadow mode)"
            );
        } else {
            // The path itself is not logged: the ambiguity names what was refused.
            tracing::info!(
                target: "nhi_guard::scope",
                request_id = %ctx.request_id(),
                client_id = client,
                reason = denial.reason(),
                ambiguity = ambiguity.as_str(),
                decision = "deny",
                "scope policy refused an ambiguous request path"
            );
            let denial = denial.with_request_id(ctx.request_id());
            ctx.deny(&denial);
            config.metrics.deny(&denial);
            return Some(respond(&*config.renderer, denial, Protocol::of(req.headers())));
        }
    }

    let (rule, fallback) = config.matcher.find(ctx, req.method(), path, req.extensions());

    let verdict = evaluate(rule, fallback, principal);
    let missing = verdict.as_ref().err().and_then(Refusal::missing);
    let passes = verdict.is_ok() || config.shadow;

    // One lock: scope outcome and (when passing) the decision. The route template
    // is in the context already: the policy's table recorded it when matching.
    ctx.update(|s| {
        if let Some(rule) = rule {
            let granted = principal.map_or_else(ScopeSet::empty, |p| p.scopes().clone());
            s.scopes = Some(ScopeOutcome {
                rule: Some(rule.label_arc().clone()),
                required: rule.access().required().clone(),
                granted,
                missing: missing.cloned().unwrap_or_default(),
            });
        }
        if passes && s.decision == Decision::Pending {
            s.decision = Decision::Allowed;
        }
    });

    // Least-privilege bookkeeping, stamped with the request's arrival time.
    if let (Some(store), Some(p), Some(rule)) = (&config.store, principal, rule) {
        let at = ctx.received_at();
        if passes {
            let all_held = verdict.is_ok()
                && matches!(rule.access(), Access::Scopes { any_of, .. } if any_of.is_empty());
            for scope in rule.access().required() {
                // An allowed all_of rule needs no membership test: every scope is held.
                if all_held || p.scopes().contains(scope) {
                    store.record_use(p.client_id(), scope, at);
                }
            }
        }
        if let Some(missing) = missing {
            for scope in missing {
                store.record_denied(p.client_id(), scope, at);
            }
        }
        if let Some(issued) = p.credential_issued() {
            store.record_token(p.client_id(), issued);
        }
    }

    let client = principal.map(|p| p.client_id().as_str()).unwrap_or("");
    let rule_label = rule.map_or("", |r| r.label());
    match verdict {
        Ok(()) => {
            tracing::debug!(
                target: "nhi_guard::scope",
                request_id = %ctx.request_id(),
                client_id = client,
                rule = rule_label,
                decision = "allow",
            );
            config.metrics.allow();
            None
        }
        Err(refusal) => {
            let denial = refusal.into_denial(rule);
            let missing = denial
                .missing_scopes()
                .map(ToString::to_string)
                .unwrap_or_default();
            if config.shadow {
                ctx.record_shadow_denial(&denial);
                config.metrics.shadow_deny(&denial);
                tracing::warn!(
                    target: "nhi_guard::scope",
                    request_id = %ctx.request_id(),
                    client_id = client,
                    rule = rule_label,
                    reason = denial.reason(),
                    missing = %missing,
                    shadow = true,
                    "scope policy would deny this request (shadow mode)"
                );
                return None;
            }
            tracing::info!(
                target: "nhi_guard::scope",
                request_id = %ctx.request_id(),
                client_id = client,
                rule = rule_label,
                reason = denial.reason(),
                missing = %missing,
                decision = "deny",
                "scope policy denied the request"
            );
            let denial = denial.with_request_id(ctx.request_id());
            ctx.deny(&denial);
            config.metrics.deny(&denial);
            let protocol = Protocol::of(req.headers());
            Some(respond(&*config.renderer, denial, protocol))
        }
    }
}
