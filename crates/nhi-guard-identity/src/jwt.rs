//! JWT access tokens: issuer configuration and the RFC 8725 / RFC 9068 rules.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use nhi_guard_core::ScopeSet;
use serde::Deserialize;

use crate::jwks::RemoteKeys;
use crate::keys::{CompactParts, JwsError, JwsHeader, KeyLookup, KeySet, SUPPORTED_ALGORITHMS, VerifyingKey};

/// Largest clock-skew leeway an issuer may configure.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Keys configured in code (or loaded from a file by the application).
    Static(Arc<KeySet>),
    /// A JWKS document fetched and refreshed over HTTP.
    Remote(Arc<RemoteKeys>),
}

/// Which claim names the client, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientIdClaim {
    /// `client_id` (RFC 9068 §2.2).
    ClientId,
    /// `azp` (OpenID Connect).
    Azp,
    /// `sub` (the client itself in the client-credentials grant).
    Sub,
}

/// A trusted token issuer: its `iss`, the audiences this API answers to, the
/// algorithms it signs with and where its keys are.
///
/// Secure defaults: `typ` must be `at+jwt` (RFC 9068), 60 s leeway, tokens may
/// live at most 24 h, algorithms RS256, PS256, ES256 and EdDSA, client id from
/// `client_id`, then `azp`, then `sub`.
///
/// ```
/// use std::time::Duration;
/// use nhi_guard_identity::{Issuer, KeySet};
/// let issuer = Issuer::new("https://auth.example.com")
///     .audience("https://api.example.com")
///     .static_keys(KeySet::empty())
///     .leeway(Duration::from_secs(30));
/// assert_eq!(issuer.iss(), "https://auth.example.com");
/// ```
#[derive(Debug, Clone)]
pub struct Issuer {
    pub(crate) iss: Arc<str>,
    pub(crate) audiences: Vec<Arc<str>>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) keys: Option<KeySource>,
    pub(crate) require_at_jwt: bool,
    pub(crate) leeway: Duration,
    pub(crate) max_lifetime: Duration,
    pub(crate) client_id_claims: Vec<ClientIdClaim>,
}

impl Issuer {
    /// An issuer whose tokens carry exactly this `iss`.
    pub fn new(iss: impl Into<Arc<str>>) -> Self {
        Self {
            iss: iss.into(),
            audiences: Vec::new(),
            algorithms: vec![
                Algorithm::RS256,
                Algorithm::PS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
            ],
            keys: None,
            require_at_jwt: true,
            leeway: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(24 * 3600),
            client_id_claims: vec![ClientIdClaim::ClientId, ClientIdClaim::Azp, ClientIdClaim::Sub],
        }
    }

    /// The expected `iss`.
    pub fn iss(&self) -> &str {
        &self.iss
    }

    /// Adds an accepted audience (exact match against `aud`). At least one is
    /// required.
    #[must_use]
    pub fn audience(mut self, aud: impl Into<Arc<str>>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Replaces the algorithm allow-list. Only [`SUPPORTED_ALGORITHMS`] can be
    /// listed; anything else fails when the layer is built.
    #[must_use]
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = algs.into_iter().collect();
        self
    }

    /// Verifies with keys given in code.
    #[must_use]
    pub fn static_keys(mut self, keys: KeySet) -> Self {
        self.keys = Some(KeySource::Static(Arc::new(keys)));
        self
    }

    /// Verifies with a remote JWKS (see [`RemoteKeys`]).
    #[must_use]
    pub fn remote_keys(mut self, keys: Arc<RemoteKeys>) -> Self {
        self.keys = Some(KeySource::Remote(keys));
        self
    }

