//! The demo issuer: its JWKS served over HTTP and fetched by the JWKS manager, and
//! its RFC 9068 tokens accepted by the layer (static and remote keys).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::*;
use http::StatusCode;
use nhi_guard_identity::{DemoIssuer, IdentityLayer, Issuer, JwksConfig, RemoteKeys};
use tower::{Layer, ServiceExt, service_fn};

async fn call(layer: &IdentityLayer, token: &str) -> (StatusCode, String) {
    let res = layer
        .layer(service_fn(echo))
        .oneshot(bearer(token))
        .await
        .unwrap();
    let status = res.status();
    (status, body_string(res.into_body()).await)
}

#[tokio::test]
async fn demo_tokens_verify_with_static_and_served_keys() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let demo = DemoIssuer::new(base.clone(), AUD).unwrap();
    let jwks = demo.jwks_json();
    let app = Router::new().route("/.well-known/jwks.json", get(move || async move { jwks }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let token = demo.mint("svc-a", "orders:read orders:admin", Duration::from_secs(300));
    let header: serde_json::Value = {
        use base64::Engine as _;
        let h = token.split('.').next().unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");

    let static_layer = IdentityLayer::builder(registry())
        .issuer(demo.issuer())
        .build()
        .unwrap();
    assert_eq!(
        call(&static_layer, &token).await,
        (StatusCode::OK, "svc-a orders:read".into())
    );

    let remote = RemoteKeys::new(&format!("{base}/.well-known/jwks.json"), JwksConfig::default()).unwrap();
    remote.refresh().await.unwrap();
    let remote_layer = IdentityLayer::builder(registry())
        .issuer(Issuer::new(demo.iss()).audience(AUD).remote_keys(remote))
        .build()
        .unwrap();
    assert_eq!(call(&remote_layer, &token).await.0, StatusCode::OK);

    // Another demo issuer's token (same iss, other key) is refused.
    let impostor = DemoIssuer::new(base.clone(), AUD).unwrap();
    let forged = impostor.mint("svc-a", "orders:read", Duration::from_secs(300));
    assert_eq!(call(&static_layer, &forged).await.0, StatusCode::UNAUTHORIZED);
    assert!(!format!("{demo:?}").contains(&token));
}
