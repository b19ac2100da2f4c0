//! A gRPC service behind the whole nhi-guard stack: `cargo run --example tonic_grpc`.
//!
//! The standard gRPC health service (`grpc.health.v1.Health`, from `tonic-health`,
//! so nothing needs protoc) is served on 127.0.0.1 behind the same
//! `NhiGuard::builder` stack the HTTP gateway uses — audit, identity, risk, rate
//! limit, scope — added with `Server::builder().layer(guard)`. Per-method scope
//! rules: `Check` needs `health:read`, every other method of the service
//! (`Watch`) needs `health:watch`. A client in the same program then makes calls
//! that end in each gRPC status a protected service answers, prints them with the
//! audit record each call produced, and exits 0 when every status is the expected
//! one (1 otherwise).
//!
//! The client inventory is built in code; tokens come from an in-process demo
//! issuer (`DemoIssuer`, feature `demo` of `nhi-guard-identity`), never from a
//! real one.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nhi_guard::audit::{AuditEntry, AuditHandle, AuditLayer, AuditWriter, ChannelSink, RecordKind};
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, Tier};
use nhi_guard::identity::{DemoIssuer, IdentityLayer};
use nhi_guard::ratelimit::{Limit, RateLimitLayer};
use nhi_guard::risk::RiskLayer;
use nhi_guard::scope::{Policy, Require, ScopeLayer};
use nhi_guard::{NhiGuard, NhiGuardLayer, ScopeSet};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ISSUER: &str = "https://issuer.example.test";
const AUDIENCE: &str = "health-grpc";

/// Two governed clients: a monitor that may only call `Check`, on a small tier
/// (2 calls a second, bursts of 5), and an operations console that may also
/// `Watch`.
fn inventory() -> Result<Inventory, String> {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 90);
    let client = |id: &str, purpose: &str, scopes: &str, tier: &str| {
        let scopes = ScopeSet::parse(scopes).map_err(|e| format!("{id}: {e}"))?;
        ClientRecord::builder(id, "platform-team@example.com", purpose, expires)
            .scopes(scopes)
            .tier(tier)
            .build()
            .map_err(|e| format!("{id}: {e}"))
    };
    Inventory::builder()
        .tier(
            "small",
            Tier {
                per_second: 2,
                burst: 5,
            },
        )
        .tier(
            "standard",
            Tier {
                per_second: 50,
                burst: 100,
            },
        )
        .client(client(
            "uptime-monitor",
            "Polls service health",
            "health:read",
            "small",
        )?)
        .client(client(
            "ops-console",
            "Streams health changes to the on-call dashboard",
            "health:read health:watch",
            "standard",
        )?)
        .build()
        .map_err(|e| format!("inventory: {e}"))
}

/// The whole stack, configured for the health service.
fn guard(
    registry: Arc<InMemoryRegistry>,
    demo: &DemoIssuer,
    sink: ChannelSink,
) -> Result<(NhiGuardLayer, AuditHandle), String> {
    let (writer, audit) = AuditWriter::builder()
        .spawn(sink)
        .map_err(|e| format!("audit writer: {e}"))?;
    let policy = Policy::builder()
        .grpc("/grpc.health.v1.Health/Check", Require::all_of("health:read"))
        .grpc_service("grpc.health.v1.Health", Require::all_of("health:watch"))
        .build()
        .map_err(|e| format!("scope policy: {e}"))?;
    let rate_limit = RateLimitLayer::new()
        .limit(Limit::per_client("per-client"))
        .map_err(|e| format!("rate limit: {e}"))?;
    let layer = NhiGuard::builder(registry.clone())
        .realm("health-grpc")
        .audit(AuditLayer::new(writer).service_name("health-grpc"))
        .identity(IdentityLayer::builder(registry).issuer(demo.issuer()))
        .risk(RiskLayer::new())
        .rate_limit(rate_limit)
        .scope(ScopeLayer::new(policy))
        .build()
        .map_err(|e| format!("stack: {e}"))?;
    Ok((layer, audit))
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::Unavailable => "UNAVAILABLE",
        Code::Internal => "INTERNAL",
        _ => "OTHER",
    }
}

/// The client side: sends calls and checks each status.
struct Demo {
    client: HealthClient<Channel>,
    records: mpsc::Receiver<AuditEntry>,
    failures: usize,
}

