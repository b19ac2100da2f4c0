//! `IdentityService<S>`: the service, and the credential checks it runs in `call`.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response, StatusCode};
use nhi_guard_core::context::{Control, Decision};
use nhi_guard_core::denial::{GrpcCode, Protocol, respond};
use nhi_guard_core::registry::{ApiKeyHash, ClientRecord, ClientRejection, Tier};
use nhi_guard_core::{
    CredentialFingerprint, CredentialInfo, Denial, GuardBody, IdentityKind, Principal, SecurityContext,
};
use tracing::Instrument as _;

use crate::jwks::RemoteKeys;
use crate::jwt::{self, Admitted, KeyStep, TokenError, VerifiedToken};
use crate::layer::{Config, Credential};
use crate::mtls::{self, CertError, CertIdentity, PeerCertificates};

const TARGET: &str = "nhi_guard::identity";

/// Longest API key accepted, in bytes.
const MAX_API_KEY_BYTES: usize = 512;

/// The service of [`crate::IdentityLayer`].
#[derive(Clone)]
pub struct IdentityService<S> {
    pub(crate) inner: S,
    // `None`: passes requests through (see `passthrough`).
    pub(crate) config: Option<Arc<Config>>,
}

impl<S> IdentityService<S> {
    /// A service that hands every request to `inner` untouched, its response body
    /// wrapped as the control's own: what the `nhi-guard` facade puts in this
    /// control's place when it is off, so the composed service has one type
    /// whichever controls are on.
    #[doc(hidden)]
    pub fn passthrough(inner: S) -> Self {
        Self { inner, config: None }
    }
}

impl<S: fmt::Debug> fmt::Debug for IdentityService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

/// The credential a request presented, as found in the request.
enum Presented<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
    Certificate(&'a PeerCertificates),
}

/// A failed check: the denial, plus what to record about the credential.
struct Failure {
    denial: Box<Denial>,
    credential: Option<(IdentityKind, CredentialFingerprint)>,
}

impl Failure {
    fn bare(denial: Denial) -> Self {
        Self {
            denial: Box::new(denial),
            credential: None,
        }
    }

    fn with(denial: Denial, kind: IdentityKind, fp: CredentialFingerprint) -> Self {
        Self {
            denial: Box::new(denial),
            credential: Some((kind, fp)),
        }
    }
}

/// What `call` decided.
enum Step {
    Pass(
        Option<Principal>,
        Option<(IdentityKind, CredentialFingerprint, bool)>,
    ),
    Fail(Failure),
    /// The token's `kid` is unknown and the issuer's set may be refetched.
    Refetch(Box<PendingRefetch>),
}

struct PendingRefetch {
    remote: Arc<RemoteKeys>,
    seen_attempts: u64,
    token: String,
    digest: [u8; 32],
}

fn invalid_request(reason: &'static str, detail: &'static str) -> Failure {
    Failure::bare(Denial::invalid_request(Control::Identity, reason, detail))
}

/// A plausible credential: non-empty visible ASCII without spaces. The token's
/// own parser (strict base64url) checks the characters of a JWT; this check only
/// has to be cheap, as it runs on every request.
fn is_plausible_credential(s: &str) -> bool {
    // One branch-free pass (vectorised by the compiler): any byte that is not
    // visible ASCII (space, HTAB, DEL, non-ASCII) makes the credential malformed.
    let bad = s.bytes().fold(false, |acc, b| acc | (b <= b' ') | (b >= 0x7f));
    !s.is_empty() && !bad
}

