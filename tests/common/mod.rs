//! Support shared by the gateway's whole-stack tests over real sockets
//! (`gateway_https.rs`, `gateway_nginx.rs`): the demo gateway built from
//! `NHI_GUARD_*` variables exactly as `main` builds it (`config::from_lookup`,
//! `guard::load_registry`, `guard::build`), served by `axum::serve` on 127.0.0.1:0
//! with each connection's peer address, and called with hyper's client.
//!
//! The including test crate declares the gateway's `app`, `config` and `guard`
//! modules (`#[path = "../examples/gateway/..."]`) at its root.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nhi_guard::core::clock::ManualClock;
use serde_json::Value;

use crate::{app, config, guard};

pub(crate) mod nginx;

/// A variable lookup over fixed pairs, in place of the process environment.
pub(crate) fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

/// One `[[client]]` entry of an inventory file: scope `orders:read`, registered
/// until 2099, with `extra` TOML lines (`networks = [...]`, `issuers = [...]`,
/// `api_keys = [...]`).
pub(crate) fn client_toml(id: &str, extra: &[String]) -> String {
    let mut entry = format!(
        "[[client]]\nid = \"{id}\"\nowner = \"qa@example.com\"\npurpose = \"Whole-stack tests\"\n\
         expires = \"2099-01-01T00:00:00Z\"\nscopes = [\"orders:read\"]\n"
    );
    for line in extra {
        entry.push_str(line);
        entry.push('\n');
    }
    entry.push('\n');
    entry
}

/// An axum router served on 127.0.0.1:0 with each connection's peer address
/// (`ConnectInfo<SocketAddr>`, as the gateway's `main` serves it); the accept loop
/// stops when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start(router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .expect("serve");
        });
        Self { addr, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The demo gateway, configured by `NHI_GUARD_*` variables, serving over HTTP.
pub(crate) struct Gateway {
    pub(crate) guard: guard::Guard,
    pub(crate) server: Server,
    /// The time of every control: stands still unless advanced.
    pub(crate) clock: ManualClock,
    audit_log: Option<PathBuf>,
}

impl Gateway {
    /// Builds the gateway as `main` does and serves it.
    ///
    /// # Errors
    /// The start-up error the gateway would print (naming the variable at fault).
    pub(crate) async fn start(vars: &[(&str, &str)]) -> Result<Self, String> {
        let config = config::from_lookup(lookup(vars))?;
        let registry = guard::load_registry(&config)?;
        let clock = ManualClock::now();
        let guard = guard::build(
            &config,
            registry,
            "http://127.0.0.1:8080",
            Arc::new(clock.clone()),
        )
        .await?;
        let state = guard.app_state(None);
        let router = app::routes(state).layer(guard.layer.clone());
        let server = Server::start(router).await;
        Ok(Self {
            guard,
            server,
            clock,
            audit_log: config.audit_log.clone(),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn base(&self) -> String {
        self.server.base()
    }

    /// Stops accepting, writes every queued audit record and the final checkpoint,
    /// checks the chain and returns the request records (`NHI_GUARD_AUDIT_LOG` must
    /// have been set).
    pub(crate) async fn finish(self) -> Vec<Value> {
        drop(self.server);
        self.guard.audit.shutdown().await.expect("audit log flushed");
        let path = self.audit_log.expect("NHI_GUARD_AUDIT_LOG was set");
        audit_requests(&path)
    }
}

/// The request records of a sealed, intact audit log.
pub(crate) fn audit_requests(path: &Path) -> Vec<Value> {
    let verification = nhi_guard::audit::verify_file(path).expect("readable audit log");
    assert!(verification.is_intact(), "{:?}", verification.first_break);
    assert!(verification.is_sealed(), "{:?}", verification.tail);
    std::fs::read_to_string(path)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|r| r.get("api").is_some())
        .collect()
}

/// Each request record's client address and response status, in order.
pub(crate) fn placed(records: &[Value]) -> Vec<(&str, u64)> {
    records
        .iter()
        .map(|r| {
            (
                r["src_endpoint"]["ip"].as_str().unwrap_or_default(),
                r["api"]["response"]["code"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

pub(crate) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A hyper client; with `local`, its connections leave from that address (any
/// 127.0.0.0/8 address works on Linux loopback).
pub(crate) fn http_client(local: Option<IpAddr>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(local);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What a client sees of one response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub(crate) body: Value,
}

impl Reply {
    /// A header as text (empty when absent).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
            .unwrap_or_default()
    }
}

/// `GET url` with `headers` (a name may repeat).
pub(crate) async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.expect("response body").to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}
