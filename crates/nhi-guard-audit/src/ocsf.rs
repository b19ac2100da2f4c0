//! The OCSF mapping: each request becomes an API Activity (class 6003) record;
//! chain starts and checkpoints are Application Lifecycle (class 6002) records.
//! The mapping is documented in the crate README.
//!
//! Records are written directly in canonical form (keys in byte-wise sorted order,
//! absent values omitted; see [`crate::chain`]): request records by hand, chain
//! records through `serde` structs whose fields are declared in sorted order. The
//! test suite re-canonicalises every record it writes to check this.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Version};
use nhi_guard_core::context::RequestId;
use nhi_guard_core::context::{ContextState, Control, Decision};
use nhi_guard_core::principal::CredentialInfo;
use serde::Serialize;

use crate::event::{AuditEvent, Completion};

/// The OCSF schema version as a literal, for the constant runs of the record.
macro_rules! ocsf_version {
    () => {
        "1.3.0"
    };
}

/// OCSF schema version the records follow.
pub const OCSF_VERSION: &str = ocsf_version!();
/// `metadata.product.name` and `vendor_name`.
pub const PRODUCT_NAME: &str = "nhi-guard";
/// `metadata.product.version`.
pub const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// API Activity.
pub const CLASS_API_ACTIVITY: u32 = 6003;
/// Application Lifecycle.
pub const CLASS_APPLICATION_LIFECYCLE: u32 = 6002;
/// Application Activity.
pub const CATEGORY_APPLICATION: u32 = 6;

/// `activity_id` and its caption for an HTTP method.
#[cfg(test)]
#[test]
fn request_id_formatting_matches_display() {
    for _ in 0..3 {
        let id = RequestId::next();
        let mut buf = [0u8; 36];
        assert_eq!(format_request_id(id, &mut buf), id.to_string());
    }
}

pub(crate) fn activity(method: &Method) -> (u32, &'static str) {
    match *method {
        Method::POST => (1, "Create"),
        Method::GET | Method::HEAD => (2, "Read"),
        Method::PUT | Method::PATCH => (3, "Update"),
        Method::DELETE => (4, "Delete"),
        _ => (99, "Other"),
    }
}

/// Formats a request id like its `Display` (8-4-4-4-12 hex digits) without the
/// formatting machinery: it appears three times in every record.
fn format_request_id(id: RequestId, buf: &mut [u8; 36]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = id.as_u128();
    let mut nibble = 0;
    for (i, slot) in buf.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
        } else {
            let shift = 124 - 4 * nibble;
            *slot = HEX[((v >> shift) & 0xf) as usize];
            nibble += 1;
        }
    }
    std::str::from_utf8(buf).unwrap_or("")
}

fn type_name(activity_id: u32) -> &'static str {
    match activity_id {
        1 => "API Activity: Create",
        2 => "API Activity: Read",
        3 => "API Activity: Update",
        4 => "API Activity: Delete",
        _ => "API Activity: Other",
    }
}

/// `http_request.http_method`: the methods OCSF 1.3 enumerates.
fn ocsf_http_method(m: &Method) -> Option<&'static str> {
    Some(match *m {
        Method::CONNECT => "CONNECT",
        Method::DELETE => "DELETE",
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

fn http_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

fn epoch_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

const PRODUCT: Product = Product {
    name: PRODUCT_NAME,
    vendor_name: PRODUCT_NAME,
    version: PRODUCT_VERSION,
};

#[derive(Serialize)]
struct Metadata<'a> {
    product: Product,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    profiles: &'a [&'a str],
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    version: &'static str,
}

fn severity_name(id: u32) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        _ => "Unknown",
    }
}

/// The extension's decision fields: (decision, control, reason, denied status).
pub(crate) fn decision_fields(
    decision: &Decision,
) -> (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<u16>,
) {
    match decision {
        Decision::Allowed => ("allowed", None, None, None),
        Decision::Denied(d) => (
            "denied",
            Some(control_name(d.control)),
            Some(d.reason),
            Some(d.status.as_u16()),
        ),
        Decision::Pending => ("none", None, None, None),
    }
}