impl Config {
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Finds the credential that decides, per the configured order.
    fn presented<'a>(
        &self,
        headers: &'a HeaderMap,
        ext: &'a http::Extensions,
    ) -> Result<Option<Presented<'a>>, Failure> {
        let mut bearer = None;
        let mut api_key = None;
        let mut authz = headers.get_all(AUTHORIZATION).iter();
        if let Some(value) = authz.next() {
            if authz.next().is_some() {
                return Err(invalid_request(
                    "multiple_authorization_headers",
                    "The request carries more than one Authorization header",
                ));
            }
            let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
                invalid_request("malformed_authorization", "The Authorization header is malformed")
            })?;
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let credential = rest.trim_start_matches(' ');
            if scheme.eq_ignore_ascii_case("bearer") {
                if !is_plausible_credential(credential) {
                    return Err(invalid_request(
                        "malformed_authorization",
                        "The Authorization header is malformed (expected `Bearer <token>`)",
                    ));
                }
                bearer = Some(credential);
            } else if self.api_key_in_authorization && scheme.eq_ignore_ascii_case("apikey") {
                if credential.is_empty() || credential.contains(' ') {
                    return Err(invalid_request(
                        "malformed_authorization",
                        "The Authorization header is malformed (expected `ApiKey <key>`)",
                    ));
                }
                api_key = Some(credential);
            } else {
                return Err(invalid_request(
                    "unsupported_authorization_scheme",
                    "The Authorization scheme is not supported here",
                ));
            }
        }
        let mut keys = headers.get_all(&self.api_key_header).iter();
        if let Some(value) = keys.next() {
            if keys.next().is_some() || api_key.is_some() {
                return Err(invalid_request(
                    "multiple_api_keys",
                    "The request carries more than one API key",
                ));
            }
            let value = value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && !v.contains(' '))
                .ok_or_else(|| invalid_request("malformed_api_key", "The API key header is malformed"))?;
            api_key = Some(value);
        }
        let certs = ext.get::<PeerCertificates>();
        for kind in &self.order {
            match kind {
                Credential::Bearer => {
                    if let Some(t) = bearer {
                        return Ok(Some(Presented::Bearer(t)));
                    }
                }
                Credential::ApiKey => {
                    if let Some(k) = api_key {
                        return Ok(Some(Presented::ApiKey(k)));
                    }
                }
                Credential::ClientCertificate => {
                    if let Some(c) = certs {
                        return Ok(Some(Presented::Certificate(c)));
                    }
                }
            }
        }
        if bearer.is_some() || api_key.is_some() {
            return Err(invalid_request(
                "credential_not_accepted",
                "This kind of credential is not accepted here",
            ));
        }
        Ok(None)
    }

    fn decide<B>(&self, req: &Request<B>, ctx: &SecurityContext, now: SystemTime) -> Step {
        let presented = match self.presented(req.headers(), req.extensions()) {
            Ok(p) => p,
            Err(f) => return Step::Fail(f),
        };
        match presented {
            None if self.optional => Step::Pass(None, None),
            None => Step::Fail(Failure::bare(Denial::missing_credential(Control::Identity))),
            Some(Presented::Bearer(token)) => {
                let digest = match req.headers().get(AUTHORIZATION) {
                    // Shared with the failure limit, which may have hashed it already.
                    Some(h) => ctx.credential_sha256(h, token.as_bytes()),
                    None => crate::sha256(token.as_bytes()),
                };
                let fp = CredentialFingerprint::from_sha256(&digest);
                let certs = req.extensions().get::<PeerCertificates>();
                match self.verify_token(token, &digest, true, now) {
                    Ok(vt) => self.admit_token(&vt, certs, ctx, fp, now),
                    Err(TokenStep::Fail(e)) => Step::Fail(token_failure(e, fp)),
                    Err(TokenStep::Refetch(remote, seen_attempts)) => {
                        Step::Refetch(Box::new(PendingRefetch {
                            remote,
                            seen_attempts,
                            token: token.to_owned(),
                            digest,
                        }))
                    }
                }
            }
            Some(Presented::ApiKey(key)) => {
                let headers = req.headers();
                let digest = match headers
                    .get(&self.api_key_header)
                    .or_else(|| headers.get(AUTHORIZATION))
                {
                    Some(h) => ctx.credential_sha256(h, key.as_bytes()),
                    None => crate::sha256(key.as_bytes()),
                };
                self.admit_api_key(key, ApiKeyHash::from_digest(digest), ctx, now)
            }
            Some(Presented::Certificate(certs)) => self.admit_certificate(certs, ctx, now),
        }
    }

    /// Verifies a bearer token: the cache first, then the issuer's rules.
    fn verify_token(
        &self,
        token: &str,
        digest: &[u8; 32],
        may_refetch: bool,
        now: SystemTime,
    ) -> Result<Arc<VerifiedToken>, TokenStep> {
        if token.len() > self.max_token_bytes {
            return Err(TokenStep::Fail(TokenError::new(
                "token_too_large",
                "The access token is larger than this API accepts",
            )));
        }
        if let Some(cache) = &self.cache
            && let Some(vt) = cache.get(digest, now)
        {
            if self.issuers[vt.issuer].still_has_key(vt.kid.as_deref(), &vt.key_fingerprint) {
                return Ok(vt);
            }
            cache.invalidate(digest);
        }
        let parsed = jwt::parse(token).map_err(TokenStep::Fail)?;
        let index = parsed
            .claims
            .iss
            .as_deref()
            .and_then(|iss| self.by_iss.get(iss).copied())
            .ok_or(TokenStep::Fail(TokenError::new(
                "token_issuer_unknown",
                "The access token's issuer is not trusted here",
            )))?;
        let issuer = &self.issuers[index];
        let (alg, step) = issuer.select_key(&parsed.header).map_err(TokenStep::Fail)?;
        let key = match step {
            KeyStep::Key(k) => k,
            KeyStep::Unknown(remote) => {
                return Err(if may_refetch && remote.unknown_kid_fetch_allowed() {
                    TokenStep::Refetch(remote.clone(), remote.attempts())
                } else {
                    TokenStep::Fail(jwt::KEY_UNKNOWN)
                });
            }
        };
        let vt = Arc::new(
            issuer
                .finish(index, &parsed, alg, &key, now)
                .map_err(TokenStep::Fail)?,
        );
        if let Some(cache) = &self.cache {
            cache.insert(*digest, vt.clone(), now);
        }
        Ok(vt)
    }

    fn admit_token(
        &self,
        vt: &VerifiedToken,
        certs: Option<&PeerCertificates>,
        ctx: &SecurityContext,
        fp: CredentialFingerprint,
        now: SystemTime,
    ) -> Step {
        let fail = |denial: Denial| Step::Fail(Failure::with(denial, IdentityKind::ServiceAccount, fp));
        if let Some(expected) = &vt.cnf_x5t {
            let Some(leaf) = certs.and_then(PeerCertificates::leaf) else {
                return fail(Denial::invalid_token(
                    Control::Identity,
                    "token_certificate_required",
                    "The access token is bound to a client certificate that was not presented",
                ));
            };
            if mtls::thumbprint(leaf) != **expected {
                return fail(Denial::invalid_token(
                    Control::Identity,
                    "token_certificate_mismatch",
                    "The access token is bound to a different client certificate",
                ));
            }
        }
        if let (Some(r), Some(jti)) = (&self.revocations, &vt.jti)
            && r.token_revoked(jti, now)
        {
            return fail(Denial::invalid_token(
                Control::Identity,
                "token_revoked",
                "The access token has been revoked",
            ));
        }
        // A cached token admitted under the registry's current generation: the
        // principal it was admitted as (the record, issuer check, tier and scopes
        // cannot have changed). Governance below still runs on every request.
        let generation = self.registry.generation();
        if let Some(g) = generation
            && let Some(admitted) = &*vt.admitted.load()
            && admitted.generation == g
        {
            return self.govern(
                &admitted.record,
                admitted.principal.clone(),
                ctx,
                IdentityKind::ServiceAccount,
                fp,
                now,
            );
        }
        let Some(record) = self.registry.client(&vt.client_id) else {
            if let Some(u) = &self.ungoverned {
                let addr = ctx.client_addr().map(|a| a.ip());
                u.token(&vt.client_id, &self.issuers[vt.issuer].iss, &vt.scopes, addr, now);
            }
            return fail(Denial::invalid_token(
                Control::Identity,
                "client_unknown",
                "The client is not registered with this API",
            ));
        };
        let iss = &self.issuers[vt.issuer].iss;
        if !self.issuer_may_name(&record, iss) {
            // The same answer whether the client lists other issuers or none: the
            // caller learns nothing of the client's issuers.
            return fail(Denial::invalid_token(
                Control::Identity,
                "client_issuer_mismatch",
                "The access token's issuer may not issue tokens for this client",
            ));
        }
        let credential = CredentialInfo::Jwt {
            kid: vt.kid.clone(),
            alg: vt.alg.clone(),
            jti: vt.jti.clone(),
            certificate_bound: vt.cnf_x5t.is_some(),
        };
        let tier = self.tier(&record);
        // Token scopes ∩ ceiling; reuse the token's set when it is already inside.
        let scopes = if vt.scopes.is_subset(record.scopes()) {
            vt.scopes.clone()
        } else {
            vt.scopes.intersection(record.scopes())
        };
        let mut principal = Principal::new(record.clone(), credential, scopes, tier)
            .issuer(iss.clone())
            .subject(vt.subject.clone())
            .credential_expires(vt.exp);
        if let Some(iat) = vt.iat {
            principal = principal.credential_issued_at(iat);
        }
        if let Some(generation) = generation {
            vt.admitted.store(Some(Arc::new(Admitted {
                generation,
                record: record.clone(),
                principal: principal.clone(),
            })));
        }
        self.govern(&record, principal, ctx, IdentityKind::ServiceAccount, fp, now)
    }

    /// Whether a token of `iss` may name `record`: an issuer the client lists
    /// (exact comparison, as `iss` was matched), or any trusted issuer when the
    /// client lists none and a single issuer is trusted.
    fn issuer_may_name(&self, record: &ClientRecord, iss: &str) -> bool {
        if !record.issuers().is_empty() {
            return record.lists_issuer(iss);
        }
        if self.issuers.len() == 1 {
            return true;
        }
        // The layer refused to build over such an inventory and `InMemoryRegistry`
        // refuses to swap one in; a registry of the application's own may not.
        tracing::warn!(
            target: TARGET,
            client_id = %record.id(),
            "client lists no issuers while several are trusted; its tokens are refused \
             (list its issuers in the inventory)"
        );
        false
    }

    fn admit_api_key(&self, key: &str, hash: ApiKeyHash, ctx: &SecurityContext, now: SystemTime) -> Step {
        let fp = CredentialFingerprint::from_sha256(hash.as_bytes());
        let fail = |denial: Denial| Step::Fail(Failure::with(denial, IdentityKind::ApiKey, fp));
        if key.len() > MAX_API_KEY_BYTES {
            return fail(Denial::invalid_token(
                Control::Identity,
                "api_key_malformed",
                "The API key is malformed",
            ));
        }
        if self
            .revocations
            .as_ref()
            .is_some_and(|r| r.api_key_revoked(&hash))
        {
            return fail(Denial::invalid_token(
                Control::Identity,
                "api_key_revoked",
                "The API key has been revoked",
            ));
        }
        let Some(record) = self.registry.client_by_api_key(&hash) else {
            if let Some(u) = &self.ungoverned {
                u.api_key(&hash, ctx.client_addr().map(|a| a.ip()), now);
            }
            return fail(Denial::invalid_token(
                Control::Identity,
                "api_key_unknown",
                "The API key is not recognised",
            ));
        };
        let dates = record.api_key_dates(&hash);
        if let (Some(created), Some(max_age)) = (dates.created, self.registry.max_key_age_for(record.tier()))
            && now.duration_since(created).is_ok_and(|age| age >= max_age)
        {
            return fail(Denial::invalid_token(
                Control::Identity,
                "api_key_expired",
                "The API key is older than this API accepts; rotate it",
            ));
        }
        if dates.rotate_by.is_some_and(|t| t <= now) {
            ctx.update(|s| s.credential_rotation_due = true);
            nhi_guard_core::metrics::rotation_due();
        }
        let credential = CredentialInfo::ApiKey {
            prefix: CredentialInfo::api_key_prefix(key, 8),
        };
        let tier = self.tier(&record);
        let principal = Principal::new(record.clone(), credential, record.scopes().clone(), tier);
        self.govern(&record, principal, ctx, IdentityKind::ApiKey, fp, now)
    }

    fn admit_certificate(&self, certs: &PeerCertificates, ctx: &SecurityContext, now: SystemTime) -> Step {
        let Some(leaf) = certs.leaf() else {
            return Step::Fail(Failure::bare(Denial::missing_credential(Control::Identity)));
        };
        let fp = CredentialFingerprint::of(leaf);
        let fail = |denial: Denial| Step::Fail(Failure::with(denial, IdentityKind::WorkloadCertificate, fp));
        let unknown = || {
            Denial::invalid_token(
                Control::Identity,
                "certificate_unknown",
                "The client certificate's identity is not registered with this API",
            )
        };
        let (record, spiffe, subject) = match mtls::identify(leaf) {
            Ok(CertIdentity::Spiffe(id)) => match self.registry.client_by_spiffe_id(&id) {
                Some(record) => (record, Some(id.clone()), id),
                None => return fail(unknown()),
            },
            Ok(CertIdentity::Other(details)) => {
                let Some(mapper) = &self.cert_mapper else {
                    return fail(Denial::invalid_token(
                        Control::Identity,
                        CertError::SpiffeIdCount.reason(),
                        CertError::SpiffeIdCount.detail(),
                    ));
                };
                match mapper(&details).and_then(|id| self.registry.client(&id)) {
                    Some(record) => (record, None, details.subject),
                    None => return fail(unknown()),
                }
            }
            Err(e) => return fail(Denial::invalid_token(Control::Identity, e.reason(), e.detail())),
        };
        let credential = CredentialInfo::Certificate {
            thumbprint: Arc::from(mtls::thumbprint(leaf)),
            spiffe_id: spiffe.as_deref().map(Arc::from),
        };
        let tier = self.tier(&record);
        let principal =
            Principal::new(record.clone(), credential, record.scopes().clone(), tier).subject(subject);
        self.govern(
            &record,
            principal,
            ctx,
            IdentityKind::WorkloadCertificate,
            fp,
            now,
        )
    }

    fn tier(&self, record: &ClientRecord) -> Tier {
        self.registry
            .tier(record.tier())
            .unwrap_or(Tier::BUILT_IN_DEFAULT)
    }

    /// The governance check of every request: active, unexpired, allowed network.
    fn govern(
        &self,
        record: &ClientRecord,
        principal: Principal,
        ctx: &SecurityContext,
        kind: IdentityKind,
        fp: CredentialFingerprint,
        now: SystemTime,
    ) -> Step {
        if self
            .revocations
            .as_ref()
            .is_some_and(|r| r.client_revoked(record.id().as_str()))
        {
            let denial = Denial::invalid_token(
                Control::Identity,
                "client_revoked",
                "The client's access has been revoked",
            );
            return Step::Fail(Failure::with(denial, kind, fp));
        }
        let addr = ctx.client_addr().map(|a| a.ip());
        match record.admit(now, addr, self.registry.expiry_warning()) {
            Ok(standing) => Step::Pass(Some(principal), Some((kind, fp, standing.expiring_soon))),
            Err(rejection) => {
                let denial = match rejection {
                    ClientRejection::Suspended => {
                        Denial::invalid_token(Control::Identity, rejection.code(), "The client is suspended")
                    }
                    ClientRejection::Expired => Denial::invalid_token(
                        Control::Identity,
                        rejection.code(),
                        "The client's registration has expired",
                    ),
                    _ => Denial::forbidden(
                        Control::Identity,
                        rejection.code(),
                        "The client may not call from this network",
                    ),
                };
                Step::Fail(Failure::with(denial, kind, fp))
            }
        }
    }

    /// Records the outcome in the context; returns the denial to render, if any.
    fn record(
        &self,
        step_result: Result<Option<Principal>, Failure>,
        extra: Option<(IdentityKind, CredentialFingerprint, bool)>,
        ctx: &SecurityContext,
        started: Option<Instant>,
    ) -> Result<Option<Principal>, Box<Denial>> {
        self.metrics.decided(started);
        match step_result {
            Ok(principal) => {
                if let Some(p) = &principal {
                    // One lock for everything this layer records.
                    ctx.update(|s| {
                        s.credential_kind = Some(p.kind());
                        s.credential_issued_at = p.credential_issued();
                        s.principal = Some(p.clone());
                        if let Some((_, fp, expiring_soon)) = extra {
                            s.credential_fingerprint = Some(fp);
                            s.client_expiring_soon = expiring_soon;
                        }
                        if s.decision == Decision::Pending {
                            s.decision = Decision::Allowed;
                        }
                    });
                    tracing::debug!(
                        target: TARGET,
                        request_id = %ctx.request_id(),
                        client_id = %p.client_id(),
                        kind = p.kind().as_str(),
                        "identity verified"
                    );
                } else {
                    ctx.allow();
                }
                self.metrics.allow();
                Ok(principal)
            }
            Err(failure) => {
                let denial = Box::new((*failure.denial).with_request_id(ctx.request_id()));
                ctx.update(|s| {
                    s.identity_failure = Some(denial.reason());
                    if let Some((kind, fp)) = failure.credential {
                        s.credential_kind = Some(kind);
                        s.credential_fingerprint = Some(fp);
                    }
                });
                ctx.deny(&denial);
                self.metrics.deny(&denial);
                tracing::info!(
                    target: TARGET,
                    request_id = %ctx.request_id(),
                    reason = denial.reason(),
                    status = denial.status().as_u16(),
                    fingerprint = failure.credential.map(|(_, fp)| fp.to_string()).unwrap_or_default(),
                    "identity refused"
                );
                Err(denial)
            }
        }
    }
}

