//! The whole stack (`NhiGuard::builder`) in front of a real tonic server — the
//! standard gRPC health service from `tonic-health` on 127.0.0.1:0 — called by a
//! real tonic client: an allowed call, and a denial by each control (identity,
//! scope, rate limit, risk), asserting the gRPC status code, `grpc-message`, the
//! metadata and the audit record written for each call.
//!
//! Each call's audit record is received before the next call is made, so records
//! and calls pair up one to one. Time is a `ManualClock`: nothing sleeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nhi_guard::audit::{AuditEntry, AuditHandle, AuditLayer, AuditWriter, ChannelSink, RecordKind};
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, Tier};
use nhi_guard::identity::{DemoIssuer, IdentityLayer};
use nhi_guard::ratelimit::store::Quota;
use nhi_guard::ratelimit::{Limit, RateLimitLayer};
use nhi_guard::risk::{RiskLayer, RiskOperator};
use nhi_guard::scope::{Policy, Require, ScopeLayer};
use nhi_guard::{ClientAddrResolver, NhiGuard, ScopeSet};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const AUDIENCE: &str = "health-api";
const CHECK: &str = "/grpc.health.v1.Health/Check";

fn inventory() -> Inventory {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 90);
    let client = |id: &str, scopes: &str, tier: &str| {
        ClientRecord::builder(id, "platform@example.com", "health probes", expires)
            .scopes(ScopeSet::parse(scopes).expect("scopes"))
            .tier(tier)
            .build()
            .expect("client")
    };
    Inventory::builder()
        .tier(
            "standard",
            Tier {
                per_second: 50,
                burst: 100,
            },
        )
        .tier(
            "tiny",
            Tier {
                per_second: 1,
                burst: 3,
            },
        )
        .client(client("monitor", "health:read", "standard"))
        .client(client("ops-console", "health:read health:watch", "standard"))
        .client(client("partner-probe", "health:read", "tiny"))
        .build()
        .expect("inventory")
}

struct Harness {
    client: HealthClient<Channel>,
    clock: ManualClock,
    demo: DemoIssuer,
    records: mpsc::Receiver<AuditEntry>,
    audit: AuditHandle,
    risk: RiskOperator,
    tokens: Vec<String>,
    /// The hash of the last record received: each record must chain to it.
    last_sha256: String,
}

/// The full stack around the health service, served on loopback. The test
/// client is "behind" a trusted proxy (loopback), so each scenario sends
/// `x-forwarded-for` to act from its own address.
async fn start() -> Harness {
    let clock = ManualClock::now();
    let registry = Arc::new(InMemoryRegistry::new(inventory()));
    let demo = DemoIssuer::new("https://issuer.example.test", AUDIENCE).expect("demo issuer");
    let (sink, records) = ChannelSink::new(1024).expect("sink");
    let (writer, audit) = AuditWriter::builder()
        .clock(Arc::new(clock.clone()))
        .spawn(sink)
        .expect("audit writer");
    let policy = Policy::builder()
        .grpc(CHECK, Require::all_of("health:read"))
        .grpc_service("grpc.health.v1.Health", Require::all_of("health:watch"))
        .build()
        .expect("policy");
    let risk = RiskLayer::new();
    let operator = risk.operator();
    let guard = NhiGuard::builder(registry.clone())
        .clock(Arc::new(clock.clone()))
        .client_addr_resolver(ClientAddrResolver::new().trust_proxies(["127.0.0.1/32".parse().expect("net")]))
        .audit(AuditLayer::new(writer).service_name("health-grpc"))
        .address_rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_address(
                    "per-address",
                    Quota::per_second(100)
                        .and_then(|q| q.with_burst(200))
                        .expect("quota"),
                ))
                .expect("limit"),
        )
        .identity(IdentityLayer::builder(registry).issuer(demo.issuer()))
        .risk(risk)
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client"))
                .expect("limit"),
        )
        .scope(ScopeLayer::new(policy))
        .build()
        .expect("the stack builds");

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind loopback");
    let addr = incoming.local_addr().expect("local addr");
    tokio::spawn(async move {
        Server::builder()
            .layer(guard)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .expect("server");
        drop(reporter);
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut records = records;
    let start = records.recv().await.expect("chain start");
    assert_eq!(start.kind, RecordKind::ChainStart);
    Harness {
        client: HealthClient::new(channel),
        clock,
        demo,
        records,
        audit,
        risk: operator,
        tokens: Vec::new(),
        last_sha256: start.sha256,
    }
}

fn request(from: &str, authorization: Option<&str>) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: "orders".into(),
    });
    req.metadata_mut()
        .insert("x-forwarded-for", from.parse().expect("ascii"));
    if let Some(auth) = authorization {
        req.metadata_mut()
            .insert("authorization", auth.parse().expect("ascii"));
    }
    req
}

