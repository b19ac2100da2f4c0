//! The decision log behind [`crate::RiskOperator::recent_decisions`]: every risk
//! action taken (throttle, step-up, block), with the signals and points that earned
//! it, so an operator can answer "why was this client throttled" without reading
//! audit records.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use nhi_guard_core::ClientId;
use nhi_guard_core::context::SignalHit;
use nhi_guard_core::risk_store::{RiskKey, StickyAction};

/// One risk action and why it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExplainedDecision {
    /// When it was taken.
    pub at: SystemTime,
    /// Throttle, step-up or block.
    pub action: StickyAction,
    /// Whether it was enforced (`false` in shadow mode: it was only recorded).
    pub enforced: bool,
    /// The key it sticks to (an address, a network, a credential or a client).
    pub key: RiskKey,
    /// When it lapses.
    pub until: SystemTime,
    /// The request's score (after route sensitivity and tier multiplier).
    pub score: u32,
    /// The verified client of the request that earned it, if identity had run.
    pub client: Option<ClientId>,
    /// The request's client address (canonical, after trusted proxies).
    pub address: Option<IpAddr>,
    /// The matched route pattern, if the request matched one.
    pub route: Option<Arc<str>>,
    /// The request's id (as in its audit record).
    pub request_id: String,
    /// Every signal that fired, with its points and reason.
    pub signals: Vec<SignalHit>,
}

impl ExplainedDecision {
    /// Whether it concerns `client`: earned by one of its requests, or stuck to it.
    pub fn concerns_client(&self, client: &str) -> bool {
        self.client.as_ref().is_some_and(|c| c.as_str() == client)
            || matches!(&self.key, RiskKey::Client(c) if c.as_str() == client)
    }
}

/// A bounded log of the latest decisions (oldest dropped first).
#[derive(Debug)]
pub(crate) struct DecisionLog {
    capacity: usize,
    entries: Mutex<VecDeque<Arc<ExplainedDecision>>>,
}

impl DecisionLog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
        }
    }

    pub(crate) fn record(&self, decision: ExplainedDecision) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(Arc::new(decision));
    }

    /// The decisions that pass `keep`, newest first.
    pub(crate) fn newest_first(&self, keep: impl Fn(&ExplainedDecision) -> bool) -> Vec<ExplainedDecision> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .rev()
            .filter(|d| keep(d))
            .map(|d| ExplainedDecision::clone(d))
            .collect()
    }
}
