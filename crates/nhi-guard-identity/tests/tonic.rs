//! End to end over gRPC: a real tonic server (the standard health service) behind
//! `IdentityLayer` on 127.0.0.1:0, called by a real tonic `HealthClient`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use nhi_guard_identity::{Algorithm, IdentityLayer, Issuer, KeySet};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_check_ok_with_a_token_unauthenticated_without() {
    let key = TestKey::es256("k1");
    let (set, _) = KeySet::from_jwks(jwks(&[&key]).to_string().as_bytes()).unwrap();
    let identity = IdentityLayer::builder(registry())
        .issuer(
            Issuer::new(ISS)
                .audience(AUD)
                .algorithms([Algorithm::ES256])
                .static_keys(set),
        )
        .build()
        .unwrap();

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(identity)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });

    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    let token = key.sign(&claims("svc-a", "orders:read"));
    let mut req = Request::new(HealthCheckRequest {
        service: "orders".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let res = client.check(req).await.unwrap();
    assert_eq!(res.into_inner().status, ServingStatus::Serving as i32);

    let err = client
        .check(Request::new(HealthCheckRequest {
            service: "orders".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "This endpoint requires a credential");

    let mut req = Request::new(HealthCheckRequest {
        service: "orders".into(),
    });
    let mut forged = token.clone();
    forged.truncate(forged.len() - 8);
    forged.push_str("AAAAAAAA");
    req.metadata_mut()
        .insert("authorization", format!("Bearer {forged}").parse().unwrap());
    let err = client.check(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "The access token's signature is invalid");
}
