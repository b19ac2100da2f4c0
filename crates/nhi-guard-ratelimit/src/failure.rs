//! `AuthFailureLimitLayer`: a limit that only failed authentications spend.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::store::{CheckMode, Quota, RateLimitDecision, ceil_secs};
use http::{HeaderMap, HeaderName, Request, Response};
use nhi_guard_core::address::ClientAddrResolver;
use nhi_guard_core::clock::{SharedClock, SystemClock};
use nhi_guard_core::context::{Control, Decision};
use nhi_guard_core::denial::{DefaultRenderer, Protocol, RenderDenial, SharedRenderer, respond};
use nhi_guard_core::future::ResponseFuture as GuardFuture;
use nhi_guard_core::presented::{DEFAULT_API_KEY_HEADER, presented_credential};
use nhi_guard_core::settings::{Explicit, LayerSettings};
use nhi_guard_core::{CredentialFingerprint, Denial, GuardBody, SecurityContext};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::memory::{InMemoryRateLimitStore, LocalCheck};
use crate::service::addr_bytes;

/// The policy name of the per-address failure limit.
pub const FAILURES_BY_ADDRESS: &str = "auth-failures-by-address";
/// The policy name of the per-credential failure limit.
pub const FAILURES_BY_CREDENTIAL: &str = "auth-failures-by-credential";

#[derive(Clone)]
struct FailureConfig {
    quota: Quota,
    store: Arc<InMemoryRateLimitStore>,
    clock: SharedClock,
    resolver: ClientAddrResolver,
    renderer: SharedRenderer,
    explicit: Explicit,
    by_address: bool,
    by_credential: bool,
    shadow: bool,
    /// Where API keys are presented (the header identity reads).
    api_key_header: HeaderName,
    /// Counts only refusals: a request this limit lets through is decided by the
    /// layers behind it.
    metrics: nhi_guard_core::metrics::ControlMetrics,
}

impl fmt::Debug for FailureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFailureLimitConfig")
            .field("quota", &self.quota)
            .field("store", &self.store)
            .field("by_address", &self.by_address)
            .field("by_credential", &self.by_credential)
            .field("shadow", &self.shadow)
            .field("api_key_header", &self.api_key_header)
            .finish_non_exhaustive()
    }
}

/// A fail2ban-style limit: only failed authentications count, per client address
/// and per presented credential (by fingerprint, never the credential itself).
/// Once a key has spent its quota of failures, its requests are refused with 429
/// before they reach identity, until the quota recovers; successful requests never
/// spend anything.
///
/// Place it *outside* the identity layer: it reads the outcome identity recorded in
/// the security context (`identity_failure`, or a denial by the identity control)
/// after the inner service returned.
///
/// The credential key is the fingerprint identity recorded; before identity ran it
/// is the SHA-256 fingerprint of the bearer token (`Authorization: Bearer …`) or
/// of the API key in [`AuthFailureLimitLayer::api_key_header`] (`x-api-key` by
/// default), which is what the identity layer fingerprints too.
///
/// ```
/// use nhi_guard_ratelimit::store::Quota;
/// use nhi_guard_ratelimit::AuthFailureLimitLayer;
///
/// // Five failures, then one more every minute.
/// let layer = AuthFailureLimitLayer::new(Quota::per_minute(1).unwrap().with_burst(5).unwrap());
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct AuthFailureLimitLayer {
    config: Arc<FailureConfig>,
}

