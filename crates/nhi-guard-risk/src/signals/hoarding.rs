use std::borrow::Cow;
use std::time::Duration;

use super::nanos;
use crate::signal::{Curve, Outcome, Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, CappedSet, WindowCounter, WindowedDistinct};

/// Configuration of [`Hoarding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HoardingConfig {
    /// Window of the counts. Default 1 hour (a typical reservation hold time).
    pub window: Duration,
    /// Fair share of successful holds per client per window. Default 20.
    pub fair_holds: u32,
    /// Fair share of distinct items held per client per window. Default 10.
    pub fair_items: u32,
    /// Points by the larger of holds and distinct items as a percentage of the fair
    /// share. Default: 100% → 40 (throttle), +10 per 25% more, so 200% → 80 (block).
    /// Set the fair share to what one legitimate buyer needs; whoever takes twice
    /// that is taking it from the others.
    pub curve: Curve,
    /// Most clients tracked. Default 100 000.
    pub capacity: usize,
}

impl Default for HoardingConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            fair_holds: 20,
            fair_items: 10,
            curve: Curve::new(100, 40, 10, 25, 100),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Holds {
    holds: WindowCounter,
    items: WindowedDistinct<CappedSet<32>>,
}

/// Signal 8: hoarding on routes tagged as holding a scarce resource
/// ([`crate::Route::scarce`]): successful holds per client per window and distinct
/// items held, against a configured fair share. Scores requests to scarce routes.
#[derive(Debug)]
pub struct Hoarding {
    cfg: HoardingConfig,
    window: u64,
    by_actor: BoundedMap<Holds>,
}

impl Hoarding {
    /// The signal with `cfg`.
    pub fn new(cfg: HoardingConfig) -> Self {
        Self {
            window: nanos(cfg.window),
            by_actor: BoundedMap::new(cfg.capacity, cfg.window * 2),
            cfg,
        }
    }
}

impl Signal for Hoarding {
    fn name(&self) -> &'static str {
        "hoarding"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        if !f.route.is_some_and(|r| r.scarce) || f.identity_failure.is_some() {
            return None;
        }
        let h = f.actor_hash()?;
        let now = f.now_nanos;
        let w = self.window;
        let (holds, items) = self
            .by_actor
            .read(h, now, |s| (s.holds.count(now, w), s.items.count(now, w)))?;
        let pct = (holds.saturating_mul(100) / self.cfg.fair_holds.max(1))
            .max(items.saturating_mul(100) / self.cfg.fair_items.max(1));
        let points = self.cfg.curve.points(pct);
        if points == 0 {
            return None;
        }
        Some(Points {
            points,
            key: f.actor()?.1,
            reason: Cow::Owned(format!(
                "{holds} holds of {items} distinct items: {pct}% of the fair share"
            )),
        })
    }

    fn observe(&self, f: &RequestFacts, outcome: Outcome) {
        let Some(route) = f.route.filter(|r| r.scarce) else {
            return;
        };
        if !outcome.status.is_success() || outcome.refused_by_risk {
            return;
        }
        let Some(h) = f.actor_hash() else { return };
        let now = f.now_nanos;
        let w = self.window;
        self.by_actor.update(h, now, Holds::default, |s| {
            s.holds.add(now, w, 1);
            if let Some(item) = route.resource_hash {
                s.items.insert(item, now, w);
            }
        });
    }

    fn memory(&self) -> SignalMemory {
        SignalMemory {
            keys: self.by_actor.len(),
            capacity: self.by_actor.capacity(),
            bytes: self.by_actor.memory_bytes(|_| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::RouteFacts;
    use crate::signals::testing::*;
    use crate::state::KeyHasher;

    fn reserve(h: &KeyHasher, t: f64, client: &str, sku: u64) -> RequestFacts {
        authed(h, t, "127.0.0.1", client, client).with_route(RouteFacts {
            index: 0,
            group_hash: h.hash("reserve"),
            resource_hash: Some(h.hash(&sku)),
            resource_number: Some(sku),
            scarce: true,
        })
    }

    fn ok() -> Outcome {
        Outcome {
            status: http::StatusCode::OK,
            refused_by_risk: false,
        }
    }

    #[test]
    fn holds_beyond_the_fair_share_score() {
        let h = KeyHasher::new();
        let s = Hoarding::new(HoardingConfig::default());
        for i in 0..9u64 {
            let f = reserve(&h, i as f64, "hoarder", i);
            assert_eq!(s.evaluate(&f), None);
            s.observe(&f, ok());
        }
        let f = reserve(&h, 10.0, "hoarder", 9);
        assert_eq!(s.evaluate(&f), None);
        s.observe(&f, ok());
        let p = s
            .evaluate(&reserve(&h, 11.0, "hoarder", 10))
            .expect("at fair share");
        assert_eq!((p.points, p.key.to_string()), (40, "client:hoarder".to_string()));
        for i in 10..20u64 {
            s.observe(&reserve(&h, 12.0, "hoarder", i), ok());
        }
        assert_eq!(
            s.evaluate(&reserve(&h, 13.0, "hoarder", 99)).map(|p| p.points),
            Some(80)
        );
        // Another buyer is unaffected; failed holds do not count.
        let f = reserve(&h, 14.0, "buyer", 1);
        s.observe(
            &f,
            Outcome {
                status: http::StatusCode::CONFLICT,
                refused_by_risk: false,
            },
        );
        assert_eq!(s.evaluate(&f), None);
    }
}
