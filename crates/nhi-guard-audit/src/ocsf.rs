//! The OCSF mapping: an [`AuditEvent`] becomes an API Activity (class 6003) record;
//! chain starts and checkpoints are Application Lifecycle (class 6002) records.
//!
//! Every struct here declares its fields in byte-wise sorted key order and skips
//! absent values, so `serde_json` writes the canonical form directly (see
//! [`crate::chain`]); a test checks this against the independent canonicaliser.

use std::fmt::Display;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Version};
use nhi_guard_core::ScopeSet;
use nhi_guard_core::context::RequestId;
use nhi_guard_core::context::{ContextState, Control, Decision};
use nhi_guard_core::principal::CredentialInfo;
use serde::{Serialize, Serializer};

use crate::event::{AuditEvent, Completion};

/// OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";
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

struct Disp<T>(T);

impl<T: Display> Serialize for Disp<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

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

#[derive(Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_uid: Option<&'a str>,
    name: &'a str,
    #[serde(rename = "type")]
    type_: &'a str,
    type_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
}

#[derive(Serialize)]
struct Idp<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Actor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<Idp<'a>>,
    user: User<'a>,
}

#[derive(Serialize)]
struct ApiRequest<'a> {
    uid: &'a str,
}

#[derive(Serialize)]
struct ApiResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize)]
struct Service<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Api<'a> {
    operation: String,
    request: ApiRequest<'a>,
    response: ApiResponse<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<Service<'a>>,
}

#[derive(Serialize)]
struct Header<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct Url<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string: Option<&'a str>,
}

#[derive(Serialize)]
struct HttpRequest<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    http_headers: Vec<Header<'a>>,
    http_method: &'a str,
    url: Url<'a>,
    version: &'static str,
}

#[derive(Serialize)]
struct HttpResponse {
    code: u16,
    latency: u64,
}

#[derive(Serialize)]
struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<Disp<std::net::IpAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Credential<'a> {
    // Untagged with an explicit `type` field last: serde writes an internal tag
    // first, which would break the sorted (canonical) key order.
    ApiKey {
        prefix: &'a str,
        #[serde(rename = "type")]
        type_: &'static str,
    },
    Certificate {
        #[serde(skip_serializing_if = "Option::is_none")]
        spiffe_id: Option<&'a str>,
        thumbprint: &'a str,
        #[serde(rename = "type")]
        type_: &'static str,
    },
    Jwt {
        alg: &'a str,
        certificate_bound: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        jti: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        kid: Option<&'a str>,
        #[serde(rename = "type")]
        type_: &'static str,
    },
    Other {
        #[serde(rename = "type")]
        type_: &'static str,
    },
}

/// Governance facts about the verified client; who it is (id, subject, kind,
/// issuer) is in `actor`.
#[derive(Serialize)]
struct Client<'a> {
    credential: Credential<'a>,
    expiring_soon: bool,
    owner: &'a str,
    purpose: &'a str,
    tier: &'a str,
}

#[derive(Serialize)]
struct RateLimit<'a> {
    limited: bool,
    policy: &'a str,
    quota: u64,
    remaining: u64,
    reset_secs: u64,
    window_secs: u64,
}

#[derive(Serialize)]
struct Signal<'a> {
    points: u32,
    reason: &'a str,
    signal: &'a str,
}

#[derive(Serialize)]
struct Risk<'a> {
    action: &'a str,
    score: u32,
    signals: Vec<Signal<'a>>,
}

#[derive(Serialize)]
struct Scopes<'a> {
    granted: &'a ScopeSet,
    missing: &'a ScopeSet,
    required: &'a ScopeSet,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
}

#[derive(Serialize)]
struct Shadow {
    control: &'static str,
    reason: &'static str,
    status: u16,
}

#[derive(Serialize)]
struct Extension<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<Client<'a>>,
    completion: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    control: Option<&'static str>,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    denied_status: Option<u16>,
    dropped_total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_failure: Option<&'static str>,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    risk: Option<Risk<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Scopes<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shadow_denials: Vec<Shadow>,
}

/// The chain fields shared by every record; `sha256` is spliced in after hashing.
#[derive(Serialize)]
struct RequestUnmapped<'a> {
    nhi_guard: Extension<'a>,
    prev_sha256: &'a str,
    seq: u64,
}

