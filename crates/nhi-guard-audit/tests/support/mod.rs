//! Test support shared by the integration tests: an in-memory sink that checks
//! every record for the test secrets and validates its OCSF shape, a gate to stall
//! the writer, and a tiny stack of test-only "controls" that record into the
//! security context and reject with core denials.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use nhi_guard_audit::{AuditHandle, AuditRecord, AuditSink, AuditWriter, AuditWriterBuilder, RecordKind};
use nhi_guard_core::context::{Control, RateLimitOutcome, RiskAssessment, ScopeOutcome, SignalHit};
use nhi_guard_core::denial::{DefaultRenderer, Protocol, RenderDenial};
use nhi_guard_core::{
    ClientRecord, CredentialFingerprint, CredentialInfo, Denial, IdentityKind, Principal, ScopeSet,
    SecurityContext, Tier,
};
use serde_json::Value;

pub const VALID_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJpbnZlbnRvcnktc3luYyJ9.VGhpc0lzQVRlc3RTaWduYXR1cmVTZWNyZXQ";
pub const BAD_TOKEN: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.Rm9yZ2VkU2lnbmF0dXJlU2VjcmV0WFla";
pub const API_KEY: &str = "nhik_live_S3cr3tK3yValue0123456789abcdef";
pub const COOKIE: &str = "sid=TopSecretSessionCookie42";
pub const QUERY_SECRET: &str = "QuerySecretToken77value";
pub const BASIC: &str = "Basic aW52ZW50b3J5Omh1bnRlcjJodW50ZXIy";

/// Every secret the tests send, and distinctive parts of them.
pub const SECRETS: &[&str] = &[
    VALID_TOKEN,
    BAD_TOKEN,
    "VGhpc0lzQVRlc3RTaWduYXR1cmVTZWNyZXQ",
    "Rm9yZ2VkU2lnbmF0dXJlU2VjcmV0WFla",
    "eyJzdWIiOiJpbnZlbnRvcnktc3luYyJ9",
    API_KEY,
    "S3cr3tK3yValue",
    COOKIE,
    "TopSecretSessionCookie42",
    QUERY_SECRET,
    "aW52ZW50b3J5Omh1bnRlcjJodW50ZXIy",
];

static SCANNED: AtomicU64 = AtomicU64::new(0);

/// Panics when `text` holds a test secret.
pub fn assert_no_secret(text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "secret {s:?} found in audit record: {text}");
    }
    SCANNED.fetch_add(1, Ordering::Relaxed);
}

fn is_int(v: &Value) -> bool {
    v.as_u64().is_some()
}

fn need<'a>(v: &'a Value, path: &str) -> Result<&'a Value, String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur
            .get(part)
            .ok_or_else(|| format!("missing required `{path}`"))?;
    }
    Ok(cur)
}

fn need_int(v: &Value, path: &str) -> Result<u64, String> {
    need(v, path)?
        .as_u64()
        .ok_or_else(|| format!("`{path}` must be an integer"))
}

fn need_str<'a>(v: &'a Value, path: &str) -> Result<&'a str, String> {
    need(v, path)?
        .as_str()
        .ok_or_else(|| format!("`{path}` must be a string"))
}

fn need_obj(v: &Value, path: &str) -> Result<(), String> {
    need(v, path)?
        .as_object()
        .map(|_| ())
        .ok_or_else(|| format!("`{path}` must be an object"))
}