impl AuthFailureLimitLayer {
    /// Allows `quota` failed authentications per address and per credential.
    pub fn new(quota: Quota) -> Self {
        Self {
            config: Arc::new(FailureConfig {
                quota,
                store: Arc::new(InMemoryRateLimitStore::with_max_keys(100_000)),
                clock: Arc::new(SystemClock),
                resolver: ClientAddrResolver::new(),
                renderer: DefaultRenderer::new().shared(),
                explicit: Explicit::default(),
                by_address: true,
                by_credential: true,
                shadow: false,
                api_key_header: DEFAULT_API_KEY_HEADER,
                metrics: nhi_guard_core::metrics::ControlMetrics::new(Control::RateLimit),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut FailureConfig {
        Arc::make_mut(&mut self.config)
    }

    /// Keeps failure counts in `store`.
    #[must_use]
    pub fn store(mut self, store: Arc<InMemoryRateLimitStore>) -> Self {
        self.config_mut().store = store;
        self
    }

    /// Reads time from `clock`.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        let config = self.config_mut();
        config.clock = clock;
        config.explicit.clock = true;
        self
    }

    /// Resolves client addresses with `resolver`, when this layer creates the context.
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

    /// Whether failures count per client address (default true).
    #[must_use]
    pub fn by_address(mut self, on: bool) -> Self {
        self.config_mut().by_address = on;
        self
    }

    /// Whether failures count per credential fingerprint (default true).
    #[must_use]
    pub fn by_credential(mut self, on: bool) -> Self {
        self.config_mut().by_credential = on;
        self
    }

    /// Shadow mode: record the denial it would make, let the request through.
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.config_mut().shadow = shadow;
        self
    }

    /// The header API keys are presented in: the one the identity layer reads
    /// (default `x-api-key`; the `NhiGuard` builder copies identity's). A failure
    /// counts against the fingerprint of the key in this header.
    #[must_use]
    pub fn api_key_header(mut self, name: HeaderName) -> Self {
        self.config_mut().api_key_header = name;
        self
    }
}

impl<S> Layer<S> for AuthFailureLimitLayer {
    type Service = AuthFailureLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthFailureLimit {
            inner,
            config: Some(self.config.clone()),
        }
    }
}

/// The service of [`AuthFailureLimitLayer`].
#[derive(Debug, Clone)]
pub struct AuthFailureLimit<S> {
    inner: S,
    // `None`: passes requests through (see `passthrough`).
    config: Option<Arc<FailureConfig>>,
}

impl<S> AuthFailureLimit<S> {
    /// A service that hands every request to `inner` untouched, its response body
    /// wrapped as the control's own: what the `nhi-guard` facade puts in this
    /// control's place when it is off, so the composed service has one type
    /// whichever controls are on.
    #[doc(hidden)]
    pub fn passthrough(inner: S) -> Self {
        Self { inner, config: None }
    }
}

/// The fingerprint of the credential a request presents, as the identity layer
/// computes it: the bearer token or the value of the API-key header. The digest is
/// kept in the context, so identity does not hash the token a second time.
fn presented_fingerprint(
    ctx: &SecurityContext,
    headers: &HeaderMap,
    api_key_header: &HeaderName,
) -> Option<CredentialFingerprint> {
    let (v, credential) = presented_credential(headers, api_key_header)?;
    Some(CredentialFingerprint::from_sha256(
        &ctx.credential_sha256(v, credential),
    ))
}

struct Keys {
    addr: Option<([u8; 16], usize)>,
    credential: Option<CredentialFingerprint>,
}

impl FailureConfig {
    /// Runs `f` over the checks for `keys`.
    fn with_checks<R>(&self, keys: &Keys, f: impl FnOnce(&[LocalCheck<'_>], &[&'static str]) -> R) -> R {
        let mut checks = [LocalCheck {
            policy: "",
            key: b"",
            qualifier: b"",
            quota: self.quota,
            cost: 1,
        }; 2];
        let mut names = [""; 2];
        let mut n = 0;
        if self.by_address
            && let Some((buf, len)) = &keys.addr
        {
            checks[n] = LocalCheck {
                policy: FAILURES_BY_ADDRESS,
                key: &buf[..*len],
                qualifier: b"",
                quota: self.quota,
                cost: 1,
            };
            names[n] = FAILURES_BY_ADDRESS;
            n += 1;
        }
        if self.by_credential
            && let Some(fp) = &keys.credential
        {
            checks[n] = LocalCheck {
                policy: FAILURES_BY_CREDENTIAL,
                key: fp.as_bytes(),
                qualifier: b"",
                quota: self.quota,
                cost: 1,
            };
            names[n] = FAILURES_BY_CREDENTIAL;
            n += 1;
        }
        f(&checks[..n], &names[..n])
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AuthFailureLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<GuardBody<ResB>>;
    type Error = S::Error;
    type Future = FailureFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let Some(config) = &self.config else {
            return FailureFuture {
                inner: GuardFuture::inner(self.inner.call(req)),
                after: None,
            };
        };
        let cfg = &**config;
        let ctx = SecurityContext::get_or_insert(&mut req, &cfg.resolver, &*cfg.clock);
        let started = cfg.metrics.start();
        let keys = Keys {
            addr: ctx.client_addr().map(|a| {
                let mut buf = [0u8; 16];
                let len = addr_bytes(a.key_ip(), &mut buf);
                (buf, len)
            }),
            credential: presented_fingerprint(&ctx, req.headers(), &cfg.api_key_header),
        };
        let now = ctx.unix_nanos_by(&*cfg.clock);
        // Would one more failure be admitted? If not, the key is blocked.
        let blocked = cfg.with_checks(&keys, |checks, names| {
            let mut out = [RateLimitDecision::default(); 2];
            let mut worst: Option<(usize, RateLimitDecision)> = None;
            for (i, c) in checks.iter().enumerate() {
                let one = std::slice::from_ref(c);
                if !cfg.store.check_at(now, one, CheckMode::Peek, &mut out[i..=i])
                    && worst.is_none_or(|(_, w)| w.retry_after < out[i].retry_after)
                {
                    worst = Some((i, out[i]));
                }
            }
            worst.map(|(i, d)| (names[i], d))
        });
        cfg.metrics.decided(started);
        if let Some((policy, d)) = blocked {
            let outcome = d.outcome(Arc::from(policy), &cfg.quota);
            let denial = Denial::rate_limited(
                Control::RateLimit,
                "too_many_failed_authentications",
                format!(
                    "Too many failed authentications; retry in {} s",
                    ceil_secs(d.retry_after).max(1)
                ),
                d.retry_after.max(Duration::from_nanos(1)),
            )
            .rate_limit(outcome.clone())
            .with_request_id(ctx.request_id());
            tracing::warn!(
                target: "nhi_guard::rate_limit",
                request_id = %ctx.request_id(),
                policy,
                shadow = cfg.shadow,
                "blocked after repeated authentication failures"
            );
            if !cfg.shadow {
                ctx.update(|s| s.rate_limit = Some(outcome));
                ctx.deny(&denial);
                cfg.metrics.deny(&denial);
                return FailureFuture::rejected(respond(&*cfg.renderer, denial, Protocol::of(req.headers())));
            }
            ctx.record_shadow_denial(&denial);
            cfg.metrics.shadow_deny(&denial);
        }
        FailureFuture::inner(self.inner.call(req), ctx, config.clone(), keys)
    }
}

pin_project! {
    /// Response future of [`AuthFailureLimit`]: counts the request as a failure
    /// once the inner service answered, if identity failed.
    pub struct FailureFuture<F, B> {
        #[pin]
        inner: GuardFuture<F, B>,
        after: Option<After>,
    }
}

struct After {
    ctx: SecurityContext,
    config: Arc<FailureConfig>,
    keys: Keys,
}

impl<F, B> fmt::Debug for FailureFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureFuture").finish_non_exhaustive()
    }
}

