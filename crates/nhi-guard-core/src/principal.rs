//! The verified, governed identity of a caller.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::registry::{ClientRecord, Tier};
use crate::scope::ScopeSet;

/// The identifier of a client in the inventory. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// Wraps an identifier.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClientId {
    fn from(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl From<String> for ClientId {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

/// What kind of non-human identity a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IdentityKind {
    /// A service account or integration holding OAuth client credentials, calling
    /// with access tokens.
    ServiceAccount,
    /// A client calling with a static API key.
    ApiKey,
    /// A workload proving itself with an X.509 client certificate (mTLS, SPIFFE).
    WorkloadCertificate,
}

impl IdentityKind {
    /// A stable lower-case name (`service_account`, `api_key`, `workload_certificate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "service_account",
            Self::ApiKey => "api_key",
            Self::WorkloadCertificate => "workload_certificate",
        }
    }
}

/// A one-way fingerprint of a presented credential: the first 12 bytes of its
/// SHA-256. Lets risk signals and audit records recognise a credential again without
/// ever holding it. Shown as 24 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialFingerprint([u8; 12]);

impl CredentialFingerprint {
    /// Fingerprints raw credential bytes (a token, an API key, a DER certificate).
    pub fn of(credential: &[u8]) -> Self {
        Self::from_sha256(&crate::digest::sha256(credential))
    }

    /// The fingerprint of a credential whose SHA-256 is already known.
    pub fn from_sha256(digest: &[u8; 32]) -> Self {
        let mut out = [0; 12];
        out.copy_from_slice(&digest[..12]);
        Self(out)
    }

    /// The fingerprint bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Display for CredentialFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CredentialFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialFingerprint({self})")
    }
}

impl Serialize for CredentialFingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the client presented, described without the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CredentialInfo {
    /// A JWT access token.
    Jwt {
        /// The `kid` header, if any.
        kid: Option<Arc<str>>,
        /// The signature algorithm (`RS256`, `ES256`, ...).
        alg: Arc<str>,
        /// The `jti` claim, if any.
        jti: Option<Arc<str>>,
        /// Whether the token is bound to the client certificate (RFC 8705).
        certificate_bound: bool,
    },
    /// A static API key.
    ApiKey {
        /// The first characters of the key, as issued keys usually carry a public
        /// prefix (`nhik_live_...`); at most 8 characters and never the whole key.
        prefix: Arc<str>,
    },
    /// An X.509 client certificate.
    Certificate {
        /// SHA-256 thumbprint of the DER leaf certificate, base64url (the `x5t#S256`
        /// form of RFC 8705).
        thumbprint: Arc<str>,
        /// The SPIFFE id from the URI SAN, when there is one.
        spiffe_id: Option<Arc<str>>,
    },
}

impl CredentialInfo {
    /// The identity kind this credential implies.
    pub fn kind(&self) -> IdentityKind {
        match self {
            Self::Jwt { .. } => IdentityKind::ServiceAccount,
            Self::ApiKey { .. } => IdentityKind::ApiKey,
            Self::Certificate { .. } => IdentityKind::WorkloadCertificate,
        }
    }

    /// The public prefix of an API key: at most `max` characters and never more
    /// than half of the key, so a short key is never revealed.
    pub fn api_key_prefix(key: &str, max: usize) -> Arc<str> {
        let limit = max.min(key.chars().count() / 2);
        Arc::from(key.chars().take(limit).collect::<String>())
    }
}

/// A verified caller: the inventory record it maps to, how it proved itself, and
/// the scopes it holds on this request.
///
/// `effective scopes` are the credential's scopes intersected with the client's
/// ceiling in the inventory.
#[derive(Debug, Clone)]
pub struct Principal {
    record: Arc<ClientRecord>,
    kind: IdentityKind,
    issuer: Option<Arc<str>>,
    subject: Arc<str>,
    scopes: ScopeSet,
    credential: CredentialInfo,
    credential_expires: Option<SystemTime>,
    credential_issued_at: Option<SystemTime>,
    tier: Tier,
}

impl Principal {
    /// A principal for `record`, authenticated by `credential`, holding `scopes`
    /// (already intersected with the ceiling; see [`Principal::with_credential_scopes`])
    /// and rate-limited at `tier`.
    pub fn new(record: Arc<ClientRecord>, credential: CredentialInfo, scopes: ScopeSet, tier: Tier) -> Self {
        Self {
            // The client id is already shared: no allocation per request.
            subject: record.id().0.clone(),
            kind: credential.kind(),
            record,
            issuer: None,
            scopes,
            credential,
            credential_expires: None,
            credential_issued_at: None,
            tier,
        }
    }

    /// A principal whose effective scopes are `credential_scopes` ∩ the client's
    /// ceiling.
    pub fn with_credential_scopes(
        record: Arc<ClientRecord>,
        credential: CredentialInfo,
        credential_scopes: &ScopeSet,
        tier: Tier,
    ) -> Self {
        let scopes = credential_scopes.intersection(record.scopes());
        Self::new(record, credential, scopes, tier)
    }

    /// Sets the issuer (the `iss` of a token).
    #[must_use]
    pub fn issuer(mut self, issuer: impl Into<Arc<str>>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets the subject (the `sub` of a token, a SPIFFE id, ...). Defaults to the
    /// client id.
    #[must_use]
    pub fn subject(mut self, subject: impl Into<Arc<str>>) -> Self {
        self.subject = subject.into();
        self
    }

    /// Sets when the presented credential expires (a token's `exp`).
    #[must_use]
    pub fn credential_expires(mut self, at: SystemTime) -> Self {
        self.credential_expires = Some(at);
        self
    }

    /// Sets when the presented credential was issued (a token's `iat`). The risk
    /// layer's RFC 9470 step-up accepts a credential issued within its `max_age`.
    #[must_use]
    pub fn credential_issued_at(mut self, at: SystemTime) -> Self {
        self.credential_issued_at = Some(at);
        self
    }

    /// When the presented credential was issued, if it says.
    pub fn credential_issued(&self) -> Option<SystemTime> {
        self.credential_issued_at
    }

    /// The client id.
    pub fn client_id(&self) -> &ClientId {
        self.record.id()
    }

    /// The inventory record.
    pub fn record(&self) -> &Arc<ClientRecord> {
        &self.record
    }

    /// The identity kind.
    pub fn kind(&self) -> IdentityKind {
        self.kind
    }

    /// The issuer, for token-based identities.
    pub fn issuer_name(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The subject.
    pub fn subject_name(&self) -> &str {
        &self.subject
    }

    /// The owner from the inventory.
    pub fn owner(&self) -> &str {
        self.record.owner()
    }

    /// The purpose from the inventory.
    pub fn purpose(&self) -> &str {
        self.record.purpose()
    }

    /// When the client's registration expires.
    pub fn expires(&self) -> SystemTime {
        self.record.expires()
    }

    /// When the presented credential expires, if it says.
    pub fn credential_expiry(&self) -> Option<SystemTime> {
        self.credential_expires
    }

    /// Effective scopes on this request.
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }

    /// The rate-limit tier name.
    pub fn tier_name(&self) -> &str {
        self.record.tier()
    }

    /// The rate-limit tier quota.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The credential description (never the secret).
    pub fn credential(&self) -> &CredentialInfo {
        &self.credential
    }
}
