//! The gateway's configuration, read from `NHI_GUARD_*` environment variables and,
//! with `NHI_GUARD_CONFIG`, from a TOML file ([`FILE_KEYS`] and `[[route]]`,
//! `[[rate_group]]`); a variable that is set overrides the file. Any invalid value
//! stops start-up with a message naming the variable, or the file, line and key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use nhi_guard::config::{RouteEntry, routes_from_entries};
use nhi_guard::core::address::ForwardedHeader;
use nhi_guard::core::route::Routes;
use nhi_guard::ratelimit::store::Quota;
use toml::Spanned;

/// Everything the gateway reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `NHI_GUARD_LISTEN`, default `127.0.0.1:8080`.
    pub(crate) listen: SocketAddr,
    /// `NHI_GUARD_CLIENTS`: a TOML inventory file; the built-in demo inventory without it.
    pub(crate) clients: Option<PathBuf>,
    /// `NHI_GUARD_TRUSTED_PROXIES`: comma-separated CIDRs whose forwarding headers are believed.
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// `NHI_GUARD_FORWARDED_HEADER`: the one forwarding header the trusted proxies set
    /// (`x-forwarded-for`, the default, or `forwarded`).
    pub(crate) forwarded_header: ForwardedHeader,
    /// `NHI_GUARD_IPV6_PREFIX`: the prefix IPv6 clients are limited and scored by
    /// (default 64).
    pub(crate) ipv6_prefix: u8,
    /// `NHI_GUARD_ISSUER`: external token issuers, comma-separated, each discovered;
    /// empty: a demo issuer runs in-process.
    pub(crate) issuers: Vec<String>,
    /// `NHI_GUARD_JWKS_URL`: the issuer's JWKS (default: discovered from the issuer;
    /// only with a single issuer).
    pub(crate) jwks_url: Option<String>,
    /// `NHI_GUARD_CA_FILE`: a PEM bundle of extra trust anchors for the issuers and
    /// their JWKS (besides the platform's).
    pub(crate) ca_file: Option<PathBuf>,
    /// `NHI_GUARD_AUDIENCE`: the `aud` tokens must carry (default `nhi-guard-demo`).
    pub(crate) audience: String,
    /// `NHI_GUARD_REDIS_URL`: share rate-limit, risk, usage and revocation state
    /// through Redis: one URL (`redis://`, `rediss://` for TLS), or a Redis
    /// Cluster's seeds, comma-separated; with `NHI_GUARD_REDIS_CA_FILE`, the CA
    /// certificates `rediss://` trusts instead of the platform's.
    pub(crate) redis_url: Option<nhi_guard_redis::RedisTarget>,
    /// `NHI_GUARD_REDIS_TIMEOUT_MS`: how long a rate-limit or risk operation may
    /// wait for Redis before the failure policy applies (default 50).
    pub(crate) redis_timeout: Duration,
    /// `NHI_GUARD_AUDIT_LOG`: append audit records as JSON Lines to this file (default: tracing on stderr).
    pub(crate) audit_log: Option<PathBuf>,
    /// `NHI_GUARD_RISK_MODE`: `enforce` (default), `shadow` or `off`.
    pub(crate) risk_mode: RiskMode,
    /// `NHI_GUARD_ADDRESS_LIMIT`: `PER_SECOND:BURST` of the flood shield in front of
    /// identity (default `100:200`); verified clients are limited by their tier.
    pub(crate) address_limit: Quota,
    /// `NHI_GUARD_SHUTDOWN_GRACE`: seconds requests in flight get to finish after
    /// SIGTERM / SIGINT (default 10).
    pub(crate) shutdown_grace: Duration,
    /// `NHI_GUARD_AUDIT_KEY_FILE`: the key (32 bytes or more) that authenticates the
    /// audit log's checkpoints (HMAC-SHA-256); `nhi-guard audit verify --key`.
    pub(crate) audit_key_file: Option<PathBuf>,
    /// `NHI_GUARD_AUDIT_SIGNING_KEY_FILE`: an Ed25519 private key (PKCS#8 PEM) that
    /// signs the audit log's checkpoints; `nhi-guard audit verify --public-key`.
    pub(crate) audit_signing_key_file: Option<PathBuf>,
    /// `NHI_GUARD_AUDIT_SAMPLE_ALLOWED`: the share of allowed requests audited, from
    /// 0 to 1 (default 1; refusals are always recorded).
    pub(crate) audit_sample_allowed: f64,
    /// `NHI_GUARD_GRPC_LISTEN` as given (the authz_server example reads it).
    #[allow(dead_code, reason = "read by the authz_server example only")]
    pub(crate) grpc_listen: Option<String>,
    /// The file's `[[route]]` table; `None`: the demo routes.
    pub(crate) routes: Option<Routes>,
    /// The file's `[[rate_group]]` quotas: per client and route group.
    pub(crate) rate_groups: Vec<(String, Quota)>,
}

