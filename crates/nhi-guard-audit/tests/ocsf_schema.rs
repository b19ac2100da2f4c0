//! Every kind of record the crate writes validates against the JSON Schema of its
//! OCSF 1.3.0 class, generated from the OCSF schema source (`schema/README.md`):
//! API Activity (6003) for requests, Application Lifecycle (6002) for chain starts
//! and checkpoints. The shared test sink validates every record of every other
//! test the same way; this test names the kinds one by one, so that a kind no
//! other test happens to write is still covered, and shows that the schemas
//! catch a record that drifts.
#![allow(clippy::unwrap_used)]

mod support;

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Context;

use http::{Request, Response};
use nhi_guard_audit::{AuditLayer, AuditRecord, AuditSink, AuditWriter, AuditWriterBuilder, CheckpointKey};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::{ClientAddrResolver, SecurityContext};
use serde_json::{Value, json};
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Keeps the lines as written, unchecked: this test validates them itself, so
/// that a failure names the record kind and every violation.
#[derive(Clone, Default)]
struct Raw {
    lines: Arc<Mutex<Vec<String>>>,
    /// Asks for a rotation once this many records were written.
    rotate_after: Option<usize>,
    rotated: bool,
}

impl AuditSink for Raw {
    fn write(&mut self, r: &AuditRecord<'_>) -> io::Result<()> {
        self.lines.lock().unwrap().push(r.json().to_owned());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn rotation_due(&self) -> bool {
        !self.rotated
            && self
                .rotate_after
                .is_some_and(|n| self.lines.lock().unwrap().len() >= n)
    }
    fn rotate(&mut self) -> io::Result<()> {
        self.rotated = true;
        Ok(())
    }
}

fn records(raw: &Raw) -> Vec<Value> {
    raw.lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn peer() -> PeerAddr {
    PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40_123)))
}

/// A request through the test stack (`support::handler`), as `mode` says.
fn req(method: &str, mode: &str) -> Request<String> {
    let mut r = request(method, "/orders/42?page=2")
        .header("authorization", format!("Bearer {VALID_TOKEN}"))
        .header("user-agent", "inventory-sync/1.4")
        .header("x-test-mode", mode)
        .body(String::new())
        .unwrap();
    r.extensions_mut().insert(peer());
    r
}

/// The layer with every allow-list a record can show.
fn full_layer(w: AuditWriter) -> AuditLayer {
    AuditLayer::new(w)
        .service_name("orders-api")
        .allow_query_param("page")
        .unwrap()
        .allow_header("user-agent")
        .unwrap()
        .allow_header("x-forwarded-for")
        .unwrap()
}

/// The one request record `r` makes through `layer(writer)`, run to completion
/// (a panic in the handler included).
async fn record(layer: impl FnOnce(AuditWriter) -> AuditLayer, r: Request<String>) -> Value {
    let raw = Raw::default();
    let (w, h) = AuditWriter::builder().spawn(raw.clone()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer(w))
        .service_fn(handler::<String>);
    let _ = tokio::spawn(svc.oneshot(r)).await;
    h.shutdown().await.unwrap();
    one_request(&raw)
}

fn one_request(raw: &Raw) -> Value {
    let mut reqs: Vec<Value> = records(raw)
        .into_iter()
        .filter(|v| v["class_uid"] == 6003)
        .collect();
    assert_eq!(reqs.len(), 1);
    reqs.remove(0)
}

/// Sets facts of the context the test handler does not, then runs it.
async fn flagged(req: Request<String>) -> Result<Response<String>, HandlerFailed> {
    if let Some(ctx) = SecurityContext::from_extensions(req.extensions()) {
        ctx.update(|s| {
            s.credential_rotation_due = true;
            s.client_expiring_soon = true;
        });
    }
    handler(req).await
}

