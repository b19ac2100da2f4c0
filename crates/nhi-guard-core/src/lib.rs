//! The foundation shared by every nhi-guard control.
//!
//! - [`SecurityContext`]: the per-request record that every layer writes into and
//!   the audit layer reads, created by whichever guard layer runs first;
//! - [`Principal`], [`ClientId`], [`principal::CredentialInfo`] and [`ScopeSet`]:
//!   who is calling and what it may do;
//! - [`registry`]: the inventory of non-human identities (owner, purpose, expiry,
//!   scope ceiling, tier, networks, credentials), in code or from TOML, replaceable
//!   at run time;
//! - [`address`]: the client address, honouring forwarding headers only from
//!   trusted proxies;
//! - [`Denial`]: one refusal type rendered as RFC 9457 problem+json with RFC 6750
//!   challenges, rate-limit fields, or a gRPC status;
//! - [`clock`]: time behind a trait, for tests without sleeping;
//! - [`metrics`]: the stable metric names;
//! - [`route`]: the one route table, matched once per request;
//! - [`hash::KeyHasher`]: the keyed hasher of every table an attacker can fill.
//!
//! The plumbing the controls share (their response futures' rejected state, the
//! credential digest table, the credential lookup before identity, the unkeyed
//! hashers, the metric recording helpers) is public for the workspace's crates
//! only: hidden from this documentation, and it may change in any release.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use nhi_guard_core::registry::{ClientRecord, ClientRegistry, InMemoryRegistry, Inventory};
//! use nhi_guard_core::ScopeSet;
//!
//! let inventory = Inventory::from_toml_str(r#"
//!     [[client]]
//!     id = "inventory-sync"
//!     owner = "fulfilment-team@example.com"
//!     purpose = "Syncs stock levels from the warehouse system"
//!     expires = "2099-06-30T00:00:00Z"
//!     scopes = ["orders:read", "inventory:read"]
//! "#).unwrap();
//! let registry = InMemoryRegistry::new(inventory);
//! let client = registry.client("inventory-sync").unwrap();
//! let standing = client.admit(SystemTime::now(), None, Duration::from_secs(86_400)).unwrap();
//! assert!(!standing.expiring_soon);
//! assert!(ScopeSet::parse("orders:read").unwrap().is_subset(client.scopes()));
//! ```

pub mod address;
pub mod body;
pub mod clock;
pub mod config;
pub mod context;
pub mod denial;
#[doc(hidden)]
pub mod digest;
#[doc(hidden)]
pub mod future;
pub mod hash;
mod inventory_toml;
pub mod metrics;
#[doc(hidden)]
pub mod presented;
pub mod principal;
pub mod registry;
pub mod route;
pub mod scope;
pub mod settings;

#[cfg(feature = "axum")]
pub mod extract;

use std::time::SystemTime;

pub use crate::address::{ClientAddr, ClientAddrResolver};
pub use crate::body::GuardBody;
pub use crate::clock::{Clock, SharedClock, SystemClock};
pub use crate::context::{Control, Decision, SecurityContext};
pub use crate::denial::{Denial, Protocol, RenderDenial};
pub use crate::principal::{ClientId, CredentialFingerprint, CredentialInfo, IdentityKind, Principal};
pub use crate::registry::{ClientRecord, ClientRegistry, InMemoryRegistry, Inventory, SharedRegistry, Tier};
pub use crate::scope::ScopeSet;

/// Formats a time as RFC 3339 in UTC (`2027-06-30T00:00:00Z`, with fractional
/// seconds only when present).
pub fn rfc3339(t: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// Parses an RFC 3339 date-time with an offset (`Z` or `±hh:mm`).
///
/// # Errors
/// The parser's description of what is wrong.
pub fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(s, &Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| e.to_string())
}