impl Config {
    /// Whether the built-in demo inventory (whose API keys are published in the
    /// README) may serve: only with the demo issuer, on a loopback listen address.
    pub(crate) fn demo_inventory_allowed(&self) -> bool {
        self.issuers.is_empty() && self.listen.ip().is_loopback()
    }

    /// The start-up line naming the trusted proxies and the header believed from
    /// them, when there are any.
    pub(crate) fn trusted_proxies_line(&self) -> Option<String> {
        (!self.trusted_proxies.is_empty()).then(|| {
            let nets: Vec<String> = self.trusted_proxies.iter().map(ToString::to_string).collect();
            format!(
                "believing {} from {}",
                self.forwarded_header.as_str(),
                nets.join(", ")
            )
        })
    }
}

/// How the risk layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RiskMode {
    /// Score and act.
    Enforce,
    /// Score and record, refuse nothing.
    Shadow,
    /// No risk layer.
    Off,
}

fn url(var: &str, v: String) -> Result<String, String> {
    let v = v.trim().to_owned();
    match v.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.host().is_some() => Ok(v.trim_end_matches('/').to_owned()),
        _ => Err(format!(
            "{var}={v:?} is not an absolute URL such as http://127.0.0.1:9000"
        )),
    }
}

/// Reads the configuration from a variable lookup (the process environment in `main`).
pub(crate) fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let file = match env("NHI_GUARD_CONFIG") {
        None => None,
        Some(path) => Some(ConfigFile::load(path.trim())?),
    };
    let get = |k: &str| env(k).or_else(|| file.as_ref().and_then(|f| f.value(k)));
    let mut config = from_values(&get).map_err(|e| match &file {
        // A value from the file: name the file, line and key as well.
        Some(f) => f.locate(&e, &env),
        None => e,
    })?;
    if let Some(file) = file {
        config.routes = file.routes;
        config.rate_groups = file.rate_groups;
    }
    Ok(config)
}

