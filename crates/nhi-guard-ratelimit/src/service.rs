//! `RateLimitService<S>`: the service and its decision.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::store::{CheckMode, Quota, RateLimitCheck, RateLimitDecision, ceil_secs};
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use nhi_guard_core::context::{Control, Decision};
use nhi_guard_core::denial::{GrpcCode, Protocol, RATELIMIT, RATELIMIT_POLICY, respond};
use nhi_guard_core::presented::presented_credential;
use nhi_guard_core::{ClientId, Denial, GuardBody, Principal, SecurityContext};
use tower_service::Service;

use crate::future::{Deferred, Pending, ResponseFuture};
use crate::layer::{Backend, Config};
use crate::limit::{KeyKind, Limit, QuotaSource, RequestCost};
use crate::memory::{LocalCheck, MAX_LIMITS};

/// The service of [`RateLimitLayer`](crate::RateLimitLayer).
pub struct RateLimitService<S> {
    inner: S,
    // `None`: passes requests through (see `passthrough`).
    config: Option<Arc<Config>>,
}

impl<S: Clone> Clone for RateLimitService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> RateLimitService<S> {
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

/// The verified client, as far as the limits need it.
pub(crate) struct Who {
    id: ClientId,
    tier_quota: Quota,
}

fn who_of(cfg: &Config, p: &Principal) -> Who {
    let tier_quota = match &cfg.registry {
        Some(r) => r.tier(p.tier_name()).map_or(cfg.default_quota, Quota::from_tier),
        None => Quota::from_tier(p.tier()),
    };
    Who {
        id: p.client_id().clone(),
        tier_quota,
    }
}

pub(crate) fn quota_for(cfg: &Config, limit: &Limit, who: Option<&Who>, group: Option<&str>) -> Quota {
    if let Some(g) = group
        && let Some((_, q)) = limit.route_quotas.iter().find(|(n, _)| &**n == g)
    {
        return *q;
    }
    match limit.quota {
        QuotaSource::Fixed(q) => q,
        QuotaSource::Tier => who.map_or(cfg.default_quota, |w| w.tier_quota),
    }
}

/// Which limit (by index in the layer) each check belongs to, and its quota.
pub(crate) type Meta = [(usize, Quota); MAX_LIMITS];

pub(crate) enum Verdict<B> {
    Pass(Option<Fields>),
    Reject(Response<GuardBody<B>>),
}

/// Records the decisions in the context and turns them into a pass or a denial.
pub(crate) fn verdict<B>(
    cfg: &Config,
    ctx: &SecurityContext,
    meta: &[(usize, Quota)],
    decisions: &[RateLimitDecision],
    headers: &HeaderMap,
) -> Verdict<B> {
    let outcome = |i: usize| decisions[i].outcome(cfg.limits[meta[i].0].name.clone(), &meta[i].1);
    let limited = decisions.iter().any(|d| !d.allowed);
    // The deciding limit: the refusing one with the longest wait, or the tightest.
    let decider = if limited {
        (0..decisions.len())
            .filter(|&i| !decisions[i].allowed)
            .max_by_key(|&i| decisions[i].retry_after)
    } else {
        (0..decisions.len()).min_by_key(|&i| (decisions[i].remaining, std::cmp::Reverse(decisions[i].reset)))
    };
    let Some(decider) = decider else {
        ctx.allow();
        cfg.metrics.allow();
        return Verdict::Pass(None);
    };
    let decided = outcome(decider);
    let fields = || {
        cfg.headers_on_allowed
            .then(|| Fields::render(cfg, meta, decisions))
            .flatten()
    };
    if !limited {
        // One lock: record the outcome and pass.
        ctx.update(|s| {
            s.rate_limit = Some(decided);
            if s.decision == Decision::Pending {
                s.decision = Decision::Allowed;
            }
        });
        cfg.metrics.allow();
        return Verdict::Pass(fields());
    }
    let retry = decisions[decider].retry_after;
    let mut denial = Denial::rate_limited(
        Control::RateLimit,
        "rate_limited",
        format!(
            "Rate limit \"{}\" exceeded; retry in {} s",
            decided.policy,
            crate::store::ceil_secs(retry).max(1)
        ),
        retry.max(Duration::from_nanos(1)),
    )
    .with_request_id(ctx.request_id());
    for i in 0..decisions.len() {
        denial = denial.rate_limit(outcome(i));
    }
    tracing::info!(
        target: "nhi_guard::rate_limit",
        request_id = %ctx.request_id(),
        policy = %decided.policy,
        retry_after_ms = u64::try_from(retry.as_millis()).unwrap_or(u64::MAX),
        shadow = cfg.shadow,
        "rate limit exceeded"
    );
    ctx.update(|s| s.rate_limit = Some(decided));
    if cfg.shadow {
        ctx.record_shadow_denial(&denial);
        ctx.allow();
        cfg.metrics.shadow_deny(&denial);
        return Verdict::Pass(fields());
    }
    ctx.deny(&denial);
    cfg.metrics.deny(&denial);
    Verdict::Reject(respond(&*cfg.renderer, denial, Protocol::of(headers)))
}

/// The answer when a shared store fails closed.
pub(crate) fn unavailable<B>(
    cfg: &Config,
    ctx: &SecurityContext,
    protocol: Protocol,
    err: &dyn fmt::Display,
) -> Verdict<B> {
    tracing::warn!(
        target: "nhi_guard::rate_limit",
        request_id = %ctx.request_id(),
        error = %err,
        "rate-limit store failed closed"
    );
    let denial = Denial::custom(
        Control::RateLimit,
        StatusCode::SERVICE_UNAVAILABLE,
        "rate_limit_unavailable",
        "Service unavailable",
        "Rate limiting is temporarily unavailable",
        GrpcCode::Unavailable,
    )
    .retry_after(Duration::from_secs(1))
    .with_request_id(ctx.request_id());
    if cfg.shadow {
        ctx.record_shadow_denial(&denial);
        cfg.metrics.shadow_deny(&denial);
        return Verdict::Pass(None);
    }
    ctx.deny(&denial);
    cfg.metrics.deny(&denial);
    Verdict::Reject(respond(&*cfg.renderer, denial, protocol))
}

/// The `RateLimit-Policy` and `RateLimit` fields of an allowed response (the same
/// values as core's `insert_rate_limit_headers`). Only names and numbers are kept while
/// the inner service runs; once the response exists each field is written into one
/// exactly sized buffer, which the header value takes over without copying, after
/// what an inner rate-limit layer set.
#[derive(Debug)]
pub(crate) struct Fields {
    first: Member,
    /// Layers with more than one limit only.
    rest: Vec<Member>,
}

/// One limit's list member in each field: `"<name>";q=<quota>;w=<window>` and
/// `"<name>";r=<remaining>;t=<reset>`.
#[derive(Debug)]
struct Member {
    /// The limit's name as an sf-string (quoted).
    name: Arc<str>,
    policy: [u64; 2],
    state: [u64; 2],
}

impl Fields {
    fn render(cfg: &Config, meta: &[(usize, Quota)], decisions: &[RateLimitDecision]) -> Option<Self> {
        let mut members = decisions.iter().zip(meta).map(|(d, (limit, quota))| Member {
            name: cfg.limits[*limit].quoted.clone(),
            policy: [u64::from(quota.burst()), quota.window_secs()],
            state: [d.remaining, ceil_secs(d.reset)],
        });
        let first = members.next()?;
        Some(Self {
            first,
            rest: members.collect(),
        })
    }

