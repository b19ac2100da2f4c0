//! A test signal whose points the test sets: `Dial::set(p)` makes every request
//! with an address score `p` (keyed on that address); 0 silences it.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use nhi_guard_risk::store::RiskKey;
use nhi_guard_risk::{Points, RequestFacts, Signal};

/// Gives the points the test stored, keyed on the address.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dial(Arc<AtomicU32>);

impl Dial {
    /// The points every following request scores.
    pub(crate) fn set(&self, p: u32) {
        self.0.store(p, Ordering::SeqCst);
    }
}

impl Signal for Dial {
    fn name(&self) -> &'static str {
        "dial"
    }
    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let p = self.0.load(Ordering::SeqCst);
        let ip = f.addr()?;
        (p > 0).then(|| Points {
            points: p,
            key: RiskKey::address(ip),
            reason: Cow::Borrowed("test dial"),
        })
    }
}