enum TokenStep {
    Fail(TokenError),
    Refetch(Arc<RemoteKeys>, u64),
}

fn token_failure(e: TokenError, fp: CredentialFingerprint) -> Failure {
    let denial = if e.unavailable {
        Denial::custom(
            Control::Identity,
            StatusCode::SERVICE_UNAVAILABLE,
            e.reason,
            "Service unavailable",
            Cow::Borrowed(e.detail),
            GrpcCode::Unavailable,
        )
        .retry_after(Duration::from_secs(30))
    } else {
        Denial::invalid_token(Control::Identity, e.reason, e.detail)
    };
    Failure::with(denial, IdentityKind::ServiceAccount, fp)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`Identity`]: the inner service's future, a ready
    /// refusal, or (only when a token names an unknown `kid` and the key set may be
    /// refetched) a boxed future that refetches, verifies and then calls the
    /// inner service.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Ready {
            #[pin]
            future: nhi_guard_core::future::ResponseFuture<F, B>,
        },
        Refetch {
            future: BoxFuture<Result<Response<GuardBody<B>>, E>>,
        },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("identity::ResponseFuture")
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { future } => future.poll(cx),
            KindProj::Refetch { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for IdentityService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<GuardBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Some(shared) = &self.config else {
            return ResponseFuture {
                kind: Kind::Ready {
                    future: nhi_guard_core::future::ResponseFuture::inner(self.inner.call(req)),
                },
            };
        };
        let config = &**shared;
        let ctx = SecurityContext::get_or_insert(&mut req, &config.resolver, &*config.clock);
        let started = config.metrics.start();
        // One clock reading per request when the stack shares a clock.
        let now = ctx.now_by(&*config.clock);
        let protocol = Protocol::of(req.headers());
        let (result, extra) = match config.decide(&req, &ctx, now) {
            Step::Pass(p, extra) => (Ok(p), extra),
            Step::Fail(f) => (Err(f), None),
            Step::Refetch(pending) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let config = shared.clone();
                let span = tracing::debug_span!(target: TARGET, "unknown_kid_refetch");
                let future = async move {
                    refetch_then_call(config, inner, req, ctx, protocol, *pending, started).await
                }
                .instrument(span);
                return ResponseFuture {
                    kind: Kind::Refetch {
                        future: Box::pin(future),
                    },
                };
            }
        };
        let future = match config.record(result, extra, &ctx, started) {
            Ok(principal) => {
                if let Some(p) = principal {
                    req.extensions_mut().insert(p);
                }
                nhi_guard_core::future::ResponseFuture::inner(self.inner.call(req))
            }
            Err(denial) => nhi_guard_core::future::ResponseFuture::rejected(respond(
                &*config.renderer,
                *denial,
                protocol,
            )),
        };
        ResponseFuture {
            kind: Kind::Ready { future },
        }
    }
}