fn from_values(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
    let listen = match get("NHI_GUARD_LISTEN") {
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        Some(v) => v.trim().parse().map_err(|e| {
            format!("NHI_GUARD_LISTEN={v:?} is not a socket address such as 127.0.0.1:8080: {e}")
        })?,
    };
    let clients = match get("NHI_GUARD_CLIENTS") {
        None => None,
        Some(v) if v.trim().is_empty() => {
            return Err("NHI_GUARD_CLIENTS is set but empty; unset it to use the demo inventory".into());
        }
        Some(v) => Some(PathBuf::from(v)),
    };
    let trusted_proxies = match get("NHI_GUARD_TRUSTED_PROXIES") {
        None => Vec::new(),
        Some(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("NHI_GUARD_TRUSTED_PROXIES: {s:?} is not a CIDR such as 10.0.0.0/8"))
            })
            .collect::<Result<_, _>>()?,
    };
    let forwarded_header = match get("NHI_GUARD_FORWARDED_HEADER") {
        None => ForwardedHeader::XForwardedFor,
        Some(v) => v
            .parse()
            .map_err(|_| format!("NHI_GUARD_FORWARDED_HEADER={v:?} must be x-forwarded-for or forwarded"))?,
    };
    let ipv6_prefix = match get("NHI_GUARD_IPV6_PREFIX") {
        None => 64,
        Some(v) => v
            .trim()
            .trim_start_matches('/')
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 128)
            .ok_or_else(|| format!("NHI_GUARD_IPV6_PREFIX={v:?} is not a prefix length from 0 to 128"))?,
    };
    let issuers = match get("NHI_GUARD_ISSUER") {
        None => Vec::new(),
        Some(v) => {
            let list: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| url("NHI_GUARD_ISSUER", s.to_owned()))
                .collect::<Result<_, _>>()?;
            if list.is_empty() {
                return Err("NHI_GUARD_ISSUER is set but names no issuer".into());
            }
            if let Some(dup) = list
                .iter()
                .enumerate()
                .find_map(|(i, a)| list[..i].contains(a).then_some(a))
            {
                return Err(format!("NHI_GUARD_ISSUER names {dup} twice"));
            }
            list
        }
    };
    let jwks_url = get("NHI_GUARD_JWKS_URL")
        .map(|v| url("NHI_GUARD_JWKS_URL", v))
        .transpose()?;
    match (&jwks_url, issuers.len()) {
        (Some(_), 0) => {
            return Err(
                "NHI_GUARD_JWKS_URL needs NHI_GUARD_ISSUER (the demo issuer serves its own keys)".into(),
            );
        }
        (Some(_), n) if n > 1 => {
            return Err(format!(
                "NHI_GUARD_JWKS_URL names one key set, but NHI_GUARD_ISSUER lists {n} issuers; unset it and let each issuer's keys be discovered"
            ));
        }
        _ => {}
    }
    let ca_file = match get("NHI_GUARD_CA_FILE") {
        None => None,
        Some(v) if v.trim().is_empty() => return Err("NHI_GUARD_CA_FILE is set but empty".into()),
        Some(v) => Some(PathBuf::from(v)),
    };
    let audience = match get("NHI_GUARD_AUDIENCE") {
        None => "nhi-guard-demo".to_owned(),
        Some(v) if v.trim().is_empty() => return Err("NHI_GUARD_AUDIENCE is set but empty".into()),
        Some(v) => v.trim().to_owned(),
    };
    // Not echoed: a URL may carry a password (the target's errors never show it).
    let redis_url = match get("NHI_GUARD_REDIS_URL") {
        None => None,
        Some(v) => Some(nhi_guard_redis::RedisTarget::parse(&v).map_err(|e| {
            format!(
                "NHI_GUARD_REDIS_URL: {} (value not shown: it may hold a password)",
                e.message()
            )
        })?),
    };
    let redis_url = match (redis_url, get("NHI_GUARD_REDIS_CA_FILE")) {
        (target, None) => target,
        (None, Some(_)) => return Err("NHI_GUARD_REDIS_CA_FILE needs NHI_GUARD_REDIS_URL".into()),
        (Some(_), Some(v)) if v.trim().is_empty() => {
            return Err("NHI_GUARD_REDIS_CA_FILE is set but empty".into());
        }
        (Some(target), Some(v)) => Some(
            target
                .ca_file(v.trim())
                .map_err(|e| format!("NHI_GUARD_REDIS_CA_FILE: {}", e.message()))?,
        ),
    };
    let redis_timeout = match get("NHI_GUARD_REDIS_TIMEOUT_MS").as_deref().map(str::trim) {
        None => Duration::from_millis(50),
        Some(v) => match v.parse::<u64>() {
            Ok(ms @ 1..=60_000) => Duration::from_millis(ms),
            _ => {
                return Err(format!(
                    "NHI_GUARD_REDIS_TIMEOUT_MS must be milliseconds from 1 to 60000, not {v:?}"
                ));
            }
        },
    };
    let audit_log = match get("NHI_GUARD_AUDIT_LOG") {
        None => None,
        Some(v) if v.trim().is_empty() => return Err("NHI_GUARD_AUDIT_LOG is set but empty".into()),
        Some(v) => Some(PathBuf::from(v)),
    };
    let risk_mode = match get("NHI_GUARD_RISK_MODE").as_deref().map(str::trim) {
        None | Some("enforce") => RiskMode::Enforce,
        Some("shadow") => RiskMode::Shadow,
        Some("off") => RiskMode::Off,
        Some(other) => {
            return Err(format!(
                "NHI_GUARD_RISK_MODE={other:?} must be enforce, shadow or off"
            ));
        }
    };
    let address_limit = match get("NHI_GUARD_ADDRESS_LIMIT") {
        None => Quota::per_second(100)
            .and_then(|q| q.with_burst(200))
            .map_err(|e| format!("default address limit: {e}"))?,
        Some(v) => v
            .trim()
            .split_once(':')
            .and_then(|(rate, burst)| Some((rate.trim().parse().ok()?, burst.trim().parse().ok()?)))
            .and_then(|(rate, burst)| Quota::per_second(rate).and_then(|q| q.with_burst(burst)).ok())
            .ok_or_else(|| {
                format!(
                    "NHI_GUARD_ADDRESS_LIMIT={v:?} must be PER_SECOND:BURST, both at least 1, such as 100:200"
                )
            })?,
    };
    let shutdown_grace = match get("NHI_GUARD_SHUTDOWN_GRACE") {
        None => Duration::from_secs(10),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= 3600)
            .map(Duration::from_secs)
            .ok_or_else(|| {
                format!("NHI_GUARD_SHUTDOWN_GRACE={v:?} is not a number of seconds from 0 to 3600")
            })?,
    };
    let audit_key_file = get("NHI_GUARD_AUDIT_KEY_FILE").map(PathBuf::from);
    let audit_signing_key_file = get("NHI_GUARD_AUDIT_SIGNING_KEY_FILE").map(PathBuf::from);
    let audit_sample_allowed = match get("NHI_GUARD_AUDIT_SAMPLE_ALLOWED") {
        None => 1.0,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("NHI_GUARD_AUDIT_SAMPLE_ALLOWED={v:?} is not a share from 0 to 1"))?,
    };
    let config = Config {
        listen,
        clients,
        trusted_proxies,
        forwarded_header,
        ipv6_prefix,
        issuers,
        jwks_url,
        ca_file,
        audience,
        redis_url,
        redis_timeout,
        audit_log,
        risk_mode,
        address_limit,
        shutdown_grace,
        audit_sample_allowed,
        audit_key_file,
        audit_signing_key_file,
        grpc_listen: get("NHI_GUARD_GRPC_LISTEN"),
        routes: None,
        rate_groups: Vec::new(),
    };
    if config.clients.is_none() && !config.demo_inventory_allowed() {
        let why = if config.issuers.is_empty() {
            format!("the listen address {} is not loopback", config.listen)
        } else {
            "an external issuer is configured".to_owned()
        };
        return Err(format!(
            "NHI_GUARD_CLIENTS is not set and {why}: the built-in demo inventory (whose API keys are published) serves only with the demo issuer on a loopback address; set NHI_GUARD_CLIENTS to your client inventory (TOML)"
        ));
    }
    Ok(config)
}

