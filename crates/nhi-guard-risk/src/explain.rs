//! The decision log behind [`crate::RiskOperator::recent_decisions`]: every risk
//! action taken (throttle, step-up, block), with the signals and points that earned
//! it, so an operator can answer "why was this client throttled" without reading
//! audit records.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::store::{RiskKey, StickyAction};
use nhi_guard_core::ClientId;
use nhi_guard_core::context::SignalHit;

/// One risk action and why it was taken. A key that keeps earning the same action
/// (a throttled client that keeps scoring) is one entry, counted in `repeats`,
/// with the latest score and signals.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExplainedDecision {
    /// When it was first taken.
    pub at: SystemTime,
    /// When it was taken again last (equal to `at` when it was not).
    pub last_at: SystemTime,
    /// How many more times the same action was taken on the same key since `at`.
    pub repeats: u32,
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

/// How many of the latest entries a repeated decision is looked for in.
const REPEAT_LOOKBACK: usize = 64;

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
        // The same action on the same key among the latest entries: one entry, so
        // that a key under a throttle does not push everyone else's out.
        if let Some(same) = entries
            .iter_mut()
            .rev()
            .take(REPEAT_LOOKBACK)
            .find(|d| d.key == decision.key && d.action == decision.action)
        {
            let same = Arc::make_mut(same);
            same.repeats = same.repeats.saturating_add(1);
            same.last_at = decision.at;
            same.until = decision.until;
            same.score = decision.score;
            same.enforced = decision.enforced;
            same.client = decision.client;
            same.address = decision.address;
            same.route = decision.route;
            same.request_id = decision.request_id;
            same.signals = decision.signals;
            return;
        }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn decision(secs: u64, key: &str, action: StickyAction) -> ExplainedDecision {
        let at = UNIX_EPOCH + Duration::from_secs(secs);
        ExplainedDecision {
            at,
            last_at: at,
            repeats: 0,
            action,
            enforced: true,
            key: RiskKey::parse(key).expect("key"),
            until: at + Duration::from_secs(300),
            score: 40,
            client: None,
            address: None,
            route: None,
            request_id: format!("req-{secs}"),
            signals: Vec::new(),
        }
    }

    #[test]
    fn a_repeated_decision_is_one_entry_and_the_oldest_go_first() {
        let log = DecisionLog::new(3);
        for t in 0..50 {
            log.record(decision(t, "client:a", StickyAction::Throttle));
        }
        log.record(decision(60, "client:a", StickyAction::Block));
        let all = log.newest_first(|_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].action, all[1].action),
            (StickyAction::Block, StickyAction::Throttle)
        );
        let throttle = &all[1];
        assert_eq!(throttle.repeats, 49);
        assert_eq!(throttle.at, UNIX_EPOCH);
        assert_eq!(throttle.last_at, UNIX_EPOCH + Duration::from_secs(49));
        assert_eq!(throttle.request_id, "req-49");
        // Full: the oldest entry leaves first.
        log.record(decision(70, "addr:127.0.0.1", StickyAction::Block));
        log.record(decision(80, "addr:127.0.0.2", StickyAction::Block));
        let keys: Vec<String> = log
            .newest_first(|_| true)
            .iter()
            .map(|d| d.key.to_string())
            .collect();
        assert_eq!(keys, ["addr:127.0.0.2", "addr:127.0.0.1", "client:a"]);
        assert_eq!(log.newest_first(|d| d.concerns_client("a")).len(), 1);
        assert_eq!(DecisionLog::new(0).newest_first(|_| true), []);
    }
}