/// Every kind of request record, named.
async fn request_records() -> Vec<(&'static str, Value)> {
    let mut kinds = Vec::new();

    let v = record(full_layer, {
        let mut r = req("GET", "");
        r.headers_mut().insert(
            "x-forwarded-for",
            "203.0.113.7, not-an-ip, 2001:db8::1".parse().unwrap(),
        );
        r
    })
    .await;
    assert_eq!(v["http_request"]["x_forwarded_for"][1], "2001:db8::1");
    assert!(v["http_request"]["url"].get("query_string").is_some());
    assert!(v.get("dst_endpoint").is_some() && v["api"].get("service").is_some());
    kinds.push((
        "allowed, JWT client, direct peer, route, service name, query, headers, forwarding chain",
        v,
    ));

    for (method, name) in [
        ("POST", "allowed, POST (Create), 201"),
        ("HEAD", "allowed, HEAD (Read)"),
        ("PUT", "allowed, PUT (Update)"),
        (
            "PATCH",
            "allowed, PATCH (Update), a method OCSF 1.3 does not list",
        ),
        ("DELETE", "allowed, DELETE (Delete)"),
        ("OPTIONS", "allowed, OPTIONS (Other)"),
    ] {
        let v = record(AuditLayer::new, req(method, "created")).await;
        // The shape is the schema's to check; this names the kind.
        assert_eq!(v["api"]["operation"], format!("{method} /orders/{{id}}"));
        if method == "PATCH" {
            // Not among OCSF 1.3's methods: named by `api.operation` alone.
            assert!(v["http_request"].get("http_method").is_none());
        }
        kinds.push((name, v));
    }

    let mut r = req("GET", "");
    r.headers_mut().remove("authorization");
    r.headers_mut().insert("x-api-key", API_KEY.parse().unwrap());
    let raw = Raw::default();
    let (w, h) = AuditWriter::builder().spawn(raw.clone()).unwrap();
    let svc = ServiceBuilder::new()
        .layer(AuditLayer::new(w))
        .service_fn(flagged);
    svc.oneshot(r).await.unwrap();
    h.shutdown().await.unwrap();
    let v = one_request(&raw);
    assert_eq!(
        v["unmapped"]["nhi_guard"]["client"]["credential"]["rotation_due"],
        true
    );
    kinds.push(("allowed, API key past rotation, client expiring soon", v));

    let mut r = req("GET", "");
    r.headers_mut().remove("authorization");
    r.headers_mut().insert("x-test-cert", "1".parse().unwrap());
    let v = record(AuditLayer::new, r).await;
    assert_eq!(
        v["unmapped"]["nhi_guard"]["client"]["credential"]["type"],
        "certificate"
    );
    kinds.push(("allowed, workload certificate with SPIFFE id", v));

    let mut r = req("GET", "");
    r.headers_mut()
        .insert("authorization", format!("Bearer {BAD_TOKEN}").parse().unwrap());
    let v = record(AuditLayer::new, r).await;
    assert_eq!(v["actor"]["user"]["type_id"], 0);
    assert!(v["actor"]["user"].get("credential_uid").is_some());
    kinds.push(("denied by identity, invalid token: anonymous with fingerprint", v));

    let mut r = req("POST", "");
    r.headers_mut().remove("authorization");
    let v = record(AuditLayer::new, r).await;
    assert!(v["actor"]["user"].get("credential_uid").is_none());
    kinds.push(("denied by identity, no credential: anonymous", v));

    for (mode, name) in [
        ("scope", "denied by scope"),
        ("rate", "denied by rate limit"),
        ("risk", "denied by risk"),
        ("shadow", "allowed with shadow denials"),
        ("error", "handler error, no response"),
        ("panic", "handler panicked"),
        ("no-control", "no control decided (audit layer alone)"),
    ] {
        let v = record(AuditLayer::new, req("GET", mode)).await;
        kinds.push((name, v));
    }

    let v = record(AuditLayer::new, req("GET", "no-route")).await;
    assert!(v.get("resources").is_none());
    kinds.push(("no route known", v));

    let v = record(|w| full_layer(w).raw_path_fallback(true), req("GET", "no-route")).await;
    kinds.push(("no route known, raw path fallback, allow-listed query", v));

    let mut r = request("POST", "/orders.v1.Orders/Get")
        .header("content-type", "application/grpc")
        .header("x-test-mode", "no-route")
        .body(String::new())
        .unwrap();
    r.extensions_mut().insert(peer());
    let v = record(AuditLayer::new, r).await;
    assert_eq!(v["api"]["operation"], "POST /orders.v1.Orders/Get");
    kinds.push(("gRPC call refused before any route was recorded", v));

    let mut r = req("GET", "");
    r.extensions_mut().remove::<PeerAddr>();
    let v = record(AuditLayer::new, r).await;
    assert_eq!(v["src_endpoint"], json!({ "name": "unknown" }));
    kinds.push(("no client address", v));

    let mut r = req("GET", "");
    r.extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([10, 0, 0, 9], 443))));
    r.headers_mut()
        .insert("x-forwarded-for", "198.51.100.4".parse().unwrap());
    let resolver = ClientAddrResolver::new().trust_proxy("10.0.0.0/8".parse().unwrap());
    let v = record(|w| AuditLayer::new(w).client_addr_resolver(resolver), r).await;
    assert_eq!(v["src_endpoint"], json!({ "ip": "198.51.100.4" }));
    kinds.push(("forwarded client address (trusted proxy), no port", v));

    let mut r = req("GET", "");
    r.extensions_mut().insert(PeerAddr(SocketAddr::from((
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 7],
        443,
    ))));
    let v = record(AuditLayer::new, r).await;
    kinds.push(("IPv6 client address", v));

    // Cancelled: the response future is dropped while the handler hangs.
    let raw = Raw::default();
    let (w, h) = AuditWriter::builder().spawn(raw.clone()).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(AuditLayer::new(w))
        .service_fn(handler::<String>);
    {
        let fut = pin!(svc.call(req("DELETE", "hang")));
        let waker = futures_util::task::noop_waker();
        assert!(fut.poll(&mut Context::from_waker(&waker)).is_pending());
    }
    h.shutdown().await.unwrap();
    kinds.push(("cancelled", one_request(&raw)));

    kinds
}

