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
    Ok(Config {
        listen,
        clients,
        trusted_proxies,
    })
}
