//! The per-request security context that every control records into and the audit
//! layer reads after the inner service returned.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::address::{ClientAddr, ClientAddrResolver};
use crate::clock::Clock;
use crate::denial::Denial;
use crate::principal::{CredentialFingerprint, IdentityKind, Principal};
use crate::scope::ScopeSet;

/// A unique id for one request: 64 random bits chosen once per process followed by
/// a 64-bit counter. Formatted like a UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u128);

impl RequestId {
    /// The next id of this process.
    pub fn next() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.write_u32(std::process::id());
            h.finish()
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(u128::from(seed) << 64 | u128::from(n))
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The control that made (or would have made) a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Control {
    /// The identity layer (credentials and inventory governance).
    Identity,
    /// The scope layer (per-route least privilege).
    Scope,
    /// A rate-limit layer.
    RateLimit,
    /// The risk layer.
    Risk,
    /// The audit layer.
    Audit,
    /// A user-defined control.
    Custom(&'static str),
}

impl Control {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Scope => "scope",
            Self::RateLimit => "rate_limit",
            Self::Risk => "risk",
            Self::Audit => "audit",
            Self::Custom(name) => name,
        }
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A short description of a denial: which control, which stable reason, which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DenialSummary {
    /// The control that denied.
    pub control: Control,
    /// Its stable reason code (e.g. `token_expired`, `insufficient_scope`).
    pub reason: &'static str,
    /// The HTTP status of the denial.
    #[serde(serialize_with = "serialize_status")]
    pub status: StatusCode,
}

fn serialize_status<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

/// The final decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// No control has decided yet (or the request never reached one that does).
    #[default]
    Pending,
    /// Every control that ran let the request through.
    Allowed,
    /// A control refused the request.
    Denied(DenialSummary),
}

/// What the scope control found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScopeOutcome {
    /// The policy rule that matched (its pattern), if any.
    pub rule: Option<Arc<str>>,
    /// Scopes the route requires.
    pub required: ScopeSet,
    /// Scopes the principal holds.
    pub granted: ScopeSet,
    /// Required scopes the principal lacks.
    pub missing: ScopeSet,
}

/// What a rate limit found: the limit that decided (or the tightest one that
/// passed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitOutcome {
    /// The policy name (as in the `RateLimit-Policy` field).
    pub policy: Arc<str>,
    /// Whether the request was over the limit.
    pub limited: bool,
    /// The quota (requests per window).
    pub quota: u64,
    /// The window of the quota, in seconds.
    pub window_secs: u64,
    /// Requests left in the window after this one.
    pub remaining: u64,
    /// Seconds until the quota is fully available again (or, when limited, until the
    /// next request may pass).
    pub reset_secs: u64,
}

/// One risk signal that contributed points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignalHit {
    /// The signal's stable name.
    pub signal: &'static str,
    /// Points added to the score.
    pub points: u32,
    /// A short reason, for humans.
    pub reason: Cow<'static, str>,
}

/// What the risk control concluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RiskAssessment {
    /// Score from 0 to 100.
    pub score: u32,
    /// The action taken (`allow`, `throttle`, `step_up`, `block`).
    pub action: Cow<'static, str>,
    /// The signals that contributed.
    pub signals: Vec<SignalHit>,
}

/// The mutable part of a [`SecurityContext`]. Controls write it through
/// [`SecurityContext::update`]; anyone reads it through [`SecurityContext::read`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ContextState {
    /// The verified principal.
    pub principal: Option<Principal>,
    /// The kind of credential presented (also when verification failed).
    pub credential_kind: Option<IdentityKind>,
    /// Fingerprint of the presented credential (also when verification failed).
    pub credential_fingerprint: Option<CredentialFingerprint>,
    /// Why identity failed, when it did (stable reason code).
    pub identity_failure: Option<&'static str>,
    /// When the presented credential was issued (a token's `iat`), when the identity
    /// control knows it; the risk layer's step-up (RFC 9470 `max_age`) reads it.
    pub credential_issued_at: Option<SystemTime>,
    /// The client's registration expires within the warning window.
    pub client_expiring_soon: bool,
    /// The presented credential is past the rotation date the inventory gave it.
    pub credential_rotation_due: bool,
    /// The route template (`/inventory/{sku}`). A [`snapshot`](SecurityContext::snapshot)
    /// holds the template the first route table matched; in the live state it is
    /// only what was set by hand (a router or proxy that knows it), which
    /// [`SecurityContext::route`] reads when no table matched the request.
    pub route: Option<Arc<str>>,
    /// The scope outcome.
    pub scopes: Option<ScopeOutcome>,
    /// The rate-limit outcome.
    pub rate_limit: Option<RateLimitOutcome>,
    /// The risk assessment.
    pub risk: Option<RiskAssessment>,
    /// The decision.
    pub decision: Decision,
    /// Denials that controls in shadow mode would have made.
    pub shadow_denials: Vec<DenialSummary>,
}