    /// Adds the fields to `headers`, after those an inner rate-limit layer set.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        let members = || std::iter::once(&self.first).chain(&self.rest);
        let policy = |m: &Member| (b";q=", b";w=", m.policy);
        let state = |m: &Member| (b";r=", b";t=", m.state);
        write_field(headers, &RATELIMIT_POLICY, members(), policy);
        write_field(headers, &RATELIMIT, members(), state);
    }
}

/// Appends the list members `"<name>"<k1><v1><k2><v2>` of `members` to the field
/// `name` in `headers`, in one exactly sized buffer.
fn write_field<'a>(
    headers: &mut HeaderMap,
    name: &HeaderName,
    members: impl Iterator<Item = &'a Member> + Clone,
    parts: impl Fn(&Member) -> (&'static [u8; 3], &'static [u8; 3], [u64; 2]),
) {
    let len: usize = members
        .clone()
        .map(|m| {
            let (_, _, [a, b]) = parts(m);
            m.name.len() + 6 + digit_count(a) + digit_count(b)
        })
        .sum();
    let entry = headers.entry(name);
    let prev = match &entry {
        Entry::Occupied(slot) => slot.get().as_bytes(),
        Entry::Vacant(_) => b"",
    };
    let separators = members.clone().count() - 1 + usize::from(!prev.is_empty());
    let exact = prev.len() + 2 * separators + len;
    let mut out = Vec::with_capacity(exact);
    out.extend_from_slice(prev);
    for m in members {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        let (k1, k2, [a, b]) = parts(m);
        out.extend_from_slice(m.name.as_bytes());
        out.extend_from_slice(k1);
        push_digits(&mut out, a);
        out.extend_from_slice(k2);
        push_digits(&mut out, b);
    }
    debug_assert_eq!(out.len(), exact);
    if let Ok(value) = HeaderValue::try_from(out) {
        match entry {
            Entry::Occupied(mut slot) => {
                slot.insert(value);
            }
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
        }
    }
}