/// The file's keys for the variables, one to one (`NHI_GUARD_` + upper case).
pub(crate) const FILE_KEYS: [(&str, &str); 20] = [
    ("listen", "NHI_GUARD_LISTEN"),
    ("clients", "NHI_GUARD_CLIENTS"),
    ("issuers", "NHI_GUARD_ISSUER"),
    ("jwks_url", "NHI_GUARD_JWKS_URL"),
    ("audience", "NHI_GUARD_AUDIENCE"),
    ("ca_file", "NHI_GUARD_CA_FILE"),
    ("redis_url", "NHI_GUARD_REDIS_URL"),
    ("redis_ca_file", "NHI_GUARD_REDIS_CA_FILE"),
    ("redis_timeout_ms", "NHI_GUARD_REDIS_TIMEOUT_MS"),
    ("audit_log", "NHI_GUARD_AUDIT_LOG"),
    ("audit_sample_allowed", "NHI_GUARD_AUDIT_SAMPLE_ALLOWED"),
    ("audit_key_file", "NHI_GUARD_AUDIT_KEY_FILE"),
    ("audit_signing_key_file", "NHI_GUARD_AUDIT_SIGNING_KEY_FILE"),
    ("risk_mode", "NHI_GUARD_RISK_MODE"),
    ("trusted_proxies", "NHI_GUARD_TRUSTED_PROXIES"),
    ("forwarded_header", "NHI_GUARD_FORWARDED_HEADER"),
    ("ipv6_prefix", "NHI_GUARD_IPV6_PREFIX"),
    ("address_limit", "NHI_GUARD_ADDRESS_LIMIT"),
    ("shutdown_grace", "NHI_GUARD_SHUTDOWN_GRACE"),
    ("grpc_listen", "NHI_GUARD_GRPC_LISTEN"),
];

