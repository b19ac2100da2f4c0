use std::borrow::Cow;
use std::time::Duration;

use crate::store::RiskKey;

use super::nanos;
use crate::signal::{Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, CappedSet, Sketch};

/// Configuration of [`NewNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewNetworkConfig {
    /// How long after a client is first seen its networks are learned without
    /// scoring. Default 1 hour: a machine client's egress is fixed by its
    /// deployment, and an hour of traffic shows it.
    pub baseline: Duration,
    /// How long a new network must stay in use before it is learned (a legitimate
    /// move). Default 24 hours.
    pub learn_after: Duration,
    /// Points for a request from a network outside the learned ones. Default 30:
    /// evidence, never enough alone to throttle (40), because deployments do move.
    pub points: u32,
    /// Most clients tracked. Default 100 000.
    pub capacity: usize,
    /// How long an idle client is remembered. Default 7 days.
    pub idle: Duration,
}

impl Default for NewNetworkConfig {
    fn default() -> Self {
        Self {
            baseline: Duration::from_secs(3600),
            learn_after: Duration::from_secs(24 * 3600),
            points: 30,
            capacity: 100_000,
            idle: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Networks {
    first_seen: u64,
    known: CappedSet<16>,
    /// (network hash, first seen) of networks seen after the baseline.
    pending: [(u64, u64); 4],
}

/// Signal 4: a client calling from a network it has never used, after its baseline
/// period. Keyed on the request's network.
#[derive(Debug)]
pub struct NewNetwork {
    cfg: NewNetworkConfig,
    baseline: u64,
    learn_after: u64,
    by_client: BoundedMap<Networks>,
}

impl NewNetwork {
    /// The signal with `cfg`.
    pub fn new(cfg: NewNetworkConfig) -> Self {
        Self {
            baseline: nanos(cfg.baseline),
            learn_after: nanos(cfg.learn_after),
            by_client: BoundedMap::new(cfg.capacity, cfg.idle),
            cfg,
        }
    }
}

impl Signal for NewNetwork {
    fn name(&self) -> &'static str {
        "new_network"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let ch = f.client_hash()?;
        let (net, nh) = f.network?;
        let now = f.now_nanos;
        let init = || Networks {
            first_seen: now,
            ..Networks::default()
        };
        let new = self.by_client.update(ch, now, init, |s| {
            if s.known.contains(nh) {
                return false;
            }
            if now.saturating_sub(s.first_seen) < self.baseline {
                s.known.insert(nh);
                return false;
            }
            if let Some(p) = s.pending.iter().find(|p| p.0 == nh) {
                if now.saturating_sub(p.1) >= self.learn_after {
                    s.known.insert(nh);
                    return false;
                }
                return true;
            }
            // Remember it (replacing the oldest pending network).
            if let Some(slot) = s
                .pending
                .iter_mut()
                .min_by_key(|p| if p.0 == 0 { 0 } else { p.1 })
            {
                *slot = (nh, now);
            }
            true
        });
        new.then_some(Points {
            points: self.cfg.points,
            key: RiskKey::Network(net),
            reason: Cow::Borrowed("client calls from a network outside its baseline"),
        })
    }

    fn memory(&self) -> SignalMemory {
        SignalMemory {
            keys: self.by_client.len(),
            capacity: self.by_client.capacity(),
            bytes: self.by_client.memory_bytes(|s| s.known.heap_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing::*;
    use crate::state::KeyHasher;

    #[test]
    fn new_networks_after_the_baseline_score_until_learned() {
        let h = KeyHasher::new();
        let s = NewNetwork::new(NewNetworkConfig::default());
        assert_eq!(s.evaluate(&authed(&h, 0.0, "127.1.1.1", "app", "k")), None);
        assert_eq!(
            s.evaluate(&authed(&h, 600.0, "127.1.2.1", "app", "k")),
            None,
            "within baseline"
        );
        let p = s
            .evaluate(&authed(&h, 4000.0, "127.1.3.1", "app", "k"))
            .expect("new network");
        assert_eq!(
            (p.points, p.key.to_string()),
            (30, "net:127.1.3.0/24".to_string())
        );
        assert_eq!(
            s.evaluate(&authed(&h, 4000.0, "127.1.2.9", "app", "k")),
            None,
            "learned in baseline"
        );
        assert!(s.evaluate(&authed(&h, 5000.0, "127.1.3.1", "app", "k")).is_some());
        // Still in use a day later: learned.
        assert_eq!(
            s.evaluate(&authed(&h, 4000.0 + 86_400.0, "127.1.3.1", "app", "k")),
            None
        );
        // Anonymous requests are not this signal's business.
        assert_eq!(s.evaluate(&facts(&h, 9000.0, "127.9.9.9")), None);
    }
}
