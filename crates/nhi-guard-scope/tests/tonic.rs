//! The scope layer in front of a real tonic server (the gRPC health service from
//! `tonic-health`), called by a real tonic client over loopback: method paths
//! `/grpc.health.v1.Health/Check` and `.../Watch`, gRPC status codes.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use nhi_guard_core::ClientId;
use nhi_guard_scope::usage::InMemoryUsageStore;
use nhi_guard_scope::{Policy, Require, ScopeLayer};
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::util::MapRequestLayer;

async fn start(layer: ScopeLayer) -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind loopback");
    let addr = incoming.local_addr().expect("local addr");
    tokio::spawn(async move {
        // Outermost first: the identity stand-in, then the scope check.
        Server::builder()
            .layer(MapRequestLayer::new(common::identify))
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .expect("server");
        drop(reporter);
    });
    addr
}

async fn client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

fn request(who: Option<&str>, service: &str) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    if let Some(who) = who {
        req.metadata_mut()
            .insert("x-test-client", who.parse().expect("ascii"));
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_are_protected_by_path() {
    let store = Arc::new(InMemoryUsageStore::new());
    let policy = Policy::builder()
        .grpc(
            "/grpc.health.v1.Health/Check",
            Require::any_of("health:read admin"),
        )
        .grpc_service("grpc.health.v1.Health", Require::all_of("admin"))
        .build()
        .expect("policy");
    let addr = start(ScopeLayer::new(policy).usage_store(store.clone())).await;
    let mut health = client(addr).await;

    // Holding the scope: the real service answers.
    let res = health
        .check(request(Some("monitor"), "orders"))
        .await
        .expect("allowed");
    assert_eq!(res.into_inner().status, ServingStatus::Serving as i32);

    // Known client without the scope: PERMISSION_DENIED.
    let status = health
        .check(request(Some("billing-export"), "orders"))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "The access token lacks a required scope");

    // No principal: UNAUTHENTICATED.
    let status = health.check(request(None, "orders")).await.expect_err("denied");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Watch falls to the service-wide rule: admin only.
    let status = health
        .watch(request(Some("monitor"), "orders"))
        .await
        .expect_err("monitor may not watch");
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut stream = health
        .watch(request(Some("ops-console"), "orders"))
        .await
        .expect("admin may watch")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("one message");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // The usage store saw the scopes exercised and refused.
    let monitor = store.usage_now(&ClientId::from("monitor"));
    assert_eq!(monitor.used["health:read"].count, 1);
    assert_eq!(monitor.denied["admin"].count, 1);
    let billing = store.usage_now(&ClientId::from("billing-export"));
    assert_eq!(
        billing.denied.keys().collect::<Vec<_>>(),
        ["admin", "health:read"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_layer_on_a_tonic_service() {
    let layer = ScopeLayer::require(Require::all_of("health:read")).expect("valid");
    let addr = start(layer).await;
    let mut health = client(addr).await;
    assert!(health.check(request(Some("monitor"), "")).await.is_ok());
    let status = health
        .check(request(Some("inventory-sync"), ""))
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied);
}