/// Validates the attributes OCSF 1.3 marks required for the base event and for
/// API Activity (6003) or Application Lifecycle (6002), with their types, and the
/// recommended ones this crate promises.
pub fn validate_ocsf(v: &Value) -> Result<(), String> {
    // Base event: required.
    let class_uid = need_int(v, "class_uid")?;
    let activity_id = need_int(v, "activity_id")?;
    let category_uid = need_int(v, "category_uid")?;
    let severity_id = need_int(v, "severity_id")?;
    let type_uid = need_int(v, "type_uid")?;
    need_int(v, "time")?;
    need_obj(v, "metadata")?;
    need_obj(v, "metadata.product")?;
    need_str(v, "metadata.product.name")?;
    need_str(v, "metadata.product.vendor_name")?;
    need_str(v, "metadata.version")?;
    if category_uid != 6 {
        return Err(format!(
            "category_uid {category_uid} is not Application Activity (6)"
        ));
    }
    if type_uid != class_uid * 100 + activity_id {
        return Err(format!("type_uid {type_uid} != class_uid * 100 + activity_id"));
    }
    if ![0, 1, 2, 3, 4, 5, 6, 99].contains(&severity_id) {
        return Err(format!("severity_id {severity_id} not in the enum"));
    }
    let status_id = need_int(v, "status_id")?;
    if ![0, 1, 2, 99].contains(&status_id) {
        return Err(format!("status_id {status_id} not in the enum"));
    }
    // The `*_name` captions are strings.
    for f in [
        "activity_name",
        "category_name",
        "class_name",
        "type_name",
        "severity",
        "status",
    ] {
        need_str(v, f)?;
    }
    match class_uid {
        6003 => {
            if ![1, 2, 3, 4, 99].contains(&activity_id) {
                return Err(format!("activity_id {activity_id} not an API Activity id"));
            }
            need_obj(v, "actor")?;
            need_obj(v, "actor.user")?;
            if v["actor"]["user"].get("uid").is_none() && v["actor"]["user"].get("name").is_none() {
                return Err("actor.user needs uid or name".into());
            }
            need_obj(v, "api")?;
            need_str(v, "api.operation")?;
            need_obj(v, "src_endpoint")?;
            need_str(v, "metadata.uid")?;
            // Recommended, promised by this crate.
            need_obj(v, "http_request")?;
            // The methods OCSF 1.3 enumerates (not PATCH): `http_method`.
            let method = need_str(v, "api.operation")?.split(' ').next().unwrap_or("");
            let listed = [
                "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "TRACE",
            ];
            if listed.contains(&method) {
                need_str(v, "http_request.http_method")?;
            }
            // A URL whenever a route is known.
            if v.get("resources").is_some() {
                need_obj(v, "http_request.url")?;
            }
            if let Some(r) = v["api"]["response"].get("code")
                && !is_int(r)
            {
                return Err("api.response.code must be an integer".into());
            }
            need_int(v, "duration")?;
            let ext = need(v, "unmapped.nhi_guard")?;
            need_str(ext, "decision")?;
            need_str(ext, "completion")?;
            need_int(ext, "latency_us")?;
            need_int(ext, "dropped_total")?;
        }
        6002 => {
            need_obj(v, "app")?;
            need_str(v, "app.name")?;
            need_str(v, "unmapped.chain.kind")?;
        }
        other => return Err(format!("unexpected class_uid {other}")),
    }
    need_str(v, "unmapped.sha256")?;
    need_str(v, "unmapped.prev_sha256")?;
    need_int(v, "unmapped.seq")?;
    Ok(())
}

/// The JSON Schemas of the OCSF 1.3.0 classes the crate writes, by `class_uid`,
/// generated from the OCSF schema source by `schema/generate.py` (see
/// `schema/README.md`), for records that declare no profile.
pub const OCSF_SCHEMAS: &[(u64, &str, &str)] = &[
    (
        6003,
        "api_activity",
        include_str!("../../schema/ocsf-1.3.0/api_activity.json"),
    ),
    (
        6002,
        "application_lifecycle",
        include_str!("../../schema/ocsf-1.3.0/application_lifecycle.json"),
    ),
];

fn schema_validators() -> &'static [(u64, jsonschema::Validator)] {
    static VALIDATORS: OnceLock<Vec<(u64, jsonschema::Validator)>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        OCSF_SCHEMAS
            .iter()
            .map(|(class_uid, name, text)| {
                let schema: Value = serde_json::from_str(text).unwrap();
                let validator = jsonschema::draft7::new(&schema)
                    .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"));
                (*class_uid, validator)
            })
            .collect()
    })
}