impl<F, B> FailureFuture<F, B> {
    fn inner(future: F, ctx: SecurityContext, config: Arc<FailureConfig>, keys: Keys) -> Self {
        Self {
            inner: GuardFuture::inner(future),
            after: Some(After { ctx, config, keys }),
        }
    }

    fn rejected(res: Response<GuardBody<B>>) -> Self {
        Self {
            inner: GuardFuture::rejected(res),
            after: None,
        }
    }
}

impl<F, B, E> Future for FailureFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        if let Some(After {
            ctx,
            config,
            mut keys,
        }) = this.after.take()
        {
            let (failed, fp) = ctx.read(|s| {
                let identity_denied =
                    matches!(s.decision, Decision::Denied(d) if d.control == Control::Identity);
                (
                    s.identity_failure.is_some() || identity_denied,
                    s.credential_fingerprint,
                )
            });
            if failed {
                if fp.is_some() {
                    keys.credential = fp;
                }
                let now = config.clock.unix_nanos();
                config.with_checks(&keys, |checks, _| {
                    let mut out = [RateLimitDecision::default(); 1];
                    // Each key counts on its own: a failure spends on both.
                    for c in checks {
                        config
                            .store
                            .check_at(now, std::slice::from_ref(c), CheckMode::Consume, &mut out);
                    }
                });
            }
        }
        Poll::Ready(res)
    }
}