    /// Whether `typ` must be `at+jwt` / `application/at+jwt` (default: yes). Turn
    /// off only for legacy issuers that do not mark their access tokens.
    #[must_use]
    pub fn require_at_jwt(mut self, on: bool) -> Self {
        self.require_at_jwt = on;
        self
    }

    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default 60 s, at most
    /// [`MAX_LEEWAY`]).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Longest accepted token lifetime, `exp - iat` (or `exp - now` without
    /// `iat`). Default 24 h.
    #[must_use]
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// Which claims name the client, first present wins.
    #[must_use]
    pub fn client_id_claims(mut self, claims: impl IntoIterator<Item = ClientIdClaim>) -> Self {
        self.client_id_claims = claims.into_iter().collect();
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.iss.is_empty() {
            return Err("issuer `iss` must not be empty".into());
        }
        if self.audiences.is_empty() {
            return Err(format!(
                "issuer {:?}: `audience` needs at least one value",
                self.iss
            ));
        }
        if self.algorithms.is_empty() {
            return Err(format!("issuer {:?}: `algorithms` must not be empty", self.iss));
        }
        if let Some(bad) = self.algorithms.iter().find(|a| !SUPPORTED_ALGORITHMS.contains(a)) {
            return Err(format!(
                "issuer {:?}: `algorithms` lists {:?}, which is not supported (symmetric algorithms are never accepted)",
                self.iss, bad
            ));
        }
        if self.keys.is_none() {
            return Err(format!(
                "issuer {:?}: `keys` missing (static_keys or remote_keys)",
                self.iss
            ));
        }
        if self.client_id_claims.is_empty() {
            return Err(format!(
                "issuer {:?}: `client_id_claims` must not be empty",
                self.iss
            ));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(format!(
                "issuer {:?}: `leeway` of {:?} is more than the {:?} allowed",
                self.iss, self.leeway, MAX_LEEWAY
            ));
        }
        if self.max_lifetime.is_zero() {
            return Err(format!("issuer {:?}: `max_lifetime` must be positive", self.iss));
        }
        Ok(())
    }
}

/// A token that passed every check.
pub(crate) struct VerifiedToken {
    pub(crate) issuer: usize,
    pub(crate) client_id: Arc<str>,
    pub(crate) subject: Arc<str>,
    pub(crate) scopes: ScopeSet,
    pub(crate) exp: SystemTime,
    pub(crate) iat: Option<SystemTime>,
    pub(crate) kid: Option<Arc<str>>,
    pub(crate) alg: Arc<str>,
    pub(crate) jti: Option<Arc<str>>,
    pub(crate) key_fingerprint: [u8; 32],
    pub(crate) cnf_x5t: Option<Arc<str>>,
    /// The principal this token was admitted as, for the registry generation it was
    /// derived under: a cached token's next request skips the registry look-ups.
    pub(crate) admitted: arc_swap::ArcSwapOption<Admitted>,
}

/// What admitting a verified token derived from the registry.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) generation: u64,
    pub(crate) record: Arc<nhi_guard_core::ClientRecord>,
    pub(crate) principal: nhi_guard_core::Principal,
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("client_id", &self.client_id)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused: a stable reason code and a detail that helps a
/// legitimate client without echoing the token or naming keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenError {
    pub(crate) reason: &'static str,
    pub(crate) detail: &'static str,
    /// The issuer's keys could not be obtained: the caller answers 503.
    pub(crate) unavailable: bool,
}

impl TokenError {
    pub(crate) const fn new(reason: &'static str, detail: &'static str) -> Self {
        Self {
            reason,
            detail,
            unavailable: false,
        }
    }
}

pub(crate) const MALFORMED: TokenError = TokenError::new("token_malformed", "The access token is malformed");
pub(crate) const KEY_UNKNOWN: TokenError = TokenError::new(
    "token_key_unknown",
    "The access token is signed with an unknown key",
);
pub(crate) const KEYS_UNAVAILABLE: TokenError = TokenError {
    reason: "issuer_keys_unavailable",
    detail: "The token issuer's keys are temporarily unavailable",
    unavailable: true,
};

impl From<JwsError> for TokenError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::Malformed(_) => MALFORMED,
            JwsError::AlgorithmNotAllowed => TokenError::new(
                "token_algorithm_not_allowed",
                "The access token's signature algorithm is not accepted",
            ),
            JwsError::UnsupportedCritical => TokenError::new(
                "token_unsupported_critical_header",
                "The access token has a critical header this API does not understand",
            ),
            JwsError::UntrustedKeyReference => TokenError::new(
                "token_untrusted_key_reference",
                "The access token references or embeds a key; only configured keys are trusted",
            ),
            JwsError::UnknownKey | JwsError::KidRequired => KEY_UNKNOWN,
            JwsError::KeyAlgorithmMismatch => TokenError::new(
                "token_algorithm_not_allowed",
                "The access token's signature algorithm does not match its key",
            ),
            JwsError::BadSignature => TokenError::new(
                "token_signature_invalid",
                "The access token's signature is invalid",
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains_any(&self, wanted: &[Arc<str>]) -> bool {
        match self {
            Self::One(s) => wanted.iter().any(|w| **w == **s),
            Self::Many(v) => v.iter().any(|s| wanted.iter().any(|w| **w == **s)),
        }
    }
}