#[derive(Debug)]
struct Inner {
    request_id: RequestId,
    received_at: SystemTime,
    /// `received_at` in nanoseconds since the Unix epoch.
    received_nanos: u64,
    /// Which clock stamped `received_at` (see [`clock_id`]).
    clock: usize,
    client_addr: Option<ClientAddr>,
    state: Mutex<ContextState>,
    credential_digest: OnceLock<CredentialDigest>,
    /// The request's route, set by the first route table that matched it.
    route: OnceLock<crate::route::RouteMatch>,
}

/// Identifies a clock object by its address: the guard's layers share one
/// `Arc<dyn Clock>`. A zero-sized clock not behind an `Arc` sits at a dangling
/// address that clocks of other types share, so it gets no id (0).
fn clock_id(clock: &dyn Clock) -> usize {
    let addr = std::ptr::from_ref(clock).cast::<()>() as usize;
    if std::mem::size_of_val(clock) == 0 && addr == std::mem::align_of_val(clock) {
        0
    } else {
        addr
    }
}

/// The SHA-256 of the credential a request presents, remembered with the header
/// value it was read from (a reference-counted handle, not a copy) so that the
/// second control to ask compares bytes instead of hashing the token again.
struct CredentialDigest {
    header: HeaderValue,
    range: std::ops::Range<usize>,
    sha256: [u8; 32],
}

impl fmt::Debug for CredentialDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credential.
        f.write_str("CredentialDigest(..)")
    }
}

/// The per-request security context: a cheap-to-clone handle shared by every
/// control of one request.
///
/// Created once per request by the outermost guard layer (any layer that finds none
/// creates it, see [`SecurityContext::get_or_insert`]) and carried in the request's
/// extensions. Controls record into it; an outer layer keeps its clone and reads the
/// final state after the inner service returned, also when an inner layer rejected
/// the request.
///
/// ```
/// use http::Request;
/// use nhi_guard_core::{SecurityContext, address::ClientAddrResolver, clock::SystemClock};
///
/// let mut req = Request::new(());
/// let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &SystemClock);
/// // A second layer finds the same context.
/// let again = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &SystemClock);
/// assert_eq!(ctx.request_id(), again.request_id());
/// again.allow();
/// assert!(ctx.read(|s| s.decision == nhi_guard_core::context::Decision::Allowed));
/// ```
#[derive(Clone)]
pub struct SecurityContext {
    inner: Arc<Inner>,
}

impl fmt::Debug for SecurityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityContext")
            .field("request_id", &self.inner.request_id)
            .field("client_addr", &self.inner.client_addr)
            .field("state", &*self.lock())
            .finish()
    }
}

