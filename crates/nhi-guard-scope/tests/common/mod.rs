//! Helpers shared by the integration tests: principals and a stand-in for the
//! identity layer.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use nhi_guard_core::registry::{ClientRecord, Inventory, Tier};
use nhi_guard_core::{CredentialInfo, Principal, ScopeSet};

/// 2027-01-15T08:00:00Z.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn record(id: &str, scopes: &str) -> ClientRecord {
    ClientRecord::builder(
        id,
        format!("{id}-owner@example.com"),
        format!("{id} purpose"),
        t0() + Duration::from_secs(90 * 86_400),
    )
    .scopes(ScopeSet::parse(scopes).expect("scopes"))
    .build()
    .expect("record")
}

pub fn principal_of(record: ClientRecord) -> Principal {
    let scopes = record.scopes().clone();
    Principal::new(
        Arc::new(record),
        CredentialInfo::ApiKey {
            prefix: "sk_test".into(),
        },
        scopes,
        Tier::BUILT_IN_DEFAULT,
    )
}

pub fn principal(id: &str, scopes: &str) -> Principal {
    principal_of(record(id, scopes))
}

/// The clients of the test inventory.
pub fn inventory() -> Inventory {
    Inventory::builder()
        .client(record(
            "inventory-sync",
            "orders:read orders:write inventory:read",
        ))
        .client(record("billing-export", "invoices:read"))
        .client(record("ops-console", "admin orders:read"))
        .client(record("monitor", "health:read"))
        .build()
        .expect("inventory")
}

/// A stand-in for the identity layer: the header `x-test-client` names a client of
/// [`inventory`], whose principal (with its full ceiling) goes into the request.
pub fn identify<B>(mut req: Request<B>) -> Request<B> {
    let client = req
        .headers()
        .get("x-test-client")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // `x-test-iat: SECONDS` (since t0): the principal's token was issued then.
    let iat = req
        .headers()
        .get("x-test-iat")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(|secs| t0() + std::time::Duration::from_secs(secs));
    if let Some(id) = client
        && let Some(rec) = inventory().client(&id)
    {
        let mut principal = principal_of((**rec).clone());
        if let Some(iat) = iat {
            principal = principal.credential_issued_at(iat);
        }
        req.extensions_mut().insert(principal);
    }
    req
}