fn control_name(c: Control) -> &'static str {
    c.as_str()
}

/// Writes the API Activity record for `ev` without its `sha256` into `buf`: the
/// canonical form that is hashed. Ends with `}}`. Keys are written in sorted
/// order by hand (see [`crate::json`]).
pub(crate) fn write_api_activity(
    buf: &mut Vec<u8>,
    scratch: &mut String,
    ev: &AuditEvent,
    state: &ContextState,
    prev_sha256: &str,
    seq: u64,
    dropped_total: u64,
) {
    use crate::json::{display, open, string};

    let (activity_id, activity_name) = activity(&ev.info.method);
    let (decision, control, reason, denied_status) = decision_fields(&ev.decision);
    let denied = denied_status.is_some();
    let route = ev.route(state);
    let latency_ms = u64::try_from(ev.latency.as_millis()).unwrap_or(u64::MAX);
    let latency_us = u64::try_from(ev.latency.as_micros()).unwrap_or(u64::MAX);
    let status = ev.status.map(|s| s.as_u16());

    let success = ev.completion == Completion::Response && !denied && status.is_some_and(|s| s < 400);
    let severity_id: u32 = match ev.completion {
        Completion::Panicked => 4,
        Completion::HandlerError | Completion::Cancelled => 2,
        Completion::Response if denied => 3,
        Completion::Response if status.is_some_and(|s| s >= 500) => 2,
        Completion::Response => 1,
    };
    let status_detail = match ev.completion {
        Completion::Response => reason,
        other => Some(other.as_str()),
    };
    let principal = state.principal.as_ref();
    let kind = principal
        .map(|p| p.kind())
        .or(state.credential_kind)
        .map_or("unknown", |k| k.as_str());
    let mut id_buf = [0u8; 36];
    let request_id = format_request_id(ev.request_id, &mut id_buf);

    // No `action` / `disposition`: OCSF 1.3 API Activity does not include the
    // Security Control profile (1.4 moved it into the base event). The decision
    // is `unmapped.nhi_guard.decision`, its outcome `status_id`.
    let mut root = open(buf);
    root.num(buf, "activity_id", u64::from(activity_id));
    root.lit(buf, "activity_name", activity_name);

    root.key(buf, "actor");
    let mut actor = open(buf);
    if let Some(issuer) = principal.and_then(|p| p.issuer_name()) {
        actor.key(buf, "idp");
        let mut idp = open(buf);
        idp.str(buf, "name", issuer);
        idp.close(buf);
    }
    actor.key(buf, "user");
    let mut user = open(buf);
    if let Some(fp) = state.credential_fingerprint {
        // Same text as the fingerprint's `Display`.
        user.hex(buf, "credential_uid", &crate::chain::hex(fp.as_bytes()));
    }
    match principal {
        Some(p) => {
            user.str(buf, "name", p.subject_name());
            user.str(buf, "type", kind);
            user.num(buf, "type_id", 99);
            user.str(buf, "uid", p.client_id().as_str());
        }
        None => {
            user.lit(buf, "name", "anonymous");
            // OCSF's caption of type_id 0; the credential's kind is in
            // unmapped.nhi_guard.credential_kind.
            user.lit(buf, "type", "Unknown");
            user.num(buf, "type_id", 0);
        }
    }
    user.close(buf);
    actor.close(buf);

    root.key(buf, "api");
    let mut api = open(buf);
    api.key(buf, "operation");
    scratch.clear();
    scratch.push_str(ev.info.method.as_str());
    if let Some(r) = route {
        scratch.push(' ');
        scratch.push_str(r);
    }
    string(buf, scratch);
    api.key(buf, "request");
    let mut req = open(buf);
    req.hex(buf, "uid", request_id);
    req.close(buf);
    api.key(buf, "response");
    let mut resp = open(buf);
    if let Some(code) = status {
        resp.num(buf, "code", u64::from(code));
    }
    resp.opt_str(buf, "error", reason);
    resp.close(buf);
    if let Some(name) = ev.service_name.as_deref() {
        api.key(buf, "service");
        let mut svc = open(buf);
        svc.str(buf, "name", name);
        svc.close(buf);
    }
    api.close(buf);

    // CATEGORY_APPLICATION and CLASS_API_ACTIVITY (a test checks they agree).
    root.members(
        buf,
        r#""category_name":"Application Activity","category_uid":6,"class_name":"API Activity","class_uid":6003"#,
    );
    if let Some(name) = ev.service_name.as_deref() {
        root.key(buf, "dst_endpoint");
        let mut dst = open(buf);
        dst.str(buf, "svc_name", name);
        dst.close(buf);
    }
    root.num(buf, "duration", latency_ms);

    root.key(buf, "http_request");
    let mut http = open(buf);
    if !ev.info.headers.is_empty() {
        http.key(buf, "http_headers");
        buf.push(b'[');
        for (i, (name, value)) in ev.info.headers.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            let mut h = open(buf);
            h.str(buf, "name", name.as_str());
            h.str(buf, "value", value);
            h.close(buf);
        }
        buf.push(b']');
    }
    // OCSF 1.3 enumerates the methods; another one (PATCH among them, added in
    // 1.6) is left out here and named by `api.operation` alone.
    if let Some(method) = ocsf_http_method(&ev.info.method) {
        http.lit(buf, "http_method", method);
    }
    // A URL needs its `path` (or `url_string`): none without a route.
    if let Some(path) = route {
        http.key(buf, "url");
        let mut url = open(buf);
        url.str(buf, "path", path);
        url.opt_str(buf, "query_string", ev.info.query.as_deref());
        url.close(buf);
    }
    // The fields SIEMs map, from the allow-listed headers (never captured
    // otherwise): the user agent, and the forwarding chain as sent.
    let allowed = |name: &'static str| {
        ev.info
            .headers
            .iter()
            .filter(move |(n, _)| n.as_str() == name)
            .map(|(_, v)| &**v)
    };
    if let Some(ua) = allowed("user-agent").next() {
        http.str(buf, "user_agent", ua);
    }
    http.lit(buf, "version", http_version(ev.info.version));
    let mut forwarded = allowed("x-forwarded-for")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .peekable();
    if forwarded.peek().is_some() {
        http.key(buf, "x_forwarded_for");
        buf.push(b'[');
        for (i, ip) in forwarded.enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            crate::json::string(buf, ip);
        }
        buf.push(b']');
    }
    http.close(buf);

    // No `http_response`: OCSF 1.3 API Activity does not define it (1.4 added
    // it). The status is `api.response.code` and `status_code`, the latency
    // `duration`.

    // PRODUCT_NAME, PRODUCT_VERSION and OCSF_VERSION (a test checks they agree).
    root.members(
        buf,
        concat!(
            r#""metadata":{"product":{"name":"nhi-guard","vendor_name":"nhi-guard","version":""#,
            env!("CARGO_PKG_VERSION"),
            r#""},"uid":""#
        ),
    );
    buf.extend_from_slice(request_id.as_bytes());
    buf.extend_from_slice(concat!(r#"","version":""#, ocsf_version!(), r#""}"#).as_bytes());

    // The route template the request was matched to.
    if let Some(r) = route {
        root.key(buf, "resources");
        buf.push(b'[');
        let mut res = open(buf);
        res.str(buf, "name", r);
        res.lit(buf, "type", "route");
        res.close(buf);
        buf.push(b']');
    }

    root.lit(buf, "severity", severity_name(severity_id));
    root.num(buf, "severity_id", u64::from(severity_id));

    // Required by the class: the client's address, or, when no address could be
    // resolved (no socket peer in the request), a named unknown rather than an
    // empty endpoint.
    root.key(buf, "src_endpoint");
    let mut src = open(buf);
    match ev.client_addr {
        Some(addr) => {
            src.key(buf, "ip");
            display(buf, scratch, addr.ip());
            if !addr.is_forwarded() {
                src.num(buf, "port", u64::from(addr.peer().port()));
            }
        }
        None => src.lit(buf, "name", "unknown"),
    }
    src.close(buf);

    root.lit(buf, "status", if success { "Success" } else { "Failure" });
    if let Some(code) = status {
        root.key(buf, "status_code");
        buf.push(b'"');
        crate::json::number(buf, u64::from(code));
        buf.push(b'"');
    }
    root.opt_str(buf, "status_detail", status_detail);
    root.num(buf, "status_id", if success { 1 } else { 2 });
    root.num(buf, "time", epoch_ms(ev.received_at));
    root.lit(buf, "type_name", type_name(activity_id));
    root.num(buf, "type_uid", u64::from(CLASS_API_ACTIVITY * 100 + activity_id));

    root.key(buf, "unmapped");
    let mut unmapped = open(buf);
    unmapped.key(buf, "nhi_guard");
    let mut ext = open(buf);
    if let Some(p) = principal {
        ext.key(buf, "client");
        let mut client = open(buf);
        client.key(buf, "credential");
        let mut cred = open(buf);
        match p.credential() {
            CredentialInfo::Jwt {
                kid,
                alg,
                jti,
                certificate_bound,
            } => {
                cred.str(buf, "alg", alg);
                cred.bool(buf, "certificate_bound", *certificate_bound);
                cred.opt_str(buf, "jti", jti.as_deref());
                cred.opt_str(buf, "kid", kid.as_deref());
                cred.lit(buf, "type", "jwt");
            }
            CredentialInfo::ApiKey { prefix } => {
                cred.str(buf, "prefix", prefix);
                // Past the rotation date the inventory gave the key.
                if state.credential_rotation_due {
                    cred.bool(buf, "rotation_due", true);
                }
                cred.lit(buf, "type", "api_key");
            }
            CredentialInfo::Certificate {
                thumbprint,
                spiffe_id,
            } => {
                cred.opt_str(buf, "spiffe_id", spiffe_id.as_deref());
                cred.str(buf, "thumbprint", thumbprint);
                cred.lit(buf, "type", "certificate");
            }
            _ => cred.lit(buf, "type", "other"),
        }
        cred.close(buf);
        client.bool(buf, "expiring_soon", state.client_expiring_soon);
        client.str(buf, "owner", p.owner());
        client.str(buf, "purpose", p.purpose());
        client.str(buf, "tier", p.tier_name());
        client.close(buf);
    }
    ext.lit(buf, "completion", ev.completion.as_str());
    ext.opt_str(buf, "control", control);
    if principal.is_none() && kind != "unknown" {
        ext.str(buf, "credential_kind", kind);
    }
    ext.lit(buf, "decision", decision);
    if let Some(s) = denied_status {
        ext.num(buf, "denied_status", u64::from(s));
    }
    ext.num(buf, "dropped_total", dropped_total);
    ext.opt_str(buf, "identity_failure", state.identity_failure);
    ext.num(buf, "latency_us", latency_us);
    if let Some(r) = &state.rate_limit {
        ext.key(buf, "rate_limit");
        let mut rl = open(buf);
        rl.bool(buf, "limited", r.limited);
        rl.str(buf, "policy", &r.policy);
        rl.num(buf, "quota", r.quota);
        rl.num(buf, "remaining", r.remaining);
        rl.num(buf, "reset_secs", r.reset_secs);
        rl.num(buf, "window_secs", r.window_secs);
        rl.close(buf);
    }
    ext.opt_str(buf, "reason", reason);
    if let Some(r) = &state.risk {
        ext.key(buf, "risk");
        let mut risk = open(buf);
        risk.str(buf, "action", &r.action);
        risk.num(buf, "score", u64::from(r.score));
        risk.key(buf, "signals");
        buf.push(b'[');
        for (i, s) in r.signals.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            let mut sig = open(buf);
            sig.num(buf, "points", u64::from(s.points));
            sig.str(buf, "reason", &s.reason);
            sig.str(buf, "signal", s.signal);
            sig.close(buf);
        }
        buf.push(b']');
        risk.close(buf);
    }
    if let Some(s) = &state.scopes {
        ext.key(buf, "scopes");
        let mut sc = open(buf);
        sc.strs(buf, "granted", s.granted.iter());
        sc.strs(buf, "missing", s.missing.iter());
        sc.strs(buf, "required", s.required.iter());
        sc.opt_str(buf, "rule", s.rule.as_deref());
        sc.close(buf);
    }
    if !state.shadow_denials.is_empty() {
        ext.key(buf, "shadow_denials");
        buf.push(b'[');
        for (i, d) in state.shadow_denials.iter().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            let mut sd = open(buf);
            sd.str(buf, "control", d.control.as_str());
            sd.str(buf, "reason", d.reason);
            sd.num(buf, "status", u64::from(d.status.as_u16()));
            sd.close(buf);
        }
        buf.push(b']');
    }
    ext.close(buf);
    unmapped.str(buf, "prev_sha256", prev_sha256);
    unmapped.num(buf, "seq", seq);
    unmapped.close(buf);
    root.close(buf);
}

