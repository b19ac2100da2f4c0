//! A real mTLS handshake: a tokio-rustls server verifying client certificates
//! against a CA (all generated with rcgen), the `rustls` glue putting the client
//! chain into each request, and the identity layer mapping the SPIFFE id to the
//! inventory. Clients connect with and without a certificate.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nhi_guard_core::Principal;
use nhi_guard_identity::mtls::AddPeerCertificatesLayer;
use nhi_guard_identity::{IdentityLayer, PeerCertificates};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer as CaIssuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tower::{Layer, ServiceExt, service_fn};

const SPIFFE: &str = "spiffe://example.org/ns/prod/sa/worker";

struct Pki {
    ca: CertificateDer<'static>,
    issuer: CaIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().der().clone();
        Self {
            ca,
            issuer: CaIssuer::new(params, key),
        }
    }

    fn leaf(
        &self,
        dns: &[&str],
        uri: Option<&str>,
        eku: ExtendedKeyUsagePurpose,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert, key)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        Arc::new(roots)
    }
}

async fn handler(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let who = req
        .extensions()
        .get::<Principal>()
        .map(|p| format!("{} {}", p.client_id(), p.subject_name()))
        .unwrap_or_default();
    Ok(Response::new(who))
}

async fn start_server(pki: &Pki) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(pki.roots(), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let (cert, key) = pki.leaf(&["localhost"], None, ExtendedKeyUsagePurpose::ServerAuth);
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let identity = IdentityLayer::builder(registry()).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let identity = identity.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let certs = PeerCertificates::from_tls_stream(&tls);
                let svc = AddPeerCertificatesLayer::new(certs).layer(identity.layer(service_fn(handler)));
                let hyper_svc = hyper::service::service_fn(move |req| svc.clone().oneshot(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), hyper_svc)
                    .await;
            });
        }
    });
    addr
}

async fn get(
    addr: SocketAddr,
    pki: &Pki,
    client_cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> (StatusCode, String) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let config = match client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/orders")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn workload_certificate_over_a_real_tls_connection() {
    let pki = Pki::new();
    let addr = start_server(&pki).await;

    let worker = pki.leaf(&[], Some(SPIFFE), ExtendedKeyUsagePurpose::ClientAuth);
    let (status, body) = get(addr, &pki, Some(worker)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("svc-spiffe {SPIFFE}"));

    let stranger = pki.leaf(
        &[],
        Some("spiffe://example.org/ns/prod/sa/stranger"),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (status, body) = get(addr, &pki, Some(stranger)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("certificate_unknown"), "{body}");

    let (status, _) = get(addr, &pki, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The JWKS manager over https with a caller's rustls configuration (`HttpFetcher::with_tls`),
/// against a TLS issuer whose certificate chains to the test CA.
#[tokio::test]
async fn jwks_fetched_over_https() {
    use nhi_guard_identity::{HttpFetcher, JwksConfig, RemoteKeys};

    let pki = Pki::new();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.issuer).unwrap().der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let signing = TestKey::es256("https-key");
    let doc = jwks(&[&signing]).to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let doc = doc.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let doc = doc.clone();
                    async move {
                        let body = if req.uri().path() == "/jwks.json" {
                            doc
                        } else {
                            String::new()
                        };
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    let fetcher = Arc::new(HttpFetcher::with_tls(
        std::time::Duration::from_secs(5),
        Arc::new(client),
    ));
    let url = format!("https://{addr}/jwks.json");
    let remote = RemoteKeys::with_fetcher(&url, JwksConfig::default(), fetcher).unwrap();
    remote.refresh().await.unwrap();
    assert!(remote.keys().get("https-key").is_some());

    // The default fetcher (the platform's anchors, not the test CA) refuses the
    // issuer's certificate with a clear error; tests/jwks_https.rs covers the rest.
    let plain = RemoteKeys::new(&url, JwksConfig::default()).unwrap();
    let err = plain.refresh().await.unwrap_err();
    assert!(err.to_string().contains("not trusted"), "{err}");

    // A fetcher trusting another CA refuses the issuer's certificate.
    let other = Pki::new();
    let client = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(other.roots())
        .with_no_client_auth();
    let fetcher = Arc::new(HttpFetcher::with_tls(
        std::time::Duration::from_secs(5),
        Arc::new(client),
    ));
    let untrusted = RemoteKeys::with_fetcher(&url, JwksConfig::default(), fetcher).unwrap();
    assert!(untrusted.refresh().await.is_err());
}