/// Validates `v` against the JSON Schema of its OCSF class (generated from the
/// OCSF 1.3.0 schema): every attribute defined by the class or its objects, of
/// the defined type, in the enum where the schema gives one, the required ones
/// present; free form only in `unmapped`. The error lists every violation with
/// its path.
pub fn validate_ocsf_schema(v: &Value) -> Result<(), String> {
    let class_uid = v
        .get("class_uid")
        .and_then(Value::as_u64)
        .ok_or("no integer `class_uid`")?;
    let (_, validator) = schema_validators()
        .iter()
        .find(|(uid, _)| *uid == class_uid)
        .ok_or_else(|| format!("no OCSF schema for class_uid {class_uid}"))?;
    let mut errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("`{}`: {e}", e.instance_path()))
        .collect();
    // The schemas hold the attributes of no profile: the records declare none.
    if let Some(p) = v.get("metadata").and_then(|m| m.get("profiles")) {
        errors.push(format!(
            "`/metadata/profiles` {p}: the schemas were generated for no profile"
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Checks one JSON line: no secret, valid OCSF.
pub fn check_line(line: &str) -> Value {
    assert_no_secret(line);
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("record is not JSON ({e}): {line}"));
    if let Err(e) = validate_ocsf(&v) {
        panic!("invalid OCSF record: {e}: {line}");
    }
    if let Err(e) = validate_ocsf_schema(&v) {
        panic!("record does not match the OCSF 1.3.0 schema: {e}: {line}");
    }
    // Written in canonical form, hash intact.
    assert_eq!(
        String::from_utf8(nhi_guard_audit::chain::canonical_json(&v)).unwrap(),
        line,
        "record not in canonical form"
    );
    assert_eq!(
        nhi_guard_audit::chain::record_hash(&v),
        v["unmapped"]["sha256"].as_str().unwrap()
    );
    v
}

/// Scans every line of a log file the tests wrote.
pub fn scan_file(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(check_line).collect()
}

/// Blocks the writer in `write` of request records until opened.
#[derive(Default)]
pub struct Gate {
    state: Mutex<(bool, u64)>,
    cv: Condvar,
}

impl Gate {
    pub fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.cv.notify_all();
    }
    /// Waits until the writer is blocked in the gate (with one record in hand).
    pub fn wait_entered(&self) {
        let mut g = self.state.lock().unwrap();
        while g.1 == 0 {
            g = self.cv.wait(g).unwrap();
        }
    }
    fn pass(&self) {
        let mut g = self.state.lock().unwrap();
        g.1 += 1;
        self.cv.notify_all();
        while !g.0 {
            g = self.cv.wait(g).unwrap();
        }
    }
}

/// Records kept in memory; every one is scanned for secrets and validated.
#[derive(Clone, Default)]
pub struct Lines(pub Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn all(&self) -> Vec<Value> {
        self.0.lock().unwrap().iter().map(|l| check_line(l)).collect()
    }
    pub fn requests(&self) -> Vec<Value> {
        self.all()
            .into_iter()
            .filter(|v| v["class_uid"] == 6003)
            .collect()
    }
    pub fn text(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

pub struct MemorySink {
    lines: Lines,
    gate: Option<Arc<Gate>>,
}

impl AuditSink for MemorySink {
    fn write(&mut self, r: &AuditRecord<'_>) -> io::Result<()> {
        check_line(r.json());
        if r.kind() == RecordKind::Request
            && let Some(g) = &self.gate
        {
            g.pass();
        }
        self.lines.0.lock().unwrap().push(r.json().to_owned());
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn memory(builder: AuditWriterBuilder) -> (AuditWriter, AuditHandle, Lines) {
    let lines = Lines::default();
    let (w, h) = builder
        .spawn(MemorySink {
            lines: lines.clone(),
            gate: None,
        })
        .unwrap();
    (w, h, lines)
}

pub fn gated(builder: AuditWriterBuilder, gate: Arc<Gate>) -> (AuditWriter, AuditHandle, Lines) {
    let lines = Lines::default();
    let (w, h) = builder
        .spawn(MemorySink {
            lines: lines.clone(),
            gate: Some(gate),
        })
        .unwrap();
    (w, h, lines)
}

use nhi_guard_testkit::temp::TempDir;

/// A fresh directory for a test, removed with its contents when dropped.
pub fn tmp_dir(name: &str) -> TempDir {
    TempDir::unique(&format!("nhi-guard-audit-{name}"))
}

#[derive(Debug)]
pub struct HandlerFailed;

impl std::fmt::Display for HandlerFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("handler failed")
    }
}

impl std::error::Error for HandlerFailed {}

pub fn principal(credential: CredentialInfo) -> Principal {
    let record = ClientRecord::builder(
        "inventory-sync",
        "fulfilment-team@example.com",
        "Syncs stock levels",
        SystemTime::now() + Duration::from_secs(86_400 * 365),
    )
    .scopes(ScopeSet::parse("orders:read inventory:read").unwrap())
    .tier("gold")
    .build()
    .unwrap();
    Principal::new(
        Arc::new(record),
        credential,
        ScopeSet::parse("orders:read").unwrap(),
        Tier::BUILT_IN_DEFAULT,
    )
    .issuer("https://issuer.example.com")
}

fn reject(ctx: &SecurityContext, denial: Denial) -> Response<String> {
    ctx.deny(&denial);
    let res = DefaultRenderer::new().render(&denial, Protocol::Http);
    let (mut parts, body) = res.into_parts();
    parts.extensions.insert(denial);
    Response::from_parts(parts, String::from_utf8_lossy(&body).into_owned())
}

fn outcome(limited: bool) -> RateLimitOutcome {
    RateLimitOutcome {
        policy: Arc::from("per-client"),
        limited,
        quota: 20,
        window_secs: 2,
        remaining: if limited { 0 } else { 19 },
        reset_secs: 1,
    }
}

/// The test stack: identity, risk, rate limit and scope "controls" in one
/// handler, driven by the `x-test-mode` header (never recorded).
pub async fn handler<B>(req: Request<B>) -> Result<Response<String>, HandlerFailed> {
    let ctx = SecurityContext::from_extensions(req.extensions())
        .cloned()
        .expect("the audit layer created the context");
    let mode = req
        .headers()
        .get("x-test-mode")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if mode != "no-route" {
        ctx.update(|s| s.route = Some(Arc::from("/orders/{id}")));
    }
    match mode.as_str() {
        "error" => return Err(HandlerFailed),
        "panic" => panic!("handler panicked on purpose"),
        "hang" => std::future::pending::<()>().await,
        "no-control" => return Ok(Response::new("unguarded".into())),
        _ => {}
    }
    // Identity.
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
    let api_key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    match (auth.and_then(|a| a.strip_prefix("Bearer ")), api_key) {
        (Some(token), _) => {
            ctx.update(|s| {
                s.credential_kind = Some(IdentityKind::ServiceAccount);
                s.credential_fingerprint = Some(CredentialFingerprint::of(token.as_bytes()));
            });
            if token != VALID_TOKEN {
                ctx.update(|s| s.identity_failure = Some("token_invalid"));
                return Ok(reject(
                    &ctx,
                    Denial::invalid_token(
                        Control::Identity,
                        "token_invalid",
                        "The access token is not valid",
                    ),
                ));
            }
            ctx.set_principal(principal(CredentialInfo::Jwt {
                kid: Some(Arc::from("k1")),
                alg: Arc::from("ES256"),
                jti: Some(Arc::from("jti-42")),
                certificate_bound: false,
            }));
        }
        (None, Some(key)) => {
            ctx.update(|s| s.credential_fingerprint = Some(CredentialFingerprint::of(key.as_bytes())));
            if key != API_KEY {
                return Ok(reject(
                    &ctx,
                    Denial::invalid_token(Control::Identity, "api_key_unknown", "Unknown API key"),
                ));
            }
            ctx.set_principal(principal(CredentialInfo::ApiKey {
                prefix: CredentialInfo::api_key_prefix(key, 8),
            }));
        }
        (None, None) if req.headers().contains_key("x-test-cert") => {
            ctx.update(|s| s.credential_fingerprint = Some(CredentialFingerprint::of(b"der-bytes")));
            ctx.set_principal(principal(CredentialInfo::Certificate {
                thumbprint: Arc::from("q3R0aHVtYnByaW50"),
                spiffe_id: Some(Arc::from("spiffe://example.org/ns/prod/sa/sync")),
            }));
        }
        (None, None) => return Ok(reject(&ctx, Denial::missing_credential(Control::Identity))),
    }
    ctx.allow();
    // Risk.
    let (score, action) = if mode == "risk" {
        (85, "block")
    } else {
        (10, "allow")
    };
    ctx.update(|s| {
        s.risk = Some(RiskAssessment {
            score,
            action: action.into(),
            signals: vec![SignalHit {
                signal: "new_network",
                points: score,
                reason: "first request from this network".into(),
            }],
        })
    });
    if mode == "risk" {
        return Ok(reject(
            &ctx,
            Denial::forbidden(Control::Risk, "risk_blocked", "The request was blocked"),
        ));
    }
    if mode == "shadow" {
        ctx.record_shadow_denial(&Denial::forbidden(Control::Risk, "risk_blocked", "shadow"));
    }
    // Rate limit.
    let limited = mode == "rate";
    ctx.update(|s| s.rate_limit = Some(outcome(limited)));
    if limited {
        return Ok(reject(
            &ctx,
            Denial::rate_limited(
                Control::RateLimit,
                "rate_limited",
                "Slow down",
                Duration::from_secs(1),
            )
            .rate_limit(outcome(true)),
        ));
    }
    // Scope.
    let required = if mode == "scope" {
        "orders:write"
    } else {
        "orders:read"
    };
    let required = ScopeSet::parse(required).unwrap();
    let granted = ScopeSet::parse("orders:read").unwrap();
    let missing = required.difference(&granted);
    ctx.update(|s| {
        s.scopes = Some(ScopeOutcome {
            rule: Some(Arc::from("/orders/{id}")),
            required: required.clone(),
            granted: granted.clone(),
            missing: missing.clone(),
        })
    });
    if !missing.is_empty() {
        return Ok(reject(
            &ctx,
            Denial::insufficient_scope(Control::Scope, required, missing),
        ));
    }
    let mut res = Response::new(String::from("{\"ok\":true}"));
    *res.status_mut() = if mode == "created" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(res)
}

pub fn request(method: &str, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}