/// `[[rate_group]]`: the per-client quota of one route group.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RateGroupQuota {
    name: String,
    per_second: Option<u32>,
    per_minute: Option<u32>,
    burst: Option<u32>,
}

/// The file's tables, each entry with its place in the file.
#[derive(serde::Deserialize)]
struct Tables {
    #[serde(default)]
    route: Option<Vec<Spanned<RouteEntry>>>,
    #[serde(default)]
    rate_group: Vec<Spanned<RateGroupQuota>>,
}

/// A loaded `NHI_GUARD_CONFIG` file.
struct ConfigFile {
    path: String,
    text: String,
    /// Each variable's value from the file, as the variable would spell it.
    values: Vec<(&'static str, String)>,
    routes: Option<Routes>,
    rate_groups: Vec<(String, Quota)>,
}

impl ConfigFile {
    fn load(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("NHI_GUARD_CONFIG={path}: {e}"))?;
        let at = |span: std::ops::Range<usize>| format!("{path}:{}", line(&text, span.start));
        let table: toml::Table = toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
        let mut values = Vec::new();
        for (key, value) in &table {
            if key == "route" || key == "rate_group" {
                continue;
            }
            let Some((_, var)) = FILE_KEYS.iter().find(|(k, _)| k == key) else {
                let known: Vec<&str> = FILE_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "{path}:{}: unknown key `{key}`; expected {}, [[route]] or [[rate_group]]",
                    line_of_key(&text, key),
                    known.join(", ")
                ));
            };
            let text_value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        format!(
                            "{path}:{}: {key}: expected a list of texts",
                            line_of_key(&text, key)
                        )
                    })?
                    .join(","),
                _ => {
                    return Err(format!(
                        "{path}:{}: {key}: expected a text, a number or a list of texts",
                        line_of_key(&text, key)
                    ));
                }
            };
            values.push((*var, text_value));
        }
        let tables: Tables = toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
        let routes = match tables.route {
            None => None,
            Some(entries) => Some(
                routes_from_entries(entries.into_iter().map(|r| {
                    let place = at(r.span());
                    (r.into_inner(), place)
                }))
                .map_err(|e| e.to_string())?,
            ),
        };
        let mut rate_groups = Vec::new();
        for g in tables.rate_group {
            let place = at(g.span());
            let g = g.into_inner();
            let quota = match (g.per_second, g.per_minute) {
                (Some(n), None) => Quota::per_second(n),
                (None, Some(n)) => Quota::per_minute(n),
                _ => {
                    return Err(format!(
                        "{place}: rate_group `{}`: give one of per_second or per_minute",
                        g.name
                    ));
                }
            }
            .and_then(|q| match g.burst {
                Some(b) => q.with_burst(b),
                None => Ok(q),
            })
            .map_err(|e| format!("{place}: rate_group `{}`: {e}", g.name))?;
            rate_groups.push((g.name, quota));
        }
        Ok(Self {
            path: path.to_owned(),
            text,
            values,
            routes,
            rate_groups,
        })
    }

    /// The file's value for variable `var`.
    fn value(&self, var: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(v, _)| *v == var)
            .map(|(_, value)| value.clone())
    }

    /// An error about a variable whose value came from the file, with its place.
    fn locate(&self, error: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
        FILE_KEYS
            .iter()
            .find(|(_, var)| error.starts_with(var) && env(var).is_none() && self.value(var).is_some())
            .map_or_else(
                || error.to_owned(),
                |(key, _)| format!("{}:{}: {key}: {error}", self.path, line_of_key(&self.text, key)),
            )
    }
}

/// The 1-based line of byte `offset`.
fn line(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line a top-level `key = ...` is written on.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// A TOML error as `path:line: message`.
fn toml_error(path: &str, text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => format!("{path}:{}: {}", line(text, span.start), e.message()),
        None => format!("{path}: {}", e.message()),
    }
}
