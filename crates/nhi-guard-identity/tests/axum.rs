//! The layer in a real axum app served on 127.0.0.1:0, with the core extractors
//! for `Principal` and `Option<Principal>`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use axum::Router;
use axum::routing::get;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nhi_guard_core::Principal;
use nhi_guard_identity::{Algorithm, IdentityLayer, Issuer, KeySet};

async fn me(principal: Option<Principal>) -> String {
    principal.map_or_else(
        || "anonymous".to_owned(),
        |p| format!("{} {}", p.client_id(), p.scopes()),
    )
}

async fn orders(principal: Principal) -> String {
    format!("orders for {}", principal.client_id())
}

#[tokio::test]
async fn axum_app_with_required_and_optional_identity() {
    let key = TestKey::ed25519("k1");
    let (set, _) = KeySet::from_jwks(jwks(&[&key]).to_string().as_bytes()).unwrap();
    let issuer = Issuer::new(ISS)
        .audience(AUD)
        .algorithms([Algorithm::EdDSA])
        .static_keys(set);
    let required = IdentityLayer::builder(registry())
        .issuer(issuer.clone())
        .build()
        .unwrap();
    let optional = IdentityLayer::builder(registry())
        .issuer(issuer)
        .optional(true)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/orders", get(orders))
        .layer(required)
        .merge(Router::new().route("/me", get(me)).layer(optional));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let call = |path: &str, token: Option<&str>| {
        let mut req = Request::get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let fut = client.request(req.body(Empty::new()).unwrap());
        async move {
            let res = fut.await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let token = key.sign(&claims("svc-a", "orders:read"));
    assert_eq!(
        call("/orders", Some(&token)).await,
        (StatusCode::OK, "orders for svc-a".into())
    );
    let (status, body) = call("/orders", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("credential_missing"));
    assert_eq!(call("/me", None).await, (StatusCode::OK, "anonymous".into()));
    assert_eq!(
        call("/me", Some(&token)).await,
        (StatusCode::OK, "svc-a orders:read".into())
    );
    assert_eq!(call("/me", Some("garbage")).await.0, StatusCode::UNAUTHORIZED);
}
