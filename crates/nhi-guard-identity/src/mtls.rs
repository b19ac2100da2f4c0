//! Client certificates (mTLS): the request extension carrying the peer's chain,
//! SPIFFE X.509-SVID identity extraction, and the RFC 8705 thumbprint.
//!
//! The TLS acceptor verifies the chain against its trust anchors (for rustls, a
//! `WebPkiClientVerifier`); this layer reads the already verified chain from the
//! request's extensions. With the `rustls` feature, [`PeerCertificates::from_tls_stream`]
//! and [`AddPeerCertificatesLayer`] do the plumbing for a tokio-rustls server.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The client certificate chain of the connection a request came on, leaf first,
/// DER-encoded, as verified by the TLS acceptor. Insert it into each request's
/// extensions (see [`AddPeerCertificatesLayer`]).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerCertificates {
    chain: Arc<[Bytes]>,
}

impl fmt::Debug for PeerCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerCertificates")
            .field("len", &self.chain.len())
            .field("leaf_x5t_s256", &self.leaf().map(thumbprint))
            .finish()
    }
}

impl PeerCertificates {
    /// A chain of DER certificates, leaf first. `None` when empty.
    pub fn new<I, C>(chain: I) -> Option<Self>
    where
        I: IntoIterator<Item = C>,
        C: Into<Bytes>,
    {
        let chain: Arc<[Bytes]> = chain.into_iter().map(Into::into).collect();
        (!chain.is_empty()).then_some(Self { chain })
    }

    /// The leaf (end-entity) certificate, DER.
    pub fn leaf(&self) -> Option<&[u8]> {
        self.chain.first().map(|b| &b[..])
    }

    /// The whole chain, leaf first.
    pub fn chain(&self) -> &[Bytes] {
        &self.chain
    }

    /// The client chain of a tokio-rustls server connection, if the client sent one.
    #[cfg(feature = "rustls")]
    pub fn from_tls_stream<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> Option<Self> {
        let (_, conn) = stream.get_ref();
        let certs = conn.peer_certificates()?;
        Self::new(certs.iter().map(|c| Bytes::copy_from_slice(c.as_ref())))
    }
}

/// RFC 8705 `x5t#S256`: base64url SHA-256 of the DER certificate.
pub fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(crate::sha256(der))
}

/// Why a client certificate yields no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertError {
    Unparsable,
    IsCa,
    SpiffeIdCount,
    InvalidSpiffeId,
}

impl CertError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Unparsable => "certificate_malformed",
            Self::IsCa => "certificate_is_ca",
            Self::SpiffeIdCount => "certificate_spiffe_id_count",
            Self::InvalidSpiffeId => "certificate_spiffe_id_invalid",
        }
    }

    pub(crate) fn detail(self) -> &'static str {
        match self {
            Self::Unparsable => "The client certificate cannot be parsed",
            Self::IsCa => "The client certificate is a CA certificate, not a workload certificate",
            Self::SpiffeIdCount => "The client certificate must carry exactly one URI SAN (SPIFFE id)",
            Self::InvalidSpiffeId => "The client certificate's URI SAN is not a valid SPIFFE id",
        }
    }
}

/// What the layer read from a client certificate that carries no SPIFFE id, for a
/// [certificate mapper](crate::IdentityLayerBuilder::certificate_mapper).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateDetails {
    /// The subject distinguished name (RFC 4514 form, e.g. `CN=billing,O=Example`).
    pub subject: String,
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// RFC 8705 `x5t#S256` thumbprint of the certificate.
    pub thumbprint: String,
}

/// How a client certificate identifies its workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertIdentity {
    /// An X.509-SVID: its SPIFFE id, matched against `spiffe_ids`.
    Spiffe(String),
    /// No URI SAN: the details, for the configured mapper.
    Other(CertificateDetails),
}

/// Reads the identity of a leaf certificate. X.509-SVID rules: the certificate is
/// not a CA (no `cA`, no `keyCertSign` / `cRLSign`); with URI SANs there must be
/// exactly one, a valid `spiffe://` id. A certificate without URI SAN yields its
/// details for a subject mapping.
pub(crate) fn identify(leaf_der: &[u8]) -> Result<CertIdentity, CertError> {
    let (_, cert) = X509Certificate::from_der(leaf_der).map_err(|_| CertError::Unparsable)?;
    if let Ok(Some(bc)) = cert.basic_constraints()
        && bc.value.ca
    {
        return Err(CertError::IsCa);
    }
    if let Ok(Some(ku)) = cert.key_usage()
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(CertError::IsCa);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| CertError::Unparsable)?;
    let names = san.iter().flat_map(|s| s.value.general_names.iter());
    let uris: Vec<&str> = names
        .clone()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Ok(CertIdentity::Other(CertificateDetails {
            subject: cert.subject().to_string(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            dns_names: names
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect(),
            thumbprint: thumbprint(leaf_der),
        })),
        [uri] => {
            nhi_guard_core::registry::validate_spiffe_id(uri).map_err(|_| CertError::InvalidSpiffeId)?;
            Ok(CertIdentity::Spiffe((*uri).to_owned()))
        }
        _ => Err(CertError::SpiffeIdCount),
    }
}

#[cfg(feature = "rustls")]
pub use glue::{AddPeerCertificates, AddPeerCertificatesLayer};

#[cfg(feature = "rustls")]
mod glue {
    use std::task::{Context, Poll};

    use super::PeerCertificates;

    /// Inserts one connection's [`PeerCertificates`] into every request served on
    /// it. Build one per accepted connection:
    ///
    /// ```ignore
    /// let tls = acceptor.accept(tcp).await?;
    /// let certs = PeerCertificates::from_tls_stream(&tls);
    /// let svc = AddPeerCertificatesLayer::new(certs).layer(app.clone());
    /// ```
    #[derive(Debug, Clone)]
    pub struct AddPeerCertificatesLayer {
        certs: Option<PeerCertificates>,
    }

    impl AddPeerCertificatesLayer {
        /// For a connection that presented `certs` (or none).
        pub fn new(certs: Option<PeerCertificates>) -> Self {
            Self { certs }
        }
    }

    impl<S> tower_layer::Layer<S> for AddPeerCertificatesLayer {
        type Service = AddPeerCertificates<S>;
        fn layer(&self, inner: S) -> Self::Service {
            AddPeerCertificates {
                inner,
                certs: self.certs.clone(),
            }
        }
    }

    /// The service of [`AddPeerCertificatesLayer`].
    #[derive(Debug, Clone)]
    pub struct AddPeerCertificates<S> {
        inner: S,
        certs: Option<PeerCertificates>,
    }

    impl<S, B> tower_service::Service<http::Request<B>> for AddPeerCertificates<S>
    where
        S: tower_service::Service<http::Request<B>>,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
            if let Some(c) = &self.certs {
                req.extensions_mut().insert(c.clone());
            }
            self.inner.call(req)
        }
    }
}