impl Harness {
    fn token(&mut self, client: &str, scopes: &str) -> String {
        let token = self.demo.mint(client, scopes, Duration::from_secs(600));
        self.tokens.push(token.clone());
        format!("Bearer {token}")
    }

    /// A token with a valid shape whose signature does not verify.
    fn forged(&mut self, client: &str) -> String {
        let mut token = self.demo.mint(client, "health:read", Duration::from_secs(600));
        let at = token.len() - 8;
        token.replace_range(at.., "AAAAAAAA");
        self.tokens.push(token.clone());
        format!("Bearer {token}")
    }

    async fn check(&mut self, from: &str, auth: Option<&str>) -> Result<ServingStatus, Status> {
        let res = self.client.check(request(from, auth)).await?;
        Ok(ServingStatus::try_from(res.into_inner().status).expect("known status"))
    }

    /// The audit record of the call just made.
    async fn record(&mut self) -> Value {
        loop {
            let entry = self.records.recv().await.expect("audit record");
            let v: Value = serde_json::from_str(&entry.json).expect("json record");
            assert_eq!(
                v["unmapped"]["prev_sha256"].as_str(),
                Some(self.last_sha256.as_str()),
                "the audit hash chain is broken at seq {}",
                entry.seq
            );
            self.last_sha256 = entry.sha256.clone();
            if entry.kind == RecordKind::Request {
                for token in &self.tokens {
                    assert!(
                        !entry.json.contains(token.as_str()),
                        "a token reached the audit log"
                    );
                }
                return v;
            }
        }
    }
}

fn decision(record: &Value) -> (&str, &str, &str) {
    let g = &record["unmapped"]["nhi_guard"];
    (
        g["decision"].as_str().unwrap_or("none"),
        g["control"].as_str().unwrap_or("none"),
        g["reason"].as_str().unwrap_or("none"),
    )
}