#[derive(Deserialize)]
struct Cnf {
    #[serde(rename = "x5t#S256", default)]
    x5t_s256: Option<String>,
    /// DPoP (RFC 9449) and other proof-of-possession methods are not supported:
    /// such a token is refused rather than accepted as a plain bearer token.
    #[serde(default)]
    jkt: Option<serde_json::Value>,
    #[serde(default)]
    jwk: Option<serde_json::Value>,
    #[serde(default)]
    kid: Option<serde_json::Value>,
}

/// The registered claims this layer reads. Duplicate members make the token
/// malformed (serde refuses them).
#[derive(Deserialize)]
pub(crate) struct Claims {
    #[serde(default)]
    pub(crate) iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    nbf: Option<serde_json::Number>,
    #[serde(default)]
    iat: Option<serde_json::Number>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<OneOrMany>,
    #[serde(default)]
    cnf: Option<Cnf>,
}

/// A token split and decoded, signature not yet checked.
pub(crate) struct Parsed<'a> {
    pub(crate) parts: CompactParts<'a>,
    pub(crate) header: JwsHeader,
    pub(crate) claims: Claims,
}

pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    let parts = CompactParts::split(token)?;
    let header = JwsHeader::decode(parts.header)?;
    let payload = URL_SAFE_NO_PAD.decode(parts.payload).map_err(|_| MALFORMED)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| MALFORMED)?;
    Ok(Parsed {
        parts,
        header,
        claims,
    })
}