async fn refetch_then_call<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut req: Request<ReqBody>,
    ctx: SecurityContext,
    protocol: Protocol,
    pending: PendingRefetch,
    started: Option<Instant>,
) -> Result<Response<GuardBody<ResBody>>, S::Error>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    pending
        .remote
        .refetch_for_unknown_kid(pending.seen_attempts)
        .await;
    let fp = CredentialFingerprint::from_sha256(&pending.digest);
    let now = config.now();
    let (result, extra) = match config.verify_token(&pending.token, &pending.digest, false, now) {
        Ok(vt) => {
            let certs = req.extensions().get::<PeerCertificates>();
            match config.admit_token(&vt, certs, &ctx, fp, now) {
                Step::Pass(p, extra) => (Ok(p), extra),
                Step::Fail(f) => (Err(f), None),
                Step::Refetch(_) => (Err(token_failure(jwt::KEY_UNKNOWN, fp)), None),
            }
        }
        Err(TokenStep::Fail(e)) => (Err(token_failure(e, fp)), None),
        Err(TokenStep::Refetch(..)) => (Err(token_failure(jwt::KEY_UNKNOWN, fp)), None),
    };
    match config.record(result, extra, &ctx, started) {
        Ok(principal) => {
            if let Some(p) = principal {
                req.extensions_mut().insert(p);
            }
            inner.call(req).await.map(|res| res.map(GuardBody::inner))
        }
        Err(denial) => Ok(respond(&*config.renderer, *denial, protocol)),
    }
}
