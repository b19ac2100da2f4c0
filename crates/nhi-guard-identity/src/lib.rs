//! The identity control of nhi-guard: who is calling.
//!
//! [`IdentityLayer`] verifies the credential a machine client presents and binds it
//! to a governed record of the client inventory
//! ([`ClientRegistry`](nhi_guard_core::ClientRegistry)):
//!
//! - **JWT access tokens** (`Authorization: Bearer`), per RFC 8725 and RFC 9068:
//!   per-issuer algorithm allow-list, each key bound to its algorithm and type
//!   (never `none`, never HMAC), `typ: at+jwt`, `exp` required, `nbf` / `iat` with
//!   leeway, exact `iss` and `aud`, `jku` / `x5u` / `jwk` / `x5c` and `crit`
//!   refused, size and lifetime limits. Keys are static ([`KeySet`]) or fetched by
//!   the JWKS manager ([`RemoteKeys`]: `max-age` / `ETag` refresh, single-flight
//!   refetch on unknown `kid` with a cooldown, stale keys while the issuer is down).
//!   Discovery and key sets are fetched over `https` out of the box ([`HttpFetcher`]:
//!   rustls with the aws-lc-rs provider, the platform's trust anchors honouring
//!   `SSL_CERT_FILE`, extra PEM anchors through [`HttpFetcher::builder`]) or plain
//!   `http` for loopback and in-cluster issuers.
//!   Verified tokens are cached by the SHA-256 of their bytes until `exp`.
//! - **API keys** (`X-API-Key` or `Authorization: ApiKey`), looked up by SHA-256.
//! - **mTLS client certificates** ([`PeerCertificates`] in the request): the SPIFFE
//!   id of an X.509-SVID, and RFC 8705 certificate-bound tokens.
//!
//! Then, on every request, the governance check: the client exists, is active,
//! unexpired and calls from an allowed network. Effective scopes are the token's
//! scopes intersected with the client's ceiling. The [`Principal`] goes into the
//! [`SecurityContext`] and the request's extensions; a refusal is recorded there
//! too (reason, credential fingerprint) and answered with RFC 6750 / RFC 9457 or
//! gRPC `UNAUTHENTICATED`.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{Request, Response, StatusCode};
//! use nhi_guard_core::{InMemoryRegistry, Inventory, Principal, ScopeSet};
//! use nhi_guard_core::registry::ClientRecord;
//! use nhi_guard_identity::IdentityLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let expires = SystemTime::now() + Duration::from_secs(86_400 * 90);
//! let client = ClientRecord::builder("billing-export", "finance@example.com", "Nightly export", expires)
//!     .scopes(ScopeSet::parse("invoices:read").unwrap())
//!     .api_key("nhik_live_4f9c2a7d1e8b")
//!     .build()
//!     .unwrap();
//! let registry = InMemoryRegistry::new(Inventory::builder().client(client).build().unwrap());
//!
//! let layer = IdentityLayer::builder(registry).realm("billing").build().unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(|req: Request<()>| async move {
//!     let who = req.extensions().get::<Principal>().unwrap().client_id().to_string();
//!     Ok::<_, std::convert::Infallible>(Response::new(who))
//! }));
//!
//! let req = Request::get("/").header("x-api-key", "nhik_live_4f9c2a7d1e8b").body(()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//!
//! let res = svc.oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="billing""#);
//! # });
//! ```
//!
//! A customised setup trusting a token issuer whose keys come from its JWKS,
//! discovered over https (the platform's trust anchors; see [`HttpFetcher::builder`]
//! to add a private CA):
//!
//! ```no_run
//! use nhi_guard_core::{InMemoryRegistry, Inventory};
//! use nhi_guard_identity::{Credential, IdentityLayer, Issuer, JwksConfig, RemoteKeys};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = InMemoryRegistry::from_toml_file("clients.toml")?;
//! let keys = RemoteKeys::discover("https://auth.example.com", JwksConfig::default()).await?;
//! keys.refresh().await?;
//! keys.spawn_refresh();
//! let layer = IdentityLayer::builder(registry)
//!     .issuer(Issuer::new("https://auth.example.com").audience("orders-api").remote_keys(keys))
//!     .order([Credential::Bearer, Credential::ClientCertificate])
//!     .build()?;
//! # let _ = layer; Ok(()) }
//! ```
//!
//! Cargo features: `demo` (`DemoIssuer`: a throw-away
//! signing key for examples) and `rustls` (`AddPeerCertificatesLayer`: the client
//! chain of a tokio-rustls server connection into each request). TLS for fetching
//! keys needs no feature.

mod cache;
#[cfg(feature = "demo")]
mod demo;
pub mod jwks;
mod jwt;
pub mod keys;
mod layer;
pub mod mtls;
pub mod revocation;
mod service;
pub mod ungoverned;

#[cfg(feature = "demo")]
pub use crate::demo::{DemoError, DemoIssuer};
pub use crate::jwks::{HttpFetcher, HttpFetcherBuilder, JwksConfig, JwksFetcher, RemoteKeys};
pub use crate::jwt::{ClientIdClaim, Issuer, KeySource, MAX_LEEWAY};
pub use crate::keys::{KeySet, VerifyingKey};
pub use crate::layer::{ConfigError, Credential, IdentityLayer, IdentityLayerBuilder};
pub use crate::mtls::{CertificateDetails, PeerCertificates};
pub use crate::revocation::{Revocation, Revocations, Revoked};
pub use crate::service::{IdentityService, ResponseFuture};
pub use crate::ungoverned::{UngovernedClients, UngovernedSnapshot};
pub use jsonwebtoken::Algorithm;
/// The rustls version of [`HttpFetcher::with_tls`] and the mTLS glue.
pub use rustls;

pub use nhi_guard_core::{Principal, SecurityContext};

/// SHA-256, as everywhere in the guard (`nhi_guard_core::digest::sha256`).
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    // The same implementation as the context's credential digest table.
    nhi_guard_core::digest::sha256(data)
}