impl SecurityContext {
    /// A fresh context for a request received now from `client_addr`.
    pub fn new(client_addr: Option<ClientAddr>, clock: &dyn Clock) -> Self {
        let received_at = clock.now();
        Self {
            inner: Arc::new(Inner {
                request_id: RequestId::next(),
                received_at,
                received_nanos: received_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, crate::clock::duration_nanos),
                clock: clock_id(clock),
                client_addr,
                state: Mutex::new(ContextState::default()),
                credential_digest: OnceLock::new(),
                route: OnceLock::new(),
            }),
        }
    }

    /// The request's context, created (resolving the client address with
    /// `resolver`) and inserted into its extensions if it has none yet.
    pub fn get_or_insert<B>(
        req: &mut http::Request<B>,
        resolver: &ClientAddrResolver,
        clock: &dyn Clock,
    ) -> Self {
        if let Some(ctx) = req.extensions().get::<SecurityContext>() {
            return ctx.clone();
        }
        let addr = resolver.resolve(req.headers(), req.extensions());
        let ctx = Self::new(addr, clock);
        req.extensions_mut().insert(ctx.clone());
        ctx
    }

    /// The template of the request's route (`/inventory/{sku}`): the route the
    /// first [`Routes`](crate::route::Routes) table to match the request found, else
    /// [`ContextState::route`].
    pub fn route(&self) -> Option<Arc<str>> {
        match self.inner.route.get() {
            Some(crate::route::RouteMatch {
                template: Some(t), ..
            }) => Some(t.clone()),
            _ => self.lock().route.clone(),
        }
    }

    /// The template the first route table matched, borrowed (no template set by
    /// hand: see [`SecurityContext::route`]).
    pub fn matched_template(&self) -> Option<&str> {
        self.inner.route.get().and_then(|m| m.template.as_deref())
    }

    pub(crate) fn route_match(&self) -> Option<&crate::route::RouteMatch> {
        self.inner.route.get()
    }

    /// Records the first table's match; later tables keep their answer to themselves.
    pub(crate) fn record_route(&self, m: crate::route::RouteMatch) {
        let _ = self.inner.route.set(m);
    }

    /// The context in these extensions, if a guard layer created one.
    pub fn from_extensions(ext: &http::Extensions) -> Option<&Self> {
        ext.get::<Self>()
    }

    /// The request id.
    pub fn request_id(&self) -> RequestId {
        self.inner.request_id
    }

    /// When the request arrived (by the guard's clock).
    pub fn received_at(&self) -> SystemTime {
        self.inner.received_at
    }

    /// The time for a control that reads `clock`: the arrival time when the context
    /// was stamped by that same clock (the whole stack shares one, so a request
    /// reads the clock once), otherwise `clock.now()`.
    pub fn now_by(&self, clock: &dyn Clock) -> SystemTime {
        if self.stamped_by(clock) {
            self.inner.received_at
        } else {
            clock.now()
        }
    }

    /// [`SecurityContext::now_by`] in nanoseconds since the Unix epoch.
    pub fn unix_nanos_by(&self, clock: &dyn Clock) -> u64 {
        if self.stamped_by(clock) {
            self.inner.received_nanos
        } else {
            clock.unix_nanos()
        }
    }

    fn stamped_by(&self, clock: &dyn Clock) -> bool {
        self.inner.clock != 0 && self.inner.clock == clock_id(clock)
    }

    /// The resolved client address, when the server recorded a peer.
    pub fn client_addr(&self) -> Option<ClientAddr> {
        self.inner.client_addr
    }

    /// The SHA-256 of `credential`, a part of the request header value `header`
    /// (the token after `Bearer `, an API key), hashed at most once per request:
    /// the failure limit and identity both need it. The digest is reused only when
    /// the bytes are equal to those first hashed, so a header rewritten between two
    /// layers is hashed afresh.
    pub fn credential_sha256(&self, header: &HeaderValue, credential: &[u8]) -> [u8; 32] {
        if let Some(d) = self.inner.credential_digest.get() {
            if d.header.as_bytes().get(d.range.clone()) == Some(credential) {
                return d.sha256;
            }
            return crate::digest::credential_sha256(credential);
        }
        let sha256 = crate::digest::credential_sha256(credential);
        // Remember it only when `credential` lies inside `header` (it always does
        // for the guard's own layers).
        let base = header.as_bytes().as_ptr() as usize;
        let start = (credential.as_ptr() as usize).wrapping_sub(base);
        if start <= header.len() && credential.len() <= header.len() - start {
            let _ = self.inner.credential_digest.set(CredentialDigest {
                header: header.clone(),
                range: start..start + credential.len(),
                sha256,
            });
        }
        sha256
    }

    fn lock(&self) -> MutexGuard<'_, ContextState> {
        // A panic while recording must not take the request's audit record with it.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the state. Do not call into other code that touches the context from
    /// inside `f`.
    pub fn read<R>(&self, f: impl FnOnce(&ContextState) -> R) -> R {
        f(&self.lock())
    }

    /// Updates the state. Do not call into other code that touches the context from
    /// inside `f`.
    pub fn update<R>(&self, f: impl FnOnce(&mut ContextState) -> R) -> R {
        f(&mut self.lock())
    }

    /// A copy of the whole state, with the template of the matched route in
    /// [`ContextState::route`].
    pub fn snapshot(&self) -> ContextState {
        let mut state = self.lock().clone();
        if let Some(crate::route::RouteMatch {
            template: Some(t), ..
        }) = self.inner.route.get()
        {
            state.route = Some(t.clone());
        }
        state
    }

    /// The verified principal, if identity has run and succeeded.
    pub fn principal(&self) -> Option<Principal> {
        self.lock().principal.clone()
    }

    /// Records the verified principal.
    pub fn set_principal(&self, principal: Principal) {
        let mut s = self.lock();
        s.credential_kind = Some(principal.kind());
        s.credential_issued_at = principal.credential_issued();
        s.principal = Some(principal);
    }

    /// Records that the request passed a control. The decision becomes `Allowed`
    /// unless a control already denied it.
    pub fn allow(&self) {
        let mut s = self.lock();
        if s.decision == Decision::Pending {
            s.decision = Decision::Allowed;
        }
    }

    /// Records a denial. The first denial recorded is the decision.
    pub fn deny(&self, denial: &Denial) {
        let mut s = self.lock();
        if !matches!(s.decision, Decision::Denied(_)) {
            s.decision = Decision::Denied(denial.summary());
        }
    }

    /// Records a denial that a control in shadow mode would have made.
    pub fn record_shadow_denial(&self, denial: &Denial) {
        self.lock().shadow_denials.push(denial.summary());
    }

    /// The decision so far.
    pub fn decision(&self) -> Decision {
        self.lock().decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn request_ids_are_unique_and_formatted_like_uuids() {
        let a = RequestId::next();
        let b = RequestId::next();
        assert_ne!(a, b);
        let s = a.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(s.matches('-').count(), 4);
    }

    #[test]
    fn credential_digest_is_reused_only_for_the_same_bytes() {
        use sha2::{Digest, Sha256};
        let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
        let ctx = SecurityContext::new(None, &ManualClock::now());
        let first = HeaderValue::from_static("Bearer token-one");
        let token = &first.as_bytes()[7..];
        assert_eq!(ctx.credential_sha256(&first, token), sha(b"token-one"));
        // Equal bytes in another header value (a second layer reading them again).
        let again = HeaderValue::from_static("Bearer token-one");
        assert_eq!(
            ctx.credential_sha256(&again, &again.as_bytes()[7..]),
            sha(b"token-one")
        );
        // A header rewritten between layers (same length, other bytes) is hashed afresh.
        let rewritten = HeaderValue::from_static("Bearer token-two");
        assert_eq!(
            ctx.credential_sha256(&rewritten, &rewritten.as_bytes()[7..]),
            sha(b"token-two")
        );
        // A credential outside the header value is hashed and not remembered.
        let other = SecurityContext::new(None, &ManualClock::now());
        assert_eq!(other.credential_sha256(&first, b"elsewhere"), sha(b"elsewhere"));
        assert!(other.inner.credential_digest.get().is_none());
        assert!(!format!("{:?}", ctx.inner).contains("token-one"));
    }

    #[test]
    fn the_stamping_clock_is_read_once_other_clocks_are_asked() {
        let shared: crate::clock::SharedClock = Arc::new(ManualClock::now());
        let other = ManualClock::now();
        let ctx = SecurityContext::new(None, &*shared);
        other.advance(std::time::Duration::from_secs(5));
        assert_eq!(ctx.now_by(&*shared), ctx.received_at());
        assert_eq!(ctx.now_by(&other), other.now());
        assert_eq!(ctx.unix_nanos_by(&other), other.unix_nanos());
        assert_eq!(ctx.unix_nanos_by(&*shared), shared.unix_nanos());
        // Zero-sized clocks outside an Arc have no identity: always asked.
        let sys = SecurityContext::new(None, &crate::clock::SystemClock);
        assert_eq!(sys.inner.clock, 0);
    }

    #[test]
    fn first_denial_is_the_decision() {
        let ctx = SecurityContext::new(None, &ManualClock::now());
        ctx.allow();
        let d1 = Denial::invalid_token(Control::Identity, "token_expired", "expired");
        let d2 = Denial::forbidden(Control::Scope, "insufficient_scope", "no");
        ctx.deny(&d1);
        ctx.deny(&d2);
        ctx.allow();
        match ctx.decision() {
            Decision::Denied(s) => assert_eq!((s.control, s.reason), (Control::Identity, "token_expired")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn poisoned_state_is_still_readable() {
        let ctx = SecurityContext::new(None, &ManualClock::now());
        let c2 = ctx.clone();
        let _ = std::thread::spawn(move || c2.update(|_| panic!("boom"))).join();
        ctx.allow();
        assert_eq!(ctx.decision(), Decision::Allowed);
    }
}