/// What a chain record marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainMark {
    /// The first record of a chain: at startup, after rotation.
    Start { reason: &'static str },
    /// A checkpoint over the records so far.
    Checkpoint {
        requests: u64,
        dropped_total: u64,
        sampled_out_total: u64,
        is_final: bool,
    },
}

#[derive(Serialize)]
struct ChainFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dropped_total: Option<u64>,
    #[serde(rename = "final", skip_serializing_if = "Option::is_none")]
    is_final: Option<bool>,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled_out_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
}

#[derive(Serialize)]
struct ChainUnmapped<'a> {
    chain: ChainFields,
    prev_sha256: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct Lifecycle<'a> {
    activity_id: u32,
    activity_name: &'static str,
    app: Product,
    category_name: &'static str,
    category_uid: u32,
    class_name: &'static str,
    class_uid: u32,
    message: &'static str,
    metadata: Metadata<'a>,
    severity: &'static str,
    severity_id: u32,
    status: &'static str,
    status_id: u32,
    time: u64,
    type_name: &'static str,
    type_uid: u32,
    unmapped: ChainUnmapped<'a>,
}

/// Writes a chain start or checkpoint record without its `sha256` into `buf`; a
/// checkpoint is authenticated as `auth` says.
pub(crate) fn write_chain_record(
    buf: &mut Vec<u8>,
    mark: ChainMark,
    time: SystemTime,
    prev_sha256: &str,
    seq: u64,
    auth: &crate::mac::CheckpointAuth,
) -> serde_json::Result<()> {
    let (message, chain) = match mark {
        ChainMark::Start { reason } => (
            "audit chain start",
            ChainFields {
                count: None,
                dropped_total: None,
                is_final: None,
                kind: "start",
                mac: None,
                reason: Some(reason),
                requests: None,
                sampled_out_total: None,
                sig: None,
            },
        ),
        ChainMark::Checkpoint {
            requests,
            dropped_total,
            sampled_out_total,
            is_final,
        } => {
            let claims = crate::mac::Claims {
                prev_sha256,
                seq,
                requests,
                dropped_total,
                sampled_out_total,
                is_final,
            };
            (
                "audit chain checkpoint",
                ChainFields {
                    count: Some(seq),
                    dropped_total: Some(dropped_total),
                    is_final: Some(is_final),
                    kind: "checkpoint",
                    mac: auth.mac(&claims),
                    reason: None,
                    requests: Some(requests),
                    sampled_out_total: Some(sampled_out_total),
                    sig: auth.sig(&claims),
                },
            )
        }
    };
    let record = Lifecycle {
        activity_id: 99,
        activity_name: "Other",
        app: PRODUCT,
        category_name: "Application Activity",
        category_uid: CATEGORY_APPLICATION,
        class_name: "Application Lifecycle",
        class_uid: CLASS_APPLICATION_LIFECYCLE,
        message,
        metadata: Metadata {
            product: PRODUCT,
            profiles: &[],
            uid: None,
            version: OCSF_VERSION,
        },
        severity: "Informational",
        severity_id: 1,
        status: "Success",
        status_id: 1,
        time: epoch_ms(time),
        type_name: "Application Lifecycle: Other",
        type_uid: CLASS_APPLICATION_LIFECYCLE * 100 + 99,
        unmapped: ChainUnmapped {
            chain,
            prev_sha256,
            seq,
        },
    };
    serde_json::to_writer(buf, &record)
}
