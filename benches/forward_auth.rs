//! The latency of one Envoy `ext_authz` `Check` call, per call, over loopback gRPC
//! with a real tonic client, against a bare `Check` service (always `OK`, no
//! controls) in the same run:
//!
//! ```text
//! cargo bench --bench forward_auth
//! ```
//!
//! - `Check: bare service`: the baseline, gRPC and HTTP/2 over loopback only;
//! - `Check: full stack without audit` and `Check: full stack`: the `authz_server`
//!   example's service over the full stack of the `stack` bench (the same token,
//!   route table and controls; audit to a JSON Lines file in the second), for
//!   `GET /orders`, allowed.
//!
//! Each server runs on its own one-worker tokio runtime (as in production, apart from
//! the client); the client calls from the bench thread's runtime, one call at a time.
//! The table after the run gives each row's ratio to the bare service and the
//! nanoseconds the decision adds. The requests per second through NGINX with and
//! without `auth_request` are in the `throughput` bench.

#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/authz_server/authz.rs"]
#[allow(dead_code, unreachable_pub)]
mod authz;
mod common;
#[path = "../examples/authz_server/envoy.rs"]
#[allow(dead_code, unreachable_pub)]
mod envoy;
#[path = "../examples/edge_proxy/proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod proxy;

use std::time::SystemTime;

use common::server::Server;
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{self as core_v3, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::rpc;

const GROUP: &str = "forward_auth";
const BARE: &str = "Check: bare service";

/// Says yes to everything: the gRPC floor.
struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            ..Default::default()
        }))
    }
}

/// `GET /orders` with the bench's token, from a downstream client, as Envoy asks.
fn check_request(auth: &str) -> CheckRequest {
    let headers = [
        (":authority", "orders.example"),
        (":method", "GET"),
        (":path", "/orders"),
        ("authorization", auth),
        ("user-agent", "bench/1"),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(core_v3::Address {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(PortSpecifier::PortValue(40_000)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    host: "orders.example".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn bench(c: &mut Criterion) {
    let started = SystemTime::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = common::registry();
    let (auth, keys, _) = common::token_and_keys();
    let dir = nhi_guard_testkit::temp::TempDir::per_process("nhi-guard-bench-forward-auth");
    let (audit, audit_handle) = common::audit(&dir, "check.jsonl");
    let request = check_request(auth.to_str().unwrap());

    let servers = [
        (
            BARE,
            Server::start(tonic::service::Routes::new(AuthorizationServer::new(AlwaysOk)).into_axum_router()),
        ),
        (
            "Check: full stack without audit",
            Server::start(envoy::ExtAuthz::router(authz::decider(common::full_stack(
                &registry, &keys, None,
            )))),
        ),
        (
            "Check: full stack",
            Server::start(envoy::ExtAuthz::router(authz::decider(common::full_stack(
                &registry,
                &keys,
                Some(audit),
            )))),
        ),
    ];
    let mut group = c.benchmark_group(GROUP);
    for (name, server) in &servers {
        let mut client = rt
            .block_on(AuthorizationClient::connect(format!("http://{}", server.addr)))
            .unwrap();
        let res = rt.block_on(client.check(request.clone())).unwrap().into_inner();
        assert_eq!(
            res.status.map(|s| s.code),
            Some(0),
            "{name}: the benchmark must measure the allow path"
        );
        group.bench_function(*name, |b| {
            b.iter(|| rt.block_on(client.check(request.clone())).unwrap());
        });
    }
    group.finish();
    let names: Vec<&str> = servers.iter().map(|(name, _)| *name).collect();
    drop(servers);
    rt.block_on(audit_handle.shutdown()).unwrap();
    drop(dir);
    common::report::summary(
        GROUP,
        BARE,
        "forward_auth: Envoy Check for GET /orders (valid RS256 token), per call over loopback gRPC",
        &names,
        started,
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
