//! What the tests against real Redis servers share.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nhi_guard_core::registry::ClientRecord;
use nhi_guard_core::{CredentialInfo, Principal, ScopeSet, Tier};

/// A verified client `id` with an API key, a tier of 1 per second, burst 10.
pub(crate) fn principal(id: &str) -> Principal {
    let record = ClientRecord::builder(
        id,
        "team@example.com",
        "test",
        SystemTime::now() + Duration::from_secs(86_400),
    )
    .build()
    .expect("record");
    Principal::new(
        Arc::new(record),
        CredentialInfo::ApiKey {
            prefix: Arc::from("nhik"),
        },
        ScopeSet::default(),
        Tier {
            per_second: 1,
            burst: 10,
        },
    )
}