/// Runs two requests through a writer made by `builder` and returns its records:
/// chain start, requests, checkpoints, and (`rotate_after`) a rotation.
async fn chain(builder: AuditWriterBuilder, rotate_after: Option<usize>) -> Vec<Value> {
    let raw = Raw {
        rotate_after,
        ..Raw::default()
    };
    let (w, h) = builder.spawn(raw.clone()).unwrap();
    let layer = AuditLayer::new(w);
    for _ in 0..2 {
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(handler::<String>);
        svc.oneshot(req("GET", "")).await.unwrap();
    }
    h.checkpoint().await.unwrap();
    h.shutdown().await.unwrap();
    records(&raw)
}

fn chain_kind<'a>(records: &'a [Value], kind: &str, test: impl Fn(&Value) -> bool) -> &'a Value {
    records
        .iter()
        .find(|v| v["unmapped"]["chain"]["kind"] == kind && test(&v["unmapped"]["chain"]))
        .unwrap_or_else(|| panic!("no {kind} record in {records:#?}"))
}

/// Every kind of chain record, named.
async fn chain_records() -> Vec<(&'static str, Value)> {
    let mut kinds = Vec::new();
    let plain = chain(AuditWriter::builder().checkpoint_every(1).unwrap(), Some(3)).await;
    let start = |c: &Value, reason: &str| c["reason"] == reason;
    kinds.push((
        "chain start at startup",
        chain_kind(&plain, "start", |c| start(c, "startup")).clone(),
    ));
    kinds.push((
        "chain start after rotation",
        chain_kind(&plain, "start", |c| start(c, "rotation")).clone(),
    ));
    kinds.push((
        "checkpoint",
        chain_kind(&plain, "checkpoint", |c| c["final"] == false).clone(),
    ));
    kinds.push((
        "final checkpoint",
        chain_kind(&plain, "checkpoint", |c| c["final"] == true).clone(),
    ));

    let keyed = chain(
        AuditWriter::builder().checkpoint_key(CheckpointKey::new(vec![7; 32]).unwrap()),
        None,
    )
    .await;
    kinds.push((
        "checkpoint with MAC",
        chain_kind(&keyed, "checkpoint", |c| c.get("mac").is_some()).clone(),
    ));

    #[cfg(feature = "ed25519")]
    {
        let signer = nhi_guard_audit::CheckpointSigner::generate().unwrap();
        let signed = chain(AuditWriter::builder().checkpoint_signer(signer), None).await;
        kinds.push((
            "checkpoint with Ed25519 signature",
            chain_kind(&signed, "checkpoint", |c| c.get("sig").is_some()).clone(),
        ));
    }
    kinds
}

