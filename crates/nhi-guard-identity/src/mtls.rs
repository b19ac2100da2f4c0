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

/// The SPIFFE id of an X.509-SVID leaf: exactly one URI SAN, a valid
/// `spiffe://` id, and the certificate is not a CA (no `cA`, no `keyCertSign`).
pub(crate) fn spiffe_id(leaf_der: &[u8]) -> Result<String, CertError> {
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
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(CertError::SpiffeIdCount);
    };
    nhi_guard_core::registry::validate_spiffe_id(uri).map_err(|_| CertError::InvalidSpiffeId)?;
    Ok((*uri).to_owned())
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