fn client_of(record: &Value) -> &str {
    record["actor"]["user"]["uid"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_call_reaches_the_service_and_is_audited() {
    let mut h = start().await;
    let token = h.token("monitor", "health:read");
    assert_eq!(
        h.check("198.51.100.1", Some(&token)).await.expect("allowed"),
        ServingStatus::Serving
    );
    let rec = h.record().await;
    assert_eq!(decision(&rec).0, "allowed", "{rec}");
    assert_eq!(client_of(&rec), "monitor");
    assert_eq!(rec["http_request"]["url"]["path"], CHECK);
    assert_eq!(rec["src_endpoint"]["ip"], "198.51.100.1");
    assert_eq!(rec["api"]["service"]["name"], "health-grpc");

    // Watch is a server stream; ops-console holds health:watch.
    let token = h.token("ops-console", "health:read health:watch");
    let mut stream = h
        .client
        .watch(request("198.51.100.1", Some(&token)))
        .await
        .expect("ops-console may watch")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("one message");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    drop(stream);
    let rec = h.record().await;
    assert_eq!(decision(&rec).0, "allowed", "{rec}");
    assert_eq!(client_of(&rec), "ops-console");
    assert_eq!(rec["http_request"]["url"]["path"], "/grpc.health.v1.Health/*");
    h.audit.shutdown().await.expect("audit flushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_refuses_a_missing_or_bad_credential_with_unauthenticated() {
    let mut h = start().await;
    let status = h.check("198.51.100.2", None).await.expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "This endpoint requires a credential");
    let challenge = status
        .metadata()
        .get("www-authenticate")
        .expect("challenge")
        .to_str()
        .expect("ascii");
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    let rec = h.record().await;
    assert_eq!(decision(&rec), ("denied", "scope", "credential_missing"), "{rec}");
    assert_eq!(rec["actor"]["user"]["name"], "anonymous");
    assert_eq!(rec["api"]["operation"], format!("POST {CHECK}"), "{rec}");

    let forged = h.forged("monitor");
    let status = h
        .check("198.51.100.2", Some(&forged))
        .await
        .expect_err("bad token");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "The access token's signature is invalid");
    let challenge = status.metadata().get("www-authenticate").expect("challenge");
    assert!(
        challenge
            .to_str()
            .expect("ascii")
            .contains(r#"error="invalid_token""#),
        "{challenge:?}"
    );
    let rec = h.record().await;
    let (d, control, _) = decision(&rec);
    assert_eq!((d, control), ("denied", "identity"), "{rec}");
    // Refused before any control recorded a route: the call's method stands in.
    assert_eq!(rec["http_request"]["url"]["path"], CHECK, "{rec}");
    assert_eq!(rec["api"]["operation"], format!("POST {CHECK}"), "{rec}");

    // A token for a client the inventory does not know.
    let stranger = h.token("stranger", "health:read");
    let status = h
        .check("198.51.100.2", Some(&stranger))
        .await
        .expect_err("unknown client");
    assert_eq!(status.code(), Code::Unauthenticated);
    let rec = h.record().await;
    assert_eq!(decision(&rec).1, "identity", "{rec}");
    h.audit.shutdown().await.expect("audit flushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_refuses_a_method_the_client_may_not_call_with_permission_denied() {
    let mut h = start().await;
    let token = h.token("monitor", "health:read");
    let status = h
        .client
        .watch(request("198.51.100.3", Some(&token)))
        .await
        .expect_err("monitor may not watch");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "The access token lacks a required scope");
    let challenge = status
        .metadata()
        .get("www-authenticate")
        .expect("challenge")
        .to_str()
        .expect("ascii");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#) && challenge.contains(r#"scope="health:watch""#),
        "{challenge}"
    );
    let rec = h.record().await;
    assert_eq!(decision(&rec), ("denied", "scope", "insufficient_scope"), "{rec}");
    assert_eq!(client_of(&rec), "monitor");
    assert_eq!(rec["http_request"]["url"]["path"], "/grpc.health.v1.Health/*");
    assert_eq!(
        rec["unmapped"]["nhi_guard"]["scopes"]["missing"],
        serde_json::json!(["health:watch"])
    );

    // The same client still calls what it holds.
    assert!(h.check("198.51.100.3", Some(&token)).await.is_ok());
    assert_eq!(decision(&h.record().await).0, "allowed");
    h.audit.shutdown().await.expect("audit flushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_resource_exhausted_past_the_tier() {
    let mut h = start().await;
    let token = h.token("partner-probe", "health:read");
    // Tier "tiny": 1/s with bursts of 3; the clock stands still.
    for i in 0..3 {
        assert!(h.check("198.51.100.4", Some(&token)).await.is_ok(), "call {i}");
        assert_eq!(decision(&h.record().await).0, "allowed");
    }
    let status = h.check("198.51.100.4", Some(&token)).await.expect_err("limited");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        r#"Rate limit "per-client" exceeded; retry in 1 s"#
    );
    assert_eq!(
        status
            .metadata()
            .get("retry-after")
            .map(|v| v.to_str().expect("ascii")),
        Some("1")
    );
    let policy = status
        .metadata()
        .get("ratelimit-policy")
        .expect("ratelimit-policy")
        .to_str()
        .expect("ascii");
    assert!(policy.contains(r#""per-client";q=3"#), "{policy}");
    let rec = h.record().await;
    assert_eq!(decision(&rec), ("denied", "rate_limit", "rate_limited"), "{rec}");
    assert_eq!(
        rec["unmapped"]["nhi_guard"]["rate_limit"]["policy"], "per-client",
        "{rec}"
    );
    assert_eq!(
        rec["unmapped"]["nhi_guard"]["rate_limit"]["limited"], true,
        "{rec}"
    );
    assert_eq!(client_of(&rec), "partner-probe");

    // Another client is not affected; time refills the bucket.
    let other = h.token("monitor", "health:read");
    assert!(h.check("198.51.100.4", Some(&other)).await.is_ok());
    let _ = h.record().await;
    h.clock.advance(Duration::from_secs(1));
    assert!(h.check("198.51.100.4", Some(&token)).await.is_ok());
    assert_eq!(decision(&h.record().await).0, "allowed");
    h.audit.shutdown().await.expect("audit flushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_throttles_then_blocks_an_address_spraying_bad_tokens() {
    let mut h = start().await;
    let attacker = "203.0.113.66";
    // One forged token every 10 s: identity refuses each (UNAUTHENTICATED) until
    // risk sees too many distinct bad credentials from the address; it throttles
    // (RESOURCE_EXHAUSTED, one guess per interval let through), then blocks
    // (PERMISSION_DENIED).
    let mut seen = Vec::new();
    let mut throttled = false;
    for i in 0..20 {
        let forged = h.forged("monitor");
        let status = h.check(attacker, Some(&forged)).await.expect_err("forged");
        let rec = h.record().await;
        let (d, control, reason) = decision(&rec);
        assert_eq!(d, "denied", "{rec}");
        match (status.code(), control) {
            (Code::Unauthenticated, "identity") => {
                assert_eq!(status.message(), "The access token's signature is invalid");
            }
            (Code::ResourceExhausted, "risk") => {
                assert_eq!(reason, "abnormal_usage", "{rec}");
                assert_eq!(
                    status.message(),
                    "Request rate reduced for a cool-down after abnormal usage"
                );
                assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
                assert!(
                    rec["unmapped"]["nhi_guard"]["risk"]["score"].as_u64() >= Some(40),
                    "{rec}"
                );
                throttled = true;
            }
            (Code::PermissionDenied, "risk") => {
                assert_eq!(reason, "risk_blocked", "{rec}");
                assert_eq!(rec["unmapped"]["nhi_guard"]["risk"]["action"], "block", "{rec}");
                // The distinct bad credentials; the failure count of the
                // address (the guesses the throttle refused count too) may
                // join them, depending on where in its sliding minute the
                // clock started.
                let signals: Vec<&str> = rec["unmapped"]["nhi_guard"]["risk"]["signals"]
                    .as_array()
                    .map(|s| s.iter().filter_map(|h| h["signal"].as_str()).collect())
                    .unwrap_or_default();
                assert!(signals.contains(&"distinct_credentials"), "{rec}");
                seen.push(status.code());
                break;
            }
            other => panic!("guess {i}: unexpected {other:?}: {rec}"),
        }
        seen.push(status.code());
        h.clock.advance(Duration::from_secs(10));
    }
    assert_eq!(seen.first(), Some(&Code::Unauthenticated), "{seen:?}");
    assert!(throttled, "risk never throttled before blocking: {seen:?}");
    assert_eq!(
        seen.last(),
        Some(&Code::PermissionDenied),
        "never blocked: {seen:?}"
    );

    // The block holds the address: a valid token from it is refused before the
    // service; the block is listed by the operator; another address is served.
    let token = h.token("monitor", "health:read");
    let status = h.check(attacker, Some(&token)).await.expect_err("blocked");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "Requests are blocked for a cool-down after abnormal activity"
    );
    assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
    let rec = h.record().await;
    assert_eq!(decision(&rec), ("denied", "risk", "risk_blocked"), "{rec}");
    let active: Vec<String> = h.risk.active().iter().map(|d| d.key.to_string()).collect();
    assert!(active.contains(&format!("addr:{attacker}")), "{active:?}");

    assert!(h.check("198.51.100.5", Some(&token)).await.is_ok());
    assert_eq!(decision(&h.record().await).0, "allowed");
    h.audit.shutdown().await.expect("audit flushed");
}