#[tokio::test]
async fn every_record_kind_validates_against_its_ocsf_class_schema() {
    let mut kinds = request_records().await;
    kinds.extend(chain_records().await);
    let failures: Vec<String> = kinds
        .iter()
        .filter_map(|(name, v)| {
            validate_ocsf_schema(v)
                .err()
                .map(|e| format!("{name}: {e}\n  {v}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} record kinds do not match their OCSF 1.3.0 class:\n{}",
        failures.len(),
        kinds.len(),
        failures.join("\n")
    );
    // Both classes, every activity of API Activity the crate maps.
    let classes: std::collections::BTreeSet<u64> = kinds
        .iter()
        .map(|(_, v)| v["class_uid"].as_u64().unwrap())
        .collect();
    assert_eq!(classes, [6002, 6003].into());
    let activities: std::collections::BTreeSet<u64> = kinds
        .iter()
        .filter(|(_, v)| v["class_uid"] == 6003)
        .map(|(_, v)| v["activity_id"].as_u64().unwrap())
        .collect();
    assert_eq!(activities, [1, 2, 3, 4, 99].into());
}

/// A valid record of each class, for the drift checks.
async fn samples() -> (Value, Value) {
    let records = chain(AuditWriter::builder(), None).await;
    let request = records.iter().find(|v| v["class_uid"] == 6003).unwrap().clone();
    let lifecycle = records.iter().find(|v| v["class_uid"] == 6002).unwrap().clone();
    validate_ocsf_schema(&request).unwrap();
    validate_ocsf_schema(&lifecycle).unwrap();
    (request, lifecycle)
}

fn set(v: &Value, pointer: &str, value: Option<Value>) -> Value {
    let mut v = v.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = v.pointer_mut(parent).unwrap().as_object_mut().unwrap();
    match value {
        Some(value) => obj.insert(key.to_owned(), value),
        None => obj.remove(key),
    };
    v
}

fn rename(v: &Value, pointer: &str, to: &str) -> Value {
    let value = v.pointer(pointer).unwrap().clone();
    let (parent, _) = pointer.rsplit_once('/').unwrap();
    set(&set(v, pointer, None), &format!("{parent}/{to}"), Some(value))
}

#[tokio::test]
async fn the_schemas_catch_a_record_that_drifts() {
    let (request, lifecycle) = samples().await;
    let drifted = [
        (
            "a renamed attribute",
            rename(&request, "/http_request/http_method", "method"),
        ),
        (
            "a renamed object",
            rename(&request, "/src_endpoint", "source_endpoint"),
        ),
        (
            "an attribute the class does not define",
            set(&request, "/decision", Some(json!("allowed"))),
        ),
        (
            "an attribute the object does not define",
            set(&request, "/actor/user/kind", Some(json!("x"))),
        ),
        (
            "a type_id out of its enum",
            set(&request, "/actor/user/type_id", Some(json!(7))),
        ),
        (
            "an activity_id out of its enum",
            set(&request, "/activity_id", Some(json!(5))),
        ),
        (
            "a type_uid out of its enum",
            set(&request, "/type_uid", Some(json!(600_305))),
        ),
        (
            "a severity_id out of its enum",
            set(&request, "/severity_id", Some(json!(7))),
        ),
        (
            "another class's class_uid",
            set(&request, "/class_uid", Some(json!(6002))),
        ),
        (
            "a wrong type",
            set(&request, "/time", Some(json!("2024-08-01T00:00:00Z"))),
        ),
        (
            "a string that should be an array",
            set(&request, "/http_request/x_forwarded_for", Some(json!("10.0.0.1"))),
        ),
        (
            "a missing required attribute",
            set(&request, "/api/operation", None),
        ),
        ("a missing required object", set(&request, "/actor", None)),
        (
            "an empty endpoint",
            set(&request, "/src_endpoint", Some(json!({}))),
        ),
        (
            "a declared profile",
            set(&request, "/metadata/profiles", Some(json!(["security_control"]))),
        ),
        (
            "a lifecycle activity out of its enum",
            set(&lifecycle, "/activity_id", Some(json!(9))),
        ),
        ("a lifecycle record without app", set(&lifecycle, "/app", None)),
        (
            "a product without vendor_name",
            set(&lifecycle, "/app/vendor_name", None),
        ),
    ];
    for (what, v) in &drifted {
        assert!(validate_ocsf_schema(v).is_err(), "{what} passed the schema: {v}");
    }
    // `unmapped` is OCSF's free-form object.
    let extended = set(
        &request,
        "/unmapped/nhi_guard/anything",
        Some(json!({ "new": [1] })),
    );
    validate_ocsf_schema(&extended).unwrap();
}