/// How many decimal digits `n` has.
fn digit_count(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends the decimal digits of `n` (without the formatting machinery).
fn push_digits(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub(crate) fn addr_bytes(ip: IpAddr, buf: &mut [u8; 16]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            buf.copy_from_slice(&v6.octets());
            16
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimitService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
{
    type Response = Response<GuardBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let Some(config) = &self.config else {
            return ResponseFuture::inner(self.inner.call(req), None, None);
        };
        let inner = &mut self.inner;
        // Arrays sized for the layer's limits: a one-limit layer touches one slot.
        match config.limits.len() {
            0 | 1 => call_n::<1, S, ReqB, ResB>(inner, config, req),
            2 => call_n::<2, S, ReqB, ResB>(inner, config, req),
            3 | 4 => call_n::<4, S, ReqB, ResB>(inner, config, req),
            _ => call_n::<MAX_LIMITS, S, ReqB, ResB>(inner, config, req),
        }
    }
}

fn call_n<const N: usize, S, ReqB, ResB>(
    inner: &mut S,
    config: &Arc<Config>,
    mut req: Request<ReqB>,
) -> ResponseFuture<S, ReqB, S::Future, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
{
    let cfg = &**config;
    let ctx = SecurityContext::get_or_insert(&mut req, &cfg.resolver, &*cfg.clock);
    let started = cfg.metrics.start();
    let cost_override = req.extensions().get::<RequestCost>().map(|c| c.0.max(1));
    let who = if cfg.needs_principal {
        ctx.read(|s| s.principal.as_ref().map(|p| who_of(cfg, p)))
            .or_else(|| req.extensions().get::<Principal>().map(|p| who_of(cfg, p)))
    } else {
        None
    };
    let group = cfg.needs_group.then(|| {
        cfg.route_groups
            .group(req.method(), req.uri().path(), req.extensions(), &ctx)
    });
    let mut custom: [Option<String>; N] = std::array::from_fn(|_| None);
    if cfg.needs_parts {
        let (parts, body) = req.into_parts();
        for (i, l) in cfg.limits.iter().enumerate() {
            if let KeyKind::Custom(f) = &l.key
                && let Some(slot) = custom.get_mut(i)
            {
                *slot = f(&parts, &ctx);
            }
        }
        req = Request::from_parts(parts, body);
    }
    let mut addr = [0u8; 16];
    let addr_len = ctx.client_addr().map(|a| addr_bytes(a.key_ip(), &mut addr));
    // Limits that exempt verified clients skip a verified one, and count one
    // that presents a credential only after identity ran, if it did not verify.
    let credentialed =
        cfg.has_exempt && who.is_none() && presented_credential(req.headers(), &cfg.api_key_header).is_some();
    let mut deferred: u8 = 0;

    let placeholder = cfg.default_quota;
    let mut checks = [LocalCheck {
        policy: "",
        key: b"",
        qualifier: b"",
        quota: placeholder,
        cost: 1,
    }; N];
    let mut meta = [(0, placeholder); N];
    let mut n = 0;
    for (i, limit) in cfg.limits.iter().enumerate().take(N) {
        if limit.exempt_verified && (who.is_some() || credentialed) {
            if credentialed && addr_len.is_some() {
                deferred |= 1 << i;
            }
            continue;
        }
        let (key, qualifier): (&[u8], &[u8]) = match &limit.key {
            KeyKind::Address => match addr_len {
                Some(len) => (&addr[..len], b""),
                None => continue,
            },
            KeyKind::Client => match &who {
                Some(w) => (w.id.as_str().as_bytes(), b""),
                None => continue,
            },
            KeyKind::ClientRoute => match &who {
                Some(w) => (
                    w.id.as_str().as_bytes(),
                    group.as_deref().unwrap_or("*").as_bytes(),
                ),
                None => continue,
            },
            KeyKind::Custom(_) => match custom.get(i).and_then(Option::as_ref) {
                Some(k) => (k.as_bytes(), b""),
                None => continue,
            },
        };
        let quota = quota_for(cfg, limit, who.as_ref(), group.as_deref());
        checks[n] = LocalCheck {
            policy: &limit.name,
            key,
            qualifier,
            quota,
            cost: cost_override.unwrap_or(limit.cost),
        };
        meta[n] = (i, quota);
        n += 1;
    }

    let deferred = (deferred != 0).then(|| {
        Box::new(Deferred {
            config: config.clone(),
            ctx: ctx.clone(),
            mask: deferred,
            cost_override,
            group: group.clone(),
        })
    });
    match &cfg.backend {
        Backend::Local(store) => {
            let mut out = [RateLimitDecision::default(); N];
            if n > 0 {
                store.check_at(
                    // One clock reading per request when the stack shares a clock.
                    ctx.unix_nanos_by(&*cfg.clock),
                    &checks[..n],
                    CheckMode::Consume,
                    &mut out[..n],
                );
            }
            let verdict = verdict(cfg, &ctx, &meta[..n], &out[..n], req.headers());
            cfg.metrics.decided(started);
            match verdict {
                Verdict::Pass(outcomes) => ResponseFuture::inner(inner.call(req), outcomes, deferred),
                Verdict::Reject(res) => ResponseFuture::ready(res),
            }
        }
        Backend::Shared(store) => {
            if n == 0 {
                ctx.allow();
                config.metrics.allow();
                config.metrics.decided(started);
                return ResponseFuture::inner(inner.call(req), None, deferred);
            }
            let owned: Arc<[RateLimitCheck]> = checks[..n]
                .iter()
                .zip(&meta[..n])
                .map(|(c, m)| RateLimitCheck {
                    policy: cfg.limits[m.0].name.clone(),
                    key: c.key.into(),
                    qualifier: c.qualifier.into(),
                    quota: c.quota,
                    cost: c.cost,
                })
                .collect();
            let check = store.check(owned, CheckMode::Consume);
            let protocol = Protocol::of(req.headers());
            // Take the service that was driven to readiness; leave a clone.
            let clone = inner.clone();
            let inner = std::mem::replace(inner, clone);
            ResponseFuture::checking(
                check,
                Pending {
                    inner,
                    req,
                    config: config.clone(),
                    ctx,
                    meta: {
                        let mut all: Meta = [(0, placeholder); MAX_LIMITS];
                        all[..n].copy_from_slice(&meta[..n]);
                        all
                    },
                    n,
                    protocol,
                    deferred,
                    started,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{digit_count, push_digits};

    #[test]
    fn decimal_digits_of_every_magnitude() {
        for n in [0, 7, 9, 10, 99, 100, 999_999_999, 1_000_000_000, u64::MAX] {
            let mut out = b"q=".to_vec();
            push_digits(&mut out, n);
            assert_eq!(out, format!("q={n}").into_bytes());
            assert_eq!(digit_count(n), n.to_string().len(), "{n}");
        }
    }
}
