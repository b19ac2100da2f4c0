//! The gateway's configuration, read from `NHI_GUARD_*` environment variables.
//! Any invalid value stops start-up with a message naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// Everything the gateway reads from its environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `NHI_GUARD_LISTEN`, default `127.0.0.1:8080`.
    pub(crate) listen: SocketAddr,
    /// `NHI_GUARD_CLIENTS`: a TOML inventory file; the built-in demo inventory without it.
    pub(crate) clients: Option<PathBuf>,
    /// `NHI_GUARD_TRUSTED_PROXIES`: comma-separated CIDRs whose forwarding headers are believed.
    pub(crate) trusted_proxies: Vec<IpNet>,
    /// `NHI_GUARD_ISSUER`: an external token issuer; without it a demo issuer runs in-process.
    pub(crate) issuer: Option<String>,
    /// `NHI_GUARD_JWKS_URL`: the issuer's JWKS (default: discovered from the issuer).
    pub(crate) jwks_url: Option<String>,
    /// `NHI_GUARD_AUDIENCE`: the `aud` tokens must carry (default `nhi-guard-demo`).
    pub(crate) audience: String,
    /// `NHI_GUARD_REDIS_URL`: share rate-limit and risk state through Redis.
    pub(crate) redis_url: Option<String>,
    /// `NHI_GUARD_AUDIT_LOG`: append audit records as JSON Lines to this file (default: tracing on stderr).
    pub(crate) audit_log: Option<PathBuf>,
    /// `NHI_GUARD_RISK_MODE`: `enforce` (default), `shadow` or `off`.
    pub(crate) risk_mode: RiskMode,
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
pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
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
    let issuer = get("NHI_GUARD_ISSUER")
        .map(|v| url("NHI_GUARD_ISSUER", v))
        .transpose()?;
    let jwks_url = get("NHI_GUARD_JWKS_URL")
        .map(|v| url("NHI_GUARD_JWKS_URL", v))
        .transpose()?;
    if jwks_url.is_some() && issuer.is_none() {
        return Err("NHI_GUARD_JWKS_URL needs NHI_GUARD_ISSUER (the demo issuer serves its own keys)".into());
    }
    let audience = match get("NHI_GUARD_AUDIENCE") {
        None => "nhi-guard-demo".to_owned(),
        Some(v) if v.trim().is_empty() => return Err("NHI_GUARD_AUDIENCE is set but empty".into()),
        Some(v) => v.trim().to_owned(),
    };
    let redis_url = match get("NHI_GUARD_REDIS_URL") {
        None => None,
        Some(v) if v.starts_with("redis://") || v.starts_with("rediss://") || v.starts_with("unix://") => {
            Some(v)
        }
        Some(v) => {
            return Err(format!(
                "NHI_GUARD_REDIS_URL={v:?} must start with redis://, rediss:// or unix://"
            ));
        }
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
    Ok(Config {
        listen,
        clients,
        trusted_proxies,
        issuer,
        jwks_url,
        audience,
        redis_url,
        audit_log,
        risk_mode,
    })
}
