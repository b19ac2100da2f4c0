//! The built-in signals. Each is a small type implementing [`Signal`] with its own
//! bounded state and a config whose defaults are documented with their reasoning.
//!
//! | signal | key | phase | evidence |
//! |---|---|---|---|
//! | [`AuthFailureVelocity`] | address, network | edge | failed authentications per window |
//! | [`CredentialSpray`] | address | edge | distinct failed credentials per address |
//! | [`CredentialSpread`] | network of the request | identified | one credential from many networks / addresses |
//! | [`NewNetwork`] | network of the request | identified | a client outside the networks it used in its baseline |
//! | [`RateSurge`] | client | identified | rate far above the client's own moving baseline |
//! | [`Enumeration`] | client (or credential, address) | identified | distinct / sequential resource ids per route group |
//! | [`Probing`] | client | identified | share of 401/403/404 answers; repeated missing scopes |
//! | [`Hoarding`] | client | identified | holds of a scarce resource against a fair share |

mod auth_failures;
mod credential_spray;
mod credential_spread;
mod enumeration;
mod hoarding;
mod new_network;
mod probing;
mod surge;

pub use auth_failures::{AuthFailureConfig, AuthFailureVelocity};
pub use credential_spray::{CredentialSpray, CredentialSprayConfig};
pub use credential_spread::{CredentialSpread, CredentialSpreadConfig};
pub use enumeration::{Enumeration, EnumerationConfig};
pub use hoarding::{Hoarding, HoardingConfig};
pub use new_network::{NewNetwork, NewNetworkConfig};
pub use probing::{Probing, ProbingConfig};
pub use surge::{RateSurge, RateSurgeConfig};

#[allow(unused_imports)]
use crate::signal::Signal;

use std::time::Duration;

use nhi_guard_core::clock::duration_nanos;

pub(crate) fn nanos(d: Duration) -> u64 {
    duration_nanos(d).max(1)
}

/// Combines a key hash with a second hash (route group, ...) into one map key.
#[inline]
pub(crate) fn combine(a: u64, b: u64) -> u64 {
    (a ^ b.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b
}

/// The eight default signals with their default configs.
pub fn defaults() -> Vec<std::sync::Arc<dyn Signal>> {
    vec![
        std::sync::Arc::new(AuthFailureVelocity::new(AuthFailureConfig::default())),
        std::sync::Arc::new(CredentialSpray::new(CredentialSprayConfig::default())),
        std::sync::Arc::new(CredentialSpread::new(CredentialSpreadConfig::default())),
        std::sync::Arc::new(NewNetwork::new(NewNetworkConfig::default())),
        std::sync::Arc::new(RateSurge::new(RateSurgeConfig::default())),
        std::sync::Arc::new(Enumeration::new(EnumerationConfig::default())),
        std::sync::Arc::new(Probing::new(ProbingConfig::default())),
        std::sync::Arc::new(Hoarding::new(HoardingConfig::default())),
    ]
}

#[cfg(test)]
pub(crate) mod testing {
    use std::net::IpAddr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use nhi_guard_core::{ClientId, CredentialFingerprint};

    use crate::signal::RequestFacts;
    use crate::state::KeyHasher;

    pub(crate) const T0: u64 = 1_800_000_000;

    pub(crate) fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(secs)
    }

    pub(crate) fn facts(h: &KeyHasher, secs: f64, ip: &str) -> RequestFacts {
        let ip: IpAddr = ip.parse().expect("ip");
        RequestFacts::new(at(secs)).with_addr(h, ip)
    }

    pub(crate) fn authed(h: &KeyHasher, secs: f64, ip: &str, client: &str, cred: &str) -> RequestFacts {
        facts(h, secs, ip)
            .with_client(h, ClientId::from(client))
            .with_credential(h, CredentialFingerprint::of(cred.as_bytes()))
    }

    pub(crate) fn failed(h: &KeyHasher, secs: f64, ip: &str, cred: &str) -> RequestFacts {
        facts(h, secs, ip)
            .with_credential(h, CredentialFingerprint::of(cred.as_bytes()))
            .with_identity_failure("unknown_api_key")
    }
}
