use std::borrow::Cow;
use std::time::Duration;

use crate::store::RiskKey;

use super::nanos;
use crate::signal::{Points, RequestFacts, Signal, SignalMemory};
use crate::state::BoundedMap;

/// Configuration of [`RateSurge`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RateSurgeConfig {
    /// The rate is measured per this interval. Default 60 s.
    pub interval: Duration,
    /// Half-life of the moving baseline. Default 1 hour: slow enough that a surge
    /// does not become its own baseline within minutes.
    pub half_life: Duration,
    /// A client is judged only after this long. Default 1 hour.
    pub warm_up: Duration,
    /// A surge is a rate at least this many times the baseline. Default 10.
    pub factor: f32,
    /// ... and at least this many requests per interval (quiet clients are noisy in
    /// ratio terms). Default 120.
    pub min_requests: u32,
    /// Points for a surge; doubled-factor surges add `points / 2` more. Default 20
    /// (30 at twice the factor): machine traffic is legitimately bursty (batches,
    /// backfills, retries), so a surge is evidence that strengthens other signals
    /// and never throttles alone.
    pub points: u32,
    /// Most clients tracked. Default 100 000.
    pub capacity: usize,
}

impl Default for RateSurgeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            half_life: Duration::from_secs(3600),
            warm_up: Duration::from_secs(3600),
            factor: 10.0,
            min_requests: 120,
            points: 20,
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    first_seen: u64,
    index: u64,
    count: u32,
    /// Requests per interval, exponentially weighted.
    baseline: f32,
}

/// Signal 5: a client's request rate far above its own moving baseline (a surge),
/// separate from the fixed quota of the rate limiter.
#[derive(Debug)]
pub struct RateSurge {
    cfg: RateSurgeConfig,
    interval: u64,
    warm_up: u64,
    /// Weight kept per elapsed interval.
    keep: f32,
    by_client: BoundedMap<Rate>,
}

impl RateSurge {
    /// The signal with `cfg`.
    pub fn new(cfg: RateSurgeConfig) -> Self {
        let intervals_per_half_life = cfg.half_life.as_secs_f32() / cfg.interval.as_secs_f32().max(1e-3);
        Self {
            interval: nanos(cfg.interval),
            warm_up: nanos(cfg.warm_up),
            keep: 0.5f32.powf(1.0 / intervals_per_half_life.max(1e-3)),
            by_client: BoundedMap::new(cfg.capacity, cfg.half_life * 8),
            cfg,
        }
    }
}

impl Signal for RateSurge {
    fn name(&self) -> &'static str {
        "rate_surge"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let (client, ch) = f.client.as_ref()?;
        let now = f.now_nanos;
        let index = now / self.interval;
        let init = || Rate {
            first_seen: now,
            index,
            ..Rate::default()
        };
        let (count, baseline, age) = self.by_client.update(*ch, now, init, |r| {
            if index > r.index {
                // Fold the finished interval in, then the idle ones as zeros.
                let gap = (index - r.index).min(10_000) as i32;
                r.baseline = r.baseline * self.keep + r.count as f32 * (1.0 - self.keep);
                r.baseline *= self.keep.powi(gap - 1);
                r.count = 0;
                r.index = index;
            }
            r.count = r.count.saturating_add(1);
            (r.count, r.baseline, now.saturating_sub(r.first_seen))
        });
        if age < self.warm_up || count < self.cfg.min_requests {
            return None;
        }
        let ratio = count as f32 / baseline.max(1.0);
        if ratio < self.cfg.factor {
            return None;
        }
        let points = if ratio >= 2.0 * self.cfg.factor {
            self.cfg.points + self.cfg.points / 2
        } else {
            self.cfg.points
        };
        Some(Points {
            points,
            key: RiskKey::Client(client.clone()),
            reason: Cow::Owned(format!(
                "{count} requests this interval against a baseline of {baseline:.1}"
            )),
        })
    }

    fn memory(&self) -> SignalMemory {
        SignalMemory {
            keys: self.by_client.len(),
            capacity: self.by_client.capacity(),
            bytes: self.by_client.memory_bytes(|_| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing::*;
    use crate::state::KeyHasher;

    #[test]
    fn a_surge_over_the_own_baseline_scores_and_never_reaches_throttle_alone() {
        let h = KeyHasher::new();
        let s = RateSurge::new(RateSurgeConfig::default());
        // Two hours at 10 requests a minute.
        for m in 0..120 {
            for r in 0..10 {
                let t = f64::from(m) * 60.0 + f64::from(r) * 6.0;
                assert_eq!(s.evaluate(&authed(&h, t, "127.0.0.1", "app", "k")), None);
            }
        }
        // 300 requests within one minute.
        let mut max = 0;
        for r in 0..300 {
            let t = 7200.0 + f64::from(r) * 0.2;
            if let Some(p) = s.evaluate(&authed(&h, t, "127.0.0.1", "app", "k")) {
                assert_eq!(p.key.to_string(), "client:app");
                max = max.max(p.points);
            }
        }
        assert_eq!(max, 30);
        // A newly seen client bursting is not judged during its warm-up.
        for r in 0..300 {
            assert_eq!(
                s.evaluate(&authed(&h, 7200.0 + f64::from(r) * 0.1, "127.0.0.2", "new", "k2")),
                None
            );
        }
    }
}