fn numeric_date(n: &serde_json::Number) -> Result<SystemTime, TokenError> {
    let secs = n
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
        .ok_or(MALFORMED)?;
    Ok(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

pub(crate) enum KeyStep<'a> {
    Key(Arc<VerifyingKey>),
    /// The `kid` is not in the current set; a remote set may be refetched.
    Unknown(&'a Arc<RemoteKeys>),
}

impl Issuer {
    /// Header checks and key selection, before the signature.
    pub(crate) fn select_key(&self, header: &JwsHeader) -> Result<(Algorithm, KeyStep<'_>), TokenError> {
        let alg = header.check(&self.algorithms)?;
        if self.require_at_jwt {
            let ok = header.typ.as_deref().is_some_and(|t| {
                t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
            });
            if !ok {
                return Err(TokenError::new(
                    "token_type_invalid",
                    "The token is not an access token (typ must be at+jwt)",
                ));
            }
        }
        let lookup = |set: &KeySet| match set.select(header.kid.as_deref(), alg) {
            KeyLookup::Found(k) => Ok(Some(k.clone())),
            KeyLookup::WrongAlgorithm => Err(TokenError::from(JwsError::KeyAlgorithmMismatch)),
            KeyLookup::UnknownKid | KeyLookup::KidRequired => Ok(None),
        };
        match &self.keys {
            Some(KeySource::Static(set)) => match lookup(set)? {
                Some(k) => Ok((alg, KeyStep::Key(k))),
                None => Err(KEY_UNKNOWN),
            },
            Some(KeySource::Remote(remote)) => {
                let snapshot = remote.usable_keys().ok_or(KEYS_UNAVAILABLE)?;
                match lookup(&snapshot)? {
                    Some(k) => Ok((alg, KeyStep::Key(k))),
                    None => Ok((alg, KeyStep::Unknown(remote))),
                }
            }
            None => Err(KEYS_UNAVAILABLE),
        }
    }

    /// Whether the key that verified a cached token is still in the issuer's set.
    pub(crate) fn still_has_key(&self, kid: Option<&str>, fingerprint: &[u8; 32]) -> bool {
        match &self.keys {
            Some(KeySource::Static(set)) => set.contains(kid, fingerprint),
            Some(KeySource::Remote(remote)) => {
                remote.usable_keys().is_some_and(|s| s.contains(kid, fingerprint))
            }
            None => false,
        }
    }

    /// Signature, then the claim rules.
    pub(crate) fn finish(
        &self,
        issuer_index: usize,
        parsed: &Parsed<'_>,
        alg: Algorithm,
        key: &VerifyingKey,
        now: SystemTime,
    ) -> Result<VerifiedToken, TokenError> {
        let sig = parsed.parts.signature()?;
        if !key.verify(alg, parsed.parts.signing_input.as_bytes(), &sig) {
            return Err(JwsError::BadSignature.into());
        }
        let c = &parsed.claims;
        let exp = c.exp.as_ref().ok_or(TokenError::new(
            "token_exp_missing",
            "The access token has no expiry (exp)",
        ))?;
        let exp = numeric_date(exp)?;
        if now >= exp + self.leeway {
            return Err(TokenError::new("token_expired", "The access token has expired"));
        }
        if let Some(nbf) = &c.nbf
            && numeric_date(nbf)? > now + self.leeway
        {
            return Err(TokenError::new(
                "token_not_yet_valid",
                "The access token is not valid yet (nbf)",
            ));
        }
        let iat = c.iat.as_ref().map(numeric_date).transpose()?;
        if let Some(iat) = iat
            && iat > now + self.leeway
        {
            return Err(TokenError::new(
                "token_issued_in_future",
                "The access token was issued in the future (iat)",
            ));
        }
        let start = iat.unwrap_or(now);
        if exp
            .duration_since(start)
            .is_ok_and(|life| life > self.max_lifetime)
        {
            return Err(TokenError::new(
                "token_lifetime_too_long",
                "The access token lives longer than this API accepts",
            ));
        }
        if !c
            .aud
            .as_ref()
            .is_some_and(|aud| aud.contains_any(&self.audiences))
        {
            return Err(TokenError::new(
                "token_audience_invalid",
                "The access token is not meant for this API (aud)",
            ));
        }
        let mut client_id = None;
        for claim in &self.client_id_claims {
            let v = match claim {
                ClientIdClaim::ClientId => c.client_id.as_deref(),
                ClientIdClaim::Azp => c.azp.as_deref(),
                ClientIdClaim::Sub => c.sub.as_deref(),
            };
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                client_id = Some(v);
                break;
            }
        }
        let client_id = client_id.ok_or(TokenError::new(
            "token_client_id_missing",
            "The access token does not name its client",
        ))?;
        let scope_error = TokenError::new("token_scope_invalid", "The access token's scope claim is invalid");
        let scopes = match (&c.scope, &c.scp) {
            (Some(s), _) => ScopeSet::parse(s).map_err(|_| scope_error)?,
            (None, Some(OneOrMany::One(s))) => ScopeSet::parse(s).map_err(|_| scope_error)?,
            (None, Some(OneOrMany::Many(v))) => ScopeSet::try_from_iter(v.iter()).map_err(|_| scope_error)?,
            (None, None) => ScopeSet::empty(),
        };
        if let Some(cnf) = &c.cnf
            && (cnf.jkt.is_some() || cnf.jwk.is_some() || cnf.kid.is_some() || cnf.x5t_s256.is_none())
        {
            return Err(TokenError::new(
                "token_binding_unsupported",
                "The access token is bound with a confirmation method this API does not support",
            ));
        }
        Ok(VerifiedToken {
            issuer: issuer_index,
            client_id: Arc::from(client_id),
            subject: Arc::from(c.sub.as_deref().unwrap_or(client_id)),
            scopes,
            exp,
            iat,
            kid: parsed.header.kid.as_deref().map(Arc::from),
            alg: Arc::from(crate::keys::algorithm_name(alg)),
            jti: c.jti.as_deref().map(Arc::from),
            key_fingerprint: *key.fingerprint(),
            cnf_x5t: c.cnf.as_ref().and_then(|c| c.x5t_s256.as_deref()).map(Arc::from),
            admitted: arc_swap::ArcSwapOption::empty(),
        })
    }
}