impl Demo {
    fn request(auth: Option<&str>) -> tonic::Request<HealthCheckRequest> {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: "orders.v1.Orders".into(),
        });
        if let Some(auth) = auth
            && let Ok(value) = auth.parse()
        {
            req.metadata_mut().insert("authorization", value);
        }
        req
    }

    /// One `Check` call: its status, or the gRPC error.
    async fn check(&mut self, auth: Option<&str>) -> Result<ServingStatus, tonic::Status> {
        let res = self.client.check(Self::request(auth)).await?;
        Ok(ServingStatus::try_from(res.into_inner().status).unwrap_or(ServingStatus::Unknown))
    }

    /// Prints the outcome of a call and the audit record it produced; counts an
    /// unexpected status as a failure.
    async fn report(&mut self, what: &str, expected: Code, outcome: Result<String, tonic::Status>) {
        let (code, detail) = match outcome {
            Ok(detail) => (Code::Ok, detail),
            Err(status) => (status.code(), status.message().to_owned()),
        };
        let mark = if code == expected {
            "ok "
        } else {
            self.failures += 1;
            "BAD"
        };
        println!("[{mark}] {what:<52} -> {} ({detail})", code_name(code));
        if code != expected {
            println!("      expected {}", code_name(expected));
        }
        println!("      audit: {}", self.audit_line().await);
    }

    /// A one-line summary of the next request record in the audit log.
    async fn audit_line(&mut self) -> String {
        while let Some(entry) = self.records.recv().await {
            if entry.kind != RecordKind::Request {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&entry.json) else {
                return "unreadable record".into();
            };
            let g = &v["unmapped"]["nhi_guard"];
            let client = v["actor"]["user"]["uid"].as_str().unwrap_or("anonymous");
            return match g["decision"].as_str() {
                Some("denied") => format!(
                    "seq {} client={client} decision=denied control={} reason={}",
                    entry.seq,
                    g["control"].as_str().unwrap_or("?"),
                    g["reason"].as_str().unwrap_or("?"),
                ),
                other => format!(
                    "seq {} client={client} decision={} required={}",
                    entry.seq,
                    other.unwrap_or("?"),
                    g["scopes"]["required"],
                ),
            };
        }
        "audit log closed".into()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(n) => {
            println!("{n} call(s) did not end as expected");
            ExitCode::FAILURE
        }
        Err(msg) => {
            eprintln!("tonic_grpc: {msg}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<usize, String> {
    let registry = Arc::new(InMemoryRegistry::new(inventory()?));
    let demo = DemoIssuer::new(ISSUER, AUDIENCE).map_err(|e| e.to_string())?;
    let (sink, records) = ChannelSink::new(256).map_err(|e| format!("audit sink: {e}"))?;
    let (guard, audit) = guard(registry, &demo, sink)?;

    // The server: the health service behind the stack.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders.v1.Orders", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let addr = incoming.local_addr().map_err(|e| format!("local address: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(guard)
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
    });
    println!("gRPC health service listening on http://{addr} behind the nhi-guard stack");
    println!("scope rules: Check needs health:read, Watch needs health:watch\n");

    // The client.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut d = Demo {
        client: HealthClient::new(channel),
        records,
        failures: 0,
    };
    let ttl = Duration::from_secs(300);
    let monitor = format!("Bearer {}", demo.mint("uptime-monitor", "health:read", ttl));
    let ops = format!(
        "Bearer {}",
        demo.mint("ops-console", "health:read health:watch", ttl)
    );

    let r = d.check(Some(&monitor)).await.map(|s| s.as_str_name().to_owned());
    d.report("Check, uptime-monitor token (health:read)", Code::Ok, r)
        .await;

    let r = d.check(None).await.map(|s| s.as_str_name().to_owned());
    d.report("Check, no credential", Code::Unauthenticated, r).await;

    // A token from the right issuer whose signature was tampered with.
    let mut forged = monitor.clone();
    forged.truncate(forged.len() - 8);
    forged.push_str("AAAAAAAA");
    let r = d.check(Some(&forged)).await.map(|s| s.as_str_name().to_owned());
    d.report("Check, tampered token", Code::Unauthenticated, r).await;

    // A token signed by another issuer's key.
    let impostor = DemoIssuer::new(ISSUER, AUDIENCE).map_err(|e| e.to_string())?;
    let foreign = format!("Bearer {}", impostor.mint("uptime-monitor", "health:read", ttl));
    let r = d.check(Some(&foreign)).await.map(|s| s.as_str_name().to_owned());
    d.report("Check, token signed by an unknown key", Code::Unauthenticated, r)
        .await;

    let r = d
        .client
        .watch(Demo::request(Some(&monitor)))
        .await
        .map(|_| "stream opened".to_owned());
    d.report(
        "Watch, uptime-monitor token (lacks health:watch)",
        Code::PermissionDenied,
        r,
    )
    .await;

    let r = match d.client.watch(Demo::request(Some(&ops))).await {
        Ok(res) => {
            let mut stream = res.into_inner();
            let first = stream.message().await;
            drop(stream);
            first.map(|m| {
                m.map_or_else(
                    || "stream ended".to_owned(),
                    |m| {
                        let s = ServingStatus::try_from(m.status).unwrap_or(ServingStatus::Unknown);
                        format!("first update: {}", s.as_str_name())
                    },
                )
            })
        }
        Err(status) => Err(status),
    };
    d.report("Watch, ops-console token (health:watch)", Code::Ok, r)
        .await;

    // The monitor's tier allows bursts of 5, refilled at 2 a second. Two are
    // spent: the first Check and the refused Watch (the rate limit runs before
    // the scope check). Call until the limit answers.
    let mut limited = None;
    for i in 1..=20 {
        match d.check(Some(&monitor)).await {
            Ok(_) => {
                let _ = d.audit_line().await;
            }
            Err(status) => {
                limited = Some((i, status));
                break;
            }
        }
    }
    match limited {
        Some((i, status)) => {
            let what = format!("Check, uptime-monitor, call {i} of a rapid burst");
            d.report(&what, Code::ResourceExhausted, Err(status)).await;
        }
        None => {
            d.report(
                "Check, uptime-monitor, 20 rapid calls",
                Code::ResourceExhausted,
                Ok("never limited".into()),
            )
            .await;
        }
    }

    let _ = stop.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("server: {e}")),
        Err(e) => return Err(format!("server task: {e}")),
    }
    let stats = audit.shutdown().await.map_err(|e| format!("audit flush: {e}"))?;
    println!("\naudit: {stats:?}");
    Ok(d.failures)
}
