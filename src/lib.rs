//! nhi-guard: tower layers that protect machine-to-machine APIs.
//!
//! Every client is a governed non-human identity. The controls (identity, scope,
//! rate limiting, risk, audit) are tower layers that share one per-request
//! [`SecurityContext`]; each also works alone.
//!
//! This facade re-exports the crates of the workspace. The foundation is
//! [`core`] (`nhi-guard-core`).

pub use nhi_guard_core as core;
pub use nhi_guard_core::{
    ClientAddr, ClientAddrResolver, ClientId, ClientRecord, ClientRegistry, Control, CredentialInfo,
    Decision, Denial, IdentityKind, InMemoryRegistry, Inventory, Principal, ScopeSet, SecurityContext, Tier,
};

/// The types a handler or a `main` usually needs.
pub mod prelude {
    pub use nhi_guard_core::registry::{ClientRecord, ClientRegistry, InMemoryRegistry, Inventory, Tier};
    pub use nhi_guard_core::{Denial, Principal, ScopeSet, SecurityContext};
}
