//! TLS for tests that need a real `https` peer (feature `tls`): a certificate
//! authority made in the test ([`TestCa`]) and a TLS front that terminates `https`
//! on 127.0.0.1 and forwards the bytes to a plain TCP server ([`TlsFront`]).

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority made for one test.
pub struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose certificate has the common name `name`.
    ///
    /// # Panics
    /// When rcgen cannot make the key or the certificate.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM: what a client is told to trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A TLS server configuration (aws-lc-rs) with a certificate for 127.0.0.1
    /// and `localhost` signed by this CA.
    ///
    /// # Panics
    /// When rcgen or rustls refuse the certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let (cert, key) = self.leaf(&[ExtendedKeyUsagePurpose::ServerAuth]);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server certificate");
        Arc::new(config)
    }

    /// A server certificate for 127.0.0.1 and `localhost` signed by this CA, and
    /// its private key, both PEM: for servers that read files (`redis-server`).
    /// It may also authenticate as a client, as a Redis Cluster node does to the
    /// others over its TLS cluster bus.
    ///
    /// # Panics
    /// When rcgen refuses the certificate.
    pub fn server_pem(&self) -> (String, String) {
        let (cert, key) = self.leaf(&[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]);
        (cert.pem(), key.serialize_pem())
    }

    /// Writes [`TestCa::server_pem`]'s certificate and key and this CA's
    /// certificate to `dir` as `server.pem`, `server.key` and `ca.pem`; their
    /// paths, in that order.
    ///
    /// # Panics
    /// When a file cannot be written.
    pub fn write_server_files(&self, dir: &std::path::Path) -> [std::path::PathBuf; 3] {
        let (cert, key) = self.server_pem();
        let paths = [dir.join("server.pem"), dir.join("server.key"), dir.join("ca.pem")];
        for (path, pem) in paths.iter().zip([cert.as_str(), key.as_str(), self.pem()]) {
            std::fs::write(path, pem).expect("a PEM file");
        }
        paths
    }

    fn leaf(&self, usages: &[ExtendedKeyUsagePurpose]) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf parameters");
        params.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().expect("DNS name")),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        (cert, key)
    }
}

/// `https` on 127.0.0.1:PORT in front of a plain TCP server: each connection's TLS
/// is terminated with a certificate of the CA, and its bytes are copied both ways
/// to the upstream. Stops, with its connections, when dropped.
#[derive(Debug)]
pub struct TlsFront {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Starts the front for `upstream` with a certificate of `ca`.
    ///
    /// # Panics
    /// When 127.0.0.1:0 cannot be bound.
    pub async fn start(ca: &TestCa, upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let task = tokio::spawn(async move {
            // Dropped (every connection aborted) when the accept loop is aborted.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // A client refusing the certificate ends here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Self { addr, task }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
