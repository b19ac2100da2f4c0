use std::borrow::Cow;
use std::time::Duration;

use crate::store::RiskKey;

use super::nanos;
use crate::signal::{Curve, Outcome, Phase, Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, CappedSet, WindowedDistinct};

/// Configuration of [`CredentialSpray`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialSprayConfig {
    /// Window of the distinct count. Default 10 minutes.
    pub window: Duration,
    /// Points for distinct *failed* credentials from one address. Default: 3 → 40,
    /// +15 per extra credential, so 6 → 85 (block).
    ///
    /// Only failed credentials count, so the many valid keys of clients behind one
    /// NAT address never add up; a client with a stale key repeats the *same*
    /// credential. Three different wrong credentials from one address within ten
    /// minutes is already unusual for a machine; six is a spray.
    pub curve: Curve,
    /// Most addresses tracked. Default 100 000.
    pub capacity: usize,
}

impl Default for CredentialSprayConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            curve: Curve::new(3, 40, 15, 1, 100),
            capacity: 100_000,
        }
    }
}

/// Signal 2: distinct credentials tried per address (stuffing, account takeover).
/// Also scores the *valid* credential that arrives from an address that just sprayed
/// invalid ones: it is suspicious, not trusted.
#[derive(Debug)]
pub struct CredentialSpray {
    cfg: CredentialSprayConfig,
    window: u64,
    by_addr: BoundedMap<WindowedDistinct<CappedSet<16>>>,
}

impl CredentialSpray {
    /// The signal with `cfg`.
    pub fn new(cfg: CredentialSprayConfig) -> Self {
        Self {
            window: nanos(cfg.window),
            by_addr: BoundedMap::new(cfg.capacity, cfg.window * 2),
            cfg,
        }
    }
}

impl Signal for CredentialSpray {
    fn name(&self) -> &'static str {
        "distinct_credentials"
    }

    fn phase(&self) -> Phase {
        Phase::Edge
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let (ip, h) = f.addr?;
        let now = f.now_nanos;
        let n = self.by_addr.read(h, now, |d| d.count(now, self.window))?;
        let points = self.cfg.curve.points(n);
        if points == 0 {
            return None;
        }
        let reason = if f.client.is_some() {
            format!("valid credential from an address that tried {n} invalid ones")
        } else {
            format!("{n} distinct invalid credentials from this address")
        };
        Some(Points {
            points,
            key: RiskKey::Address(ip),
            reason: Cow::Owned(reason),
        })
    }

    fn observe(&self, f: &RequestFacts, _outcome: Outcome) {
        let (Some(reason), Some((_, ch)), Some((_, ah))) = (f.identity_failure, f.credential, f.addr) else {
            return;
        };
        if !super::auth_failures::is_guess(reason) {
            return;
        }
        let now = f.now_nanos;
        self.by_addr.update(ah, now, WindowedDistinct::default, |d| {
            d.insert(ch, now, self.window)
        });
    }

    fn memory(&self) -> SignalMemory {
        SignalMemory {
            keys: self.by_addr.len(),
            capacity: self.by_addr.capacity(),
            bytes: self.by_addr.memory_bytes(|_| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing::*;
    use crate::state::KeyHasher;

    fn out() -> Outcome {
        Outcome {
            status: http::StatusCode::UNAUTHORIZED,
            refused_by_risk: false,
        }
    }

    #[test]
    fn many_wrong_credentials_score_and_taint_a_valid_one() {
        let h = KeyHasher::new();
        let s = CredentialSpray::new(CredentialSprayConfig::default());
        // The same stale key many times: one distinct credential.
        for i in 0..20 {
            s.observe(&failed(&h, f64::from(i), "127.0.0.7", "stale"), out());
        }
        assert_eq!(s.evaluate(&facts(&h, 21.0, "127.0.0.7")), None);
        for i in 0..5 {
            s.observe(&failed(&h, 22.0, "127.0.0.7", &format!("guess{i}")), out());
        }
        let p = s
            .evaluate(&authed(&h, 23.0, "127.0.0.7", "victim", "good"))
            .expect("points");
        assert_eq!(p.points, 85);
        assert!(p.reason.starts_with("valid credential"), "{}", p.reason);
        assert_eq!(p.key.to_string(), "addr:127.0.0.7");
    }

    #[test]
    fn valid_credentials_behind_one_nat_do_not_count() {
        let h = KeyHasher::new();
        let s = CredentialSpray::new(CredentialSprayConfig::default());
        for i in 0..50 {
            let f = authed(&h, 1.0, "127.0.0.8", &format!("c{i}"), &format!("k{i}"));
            s.observe(&f, out());
            assert_eq!(s.evaluate(&f), None);
        }
    }
}
