//! [`RiskOperator`]: list and lift active decisions, report memory.

use std::fmt;
use std::sync::Arc;

use crate::store::{RiskKey, RiskStoreError, StickyDecision};

use crate::engine::Engine;
use crate::explain::ExplainedDecision;
use crate::signal::SignalMemory;

/// An operator's handle on a risk layer: list the active sticky decisions, lift one
/// (an unblock), and report memory. Cheap to clone.
#[derive(Clone)]
pub struct RiskOperator {
    engine: Arc<Engine>,
}

impl fmt::Debug for RiskOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RiskOperator").finish_non_exhaustive()
    }
}

/// Memory held by a layer's signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryReport {
    /// Per signal: its name and memory.
    pub signals: Vec<(&'static str, SignalMemory)>,
    /// Sticky decisions held.
    pub sticky_decisions: usize,
}

impl MemoryReport {
    /// Total bytes held by signal tables.
    pub fn total_bytes(&self) -> usize {
        self.signals.iter().map(|(_, m)| m.bytes).sum()
    }
}

impl RiskOperator {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    /// Active decisions of this replica, strongest first.
    pub fn active(&self) -> Vec<StickyDecision> {
        self.engine.sticky.active(self.engine.clock.now())
    }

    /// Lifts this replica's decision on `key`; whether an active one was there.
    pub fn lift(&self, key: &RiskKey) -> bool {
        let lifted = self.engine.sticky.lift_key(key, self.engine.clock.now());
        if lifted {
            tracing::info!(target: "nhi_guard::risk", key = %key, "risk decision lifted by operator");
        }
        lifted
    }

    /// Active decisions of the shared store (empty without one).
    ///
    /// # Errors
    /// When the shared store fails.
    pub async fn active_shared(&self) -> Result<Vec<StickyDecision>, RiskStoreError> {
        match &self.engine.shared {
            Some(s) => s.store.list(self.engine.clock.now()).await,
            None => Ok(Vec::new()),
        }
    }

    /// Lifts the decision on `key` here and in the shared store; whether one was
    /// lifted anywhere.
    ///
    /// # Errors
    /// When the shared store fails (the local decision is lifted regardless).
    pub async fn lift_everywhere(&self, key: &RiskKey) -> Result<bool, RiskStoreError> {
        let local = self.lift(key);
        match &self.engine.shared {
            Some(s) => Ok(s.store.lift(key.clone()).await? || local),
            None => Ok(local),
        }
    }

    /// The latest risk actions of this replica (throttle, step-up, block; shadow
    /// ones marked not enforced), newest first, each with the signals, points and
    /// reasons behind it. How many are kept is set by
    /// [`crate::RiskLayer::decision_log`].
    pub fn recent_decisions(&self) -> Vec<ExplainedDecision> {
        self.engine.decisions.newest_first(|_| true)
    }

    /// The latest risk actions concerning `client`: earned by its requests (also
    /// when they stuck to its address or network) or stuck to the client itself,
    /// newest first.
    pub fn explain_client(&self, client: &str) -> Vec<ExplainedDecision> {
        self.engine.decisions.newest_first(|d| d.concerns_client(client))
    }

    /// The latest risk actions stuck to `key` (an address, network, credential or
    /// client), newest first.
    pub fn explain_key(&self, key: &RiskKey) -> Vec<ExplainedDecision> {
        self.engine.decisions.newest_first(|d| &d.key == key)
    }

    /// Memory held by the signals and the sticky store.
    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            signals: self
                .engine
                .signals
                .iter()
                .map(|s| (s.name(), s.memory()))
                .collect(),
            sticky_decisions: self.engine.sticky.len(),
        }
    }
}