#[derive(Serialize)]
struct ApiActivity<'a> {
    action: &'static str,
    action_id: u32,
    activity_id: u32,
    activity_name: &'static str,
    actor: Actor<'a>,
    api: Api<'a>,
    category_name: &'static str,
    category_uid: u32,
    class_name: &'static str,
    class_uid: u32,
    disposition: &'static str,
    disposition_id: u32,
    duration: u64,
    http_request: HttpRequest<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_response: Option<HttpResponse>,
    metadata: Metadata<'a>,
    severity: &'static str,
    severity_id: u32,
    src_endpoint: Endpoint,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<Disp<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'static str>,
    status_id: u32,
    time: u64,
    type_name: &'static str,
    type_uid: u32,
    unmapped: RequestUnmapped<'a>,
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
/// canonical form that is hashed. Ends with `}}`.
pub(crate) fn write_api_activity(
    buf: &mut Vec<u8>,
    ev: &AuditEvent,
    state: &ContextState,
    prev_sha256: &str,
    seq: u64,
    dropped_total: u64,
) -> serde_json::Result<()> {
    let (activity_id, activity_name) = activity(&ev.info.method);
    let (decision, control, reason, denied_status) = decision_fields(&ev.decision);
    let denied = denied_status.is_some();
    let route = ev.route(state);
    let latency_ms = u64::try_from(ev.latency.as_millis()).unwrap_or(u64::MAX);
    let latency_us = u64::try_from(ev.latency.as_micros()).unwrap_or(u64::MAX);

    let success =
        ev.completion == Completion::Response && !denied && ev.status.is_some_and(|s| s.as_u16() < 400);
    let severity_id = match ev.completion {
        Completion::Panicked => 4,
        Completion::HandlerError | Completion::Cancelled => 2,
        Completion::Response if denied => 3,
        Completion::Response if ev.status.is_some_and(|s| s.is_server_error()) => 2,
        Completion::Response => 1,
    };
    let status_detail = match ev.completion {
        Completion::Response => reason,
        other => Some(other.as_str()),
    };
    let (action, action_id, disposition, disposition_id) = match ev.decision {
        Decision::Allowed => ("Allowed", 1, "Allowed", 1),
        Decision::Denied(_) => ("Denied", 2, "Blocked", 2),
        Decision::Pending => ("Unknown", 0, "Unknown", 0),
    };

    let principal = state.principal.as_ref();
    // Same text as the fingerprint's `Display`, without the formatting machinery.
    let fingerprint = state
        .credential_fingerprint
        .map(|f| crate::chain::hex(f.as_bytes()));
    let kind = principal
        .map(|p| p.kind())
        .or(state.credential_kind)
        .map(|k| k.as_str());
    let user = match principal {
        Some(p) => User {
            credential_uid: fingerprint.as_deref(),
            name: p.subject_name(),
            type_: kind.unwrap_or("unknown"),
            type_id: 99,
            uid: Some(p.client_id().as_str()),
        },
        None => User {
            credential_uid: fingerprint.as_deref(),
            name: "anonymous",
            type_: kind.unwrap_or("unknown"),
            type_id: 0,
            uid: None,
        },
    };
    let actor = Actor {
        idp: principal.and_then(|p| p.issuer_name()).map(|name| Idp { name }),
        user,
    };
    let client = principal.map(|p| Client {
        credential: match p.credential() {
            CredentialInfo::Jwt {
                kid,
                alg,
                jti,
                certificate_bound,
            } => Credential::Jwt {
                alg,
                certificate_bound: *certificate_bound,
                jti: jti.as_deref(),
                kid: kid.as_deref(),
                type_: "jwt",
            },
            CredentialInfo::ApiKey { prefix } => Credential::ApiKey {
                prefix,
                type_: "api_key",
            },
            CredentialInfo::Certificate {
                thumbprint,
                spiffe_id,
            } => Credential::Certificate {
                spiffe_id: spiffe_id.as_deref(),
                thumbprint,
                type_: "certificate",
            },
            _ => Credential::Other { type_: "other" },
        },
        expiring_soon: state.client_expiring_soon,
        owner: p.owner(),
        purpose: p.purpose(),
        tier: p.tier_name(),
    });

    let mut id_buf = [0u8; 36];
    let request_id = format_request_id(ev.request_id, &mut id_buf);
    let operation = match route {
        Some(r) => format!("{} {r}", ev.info.method),
        None => ev.info.method.to_string(),
    };
    let record = ApiActivity {
        action,
        action_id,
        activity_id,
        activity_name,
        actor,
        api: Api {
            operation,
            request: ApiRequest { uid: request_id },
            response: ApiResponse {
                code: ev.status.map(|s| s.as_u16()),
                error: reason,
            },
            service: ev.service_name.as_deref().map(|name| Service { name }),
        },
        category_name: "Application Activity",
        category_uid: CATEGORY_APPLICATION,
        class_name: "API Activity",
        class_uid: CLASS_API_ACTIVITY,
        disposition,
        disposition_id,
        duration: latency_ms,
        http_request: HttpRequest {
            http_headers: ev
                .info
                .headers
                .iter()
                .map(|(n, v)| Header {
                    name: n.as_str(),
                    value: v,
                })
                .collect(),
            http_method: ev.info.method.as_str(),
            url: Url {
                path: route,
                query_string: ev.info.query.as_deref(),
            },
            version: http_version(ev.info.version),
        },
        http_response: ev.status.map(|s| HttpResponse {
            code: s.as_u16(),
            latency: latency_ms,
        }),
        metadata: Metadata {
            product: PRODUCT,
            profiles: &["security_control"],
            uid: Some(request_id),
            version: OCSF_VERSION,
        },
        severity: severity_name(severity_id),
        severity_id,
        src_endpoint: Endpoint {
            ip: ev.client_addr.map(|a| Disp(a.ip())),
            port: ev
                .client_addr
                .filter(|a| !a.is_forwarded())
                .map(|a| a.peer().port()),
        },
        status: if success { "Success" } else { "Failure" },
        status_code: ev.status.map(|s| Disp(s.as_u16())),
        status_detail,
        status_id: if success { 1 } else { 2 },
        time: epoch_ms(ev.received_at),
        type_name: type_name(activity_id),
        type_uid: CLASS_API_ACTIVITY * 100 + activity_id,
        unmapped: RequestUnmapped {
            nhi_guard: Extension {
                client,
                completion: ev.completion.as_str(),
                control,
                decision,
                denied_status,
                dropped_total,
                identity_failure: state.identity_failure,
                latency_us,
                rate_limit: state.rate_limit.as_ref().map(|r| RateLimit {
                    limited: r.limited,
                    policy: &r.policy,
                    quota: r.quota,
                    remaining: r.remaining,
                    reset_secs: r.reset_secs,
                    window_secs: r.window_secs,
                }),
                reason,
                risk: state.risk.as_ref().map(|r| Risk {
                    action: &r.action,
                    score: r.score,
                    signals: r
                        .signals
                        .iter()
                        .map(|s| Signal {
                            points: s.points,
                            reason: &s.reason,
                            signal: s.signal,
                        })
                        .collect(),
                }),
                scopes: state.scopes.as_ref().map(|s| Scopes {
                    granted: &s.granted,
                    missing: &s.missing,
                    required: &s.required,
                    rule: s.rule.as_deref(),
                }),
                shadow_denials: state
                    .shadow_denials
                    .iter()
                    .map(|d| Shadow {
                        control: d.control.as_str(),
                        reason: d.reason,
                        status: d.status.as_u16(),
                    })
                    .collect(),
            },
            prev_sha256,
            seq,
        },
    };
    serde_json::to_writer(buf, &record)
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
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled_out_total: Option<u64>,
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

/// Writes a chain start or checkpoint record without its `sha256` into `buf`.
pub(crate) fn write_chain_record(
    buf: &mut Vec<u8>,
    mark: ChainMark,
    time: SystemTime,
    prev_sha256: &str,
    seq: u64,
) -> serde_json::Result<()> {
    let (message, chain) = match mark {
        ChainMark::Start { reason } => (
            "audit chain start",
            ChainFields {
                count: None,
                dropped_total: None,
                is_final: None,
                kind: "start",
                reason: Some(reason),
                requests: None,
                sampled_out_total: None,
            },
        ),
        ChainMark::Checkpoint {
            requests,
            dropped_total,
            sampled_out_total,
            is_final,
        } => (
            "audit chain checkpoint",
            ChainFields {
                count: Some(seq),
                dropped_total: Some(dropped_total),
                is_final: Some(is_final),
                kind: "checkpoint",
                reason: None,
                requests: Some(requests),
                sampled_out_total: Some(sampled_out_total),
            },
        ),
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
