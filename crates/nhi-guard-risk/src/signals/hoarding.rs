use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::nanos;
use crate::signal::{Curve, Outcome, Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, CappedSet, WindowCounter, WindowedDistinct};

/// Configuration of [`Hoarding`].
///
/// A client is judged by what it takes against what it is entitled to, not by its
/// share of whatever crowd happens to be there: a stock-sync that is the only
/// client reserving holds 100% of the holds and is still honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HoardingConfig {
    /// How long a hold lasts, and the window of a client's own history and of the
    /// crowd. Default 1 hour (a typical reservation hold time).
    pub window: Duration,
    /// Window of the rate of distinct items taken. Default 60 s.
    pub rate_window: Duration,
    /// Points by distinct items reserved (attempted, also when refused) in the rate
    /// window, once scaled to the client's allowance. Default: 60 a minute → 40
    /// (throttle), +20 per 30 more, so 90 → 60 and 120 → 80 (block). An
    /// integration syncing stock reserves an item every second or two; a bot
    /// emptying the shelves takes ten a second.
    pub rate_curve: Curve,
    /// A client's allowance grows with its own history: it may reserve up to this
    /// many times its average rate over `window` before the rate curve starts.
    /// Default 3.
    pub history_factor: u32,
    /// The fair share below applies only when at least this many clients held
    /// items in the window: the share of a small or empty crowd says nothing.
    /// Default 5 (counted exactly up to 16, so a larger value acts as 16).
    pub min_crowd: u32,
    /// With a crowd: fair share of successful holds per client per window.
    /// Default 20.
    pub fair_holds: u32,
    /// With a crowd: fair share of distinct items held per client per window.
    /// Default 10.
    pub fair_items: u32,
    /// With a crowd: points by the larger of holds and distinct items as a
    /// percentage of the fair share. Default: 100% → 40 (throttle), +10 per 25%
    /// more, so 200% → 80 (block).
    pub curve: Curve,
    /// On a route with a declared capacity ([`crate::Route::capacity`]): points by
    /// the client's successful holds in `window` as a percentage of the capacity.
    /// Default: 10% → 40 (throttle), +20 per 5% more, so 15% → 60 and 20% → 80
    /// (block). No single client of many needs a tenth of the stock within an hour.
    pub capacity_curve: Curve,
    /// Most clients tracked. Default 100 000.
    pub capacity: usize,
}

impl Default for HoardingConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            rate_window: Duration::from_secs(60),
            rate_curve: Curve::new(60, 40, 20, 30, 100),
            history_factor: 3,
            min_crowd: 5,
            fair_holds: 20,
            fair_items: 10,
            curve: Curve::new(100, 40, 10, 25, 100),
            capacity_curve: Curve::new(10, 40, 20, 5, 100),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Holds {
    /// Successful holds in `window`: the client's own history.
    holds: WindowCounter,
    /// Distinct items held in `window`.
    items: WindowedDistinct<CappedSet<32>>,
    /// Reservations of items new to `last` in `rate_window`.
    recent: WindowCounter,
    /// The last items reserved (hash prefixes): retrying a reservation is no new
    /// item.
    last: [u32; 4],
    next: u8,
}

impl Holds {
    fn attempt(&mut self, item: Option<u64>, now: u64, rate_window: u64) {
        let Some(item) = item else {
            return self.recent.add(now, rate_window, 1);
        };
        let h = (item >> 32) as u32 | 1;
        if self.last.contains(&h) {
            return;
        }
        self.last[usize::from(self.next) % self.last.len()] = h;
        self.next = self.next.wrapping_add(1);
        self.recent.add(now, rate_window, 1);
    }
}

/// Signal 8: hoarding on routes tagged as holding a scarce resource
/// ([`crate::Route::scarce`]). Scores requests to scarce routes by
/// - the rate of distinct items a client reserves, against an allowance that
///   grows with its own history (and a bulk tier's entitlement: bulk tiers are not
///   scored);
/// - with a crowd of at least `min_crowd` clients holding, its holds and distinct
///   items against a fair share;
/// - on a route with a declared capacity, its holds against that capacity.
#[derive(Debug)]
pub struct Hoarding {
    cfg: HoardingConfig,
    window: u64,
    rate_window: u64,
    by_actor: BoundedMap<Holds>,
    /// Clients that held an item in the window (exact up to 16: only compared
    /// with `min_crowd`).
    crowd: Mutex<WindowedDistinct<CappedSet<16>>>,
}

impl Hoarding {
    /// The signal with `cfg`.
    pub fn new(cfg: HoardingConfig) -> Self {
        Self {
            window: nanos(cfg.window),
            rate_window: nanos(cfg.rate_window),
            by_actor: BoundedMap::new(cfg.capacity, cfg.window * 2),
            crowd: Mutex::default(),
            cfg,
        }
    }

    fn crowd(&self, now: u64) -> u32 {
        self.crowd
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count(now, self.window)
    }
}

/// The declared capacity of the request's route (0: undeclared).
fn route_capacity(f: &RequestFacts) -> u32 {
    f.route.map_or(0, |r| r.capacity)
}

impl Signal for Hoarding {
    fn name(&self) -> &'static str {
        "hoarding"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        if !f.route.is_some_and(|r| r.scarce) || f.identity_failure.is_some() || f.bulk {
            return None;
        }
        let h = f.actor_hash()?;
        let now = f.now_nanos;
        let (w, rw) = (self.window, self.rate_window);
        let (holds, items, recent) = self.by_actor.read(h, now, |s| {
            (
                s.holds.count(now, w),
                s.items.count(now, w),
                s.recent.count(now, rw),
            )
        })?;
        // The rate, scaled to the allowance: the curve's threshold, or a multiple
        // of the client's own average rate when that is higher.
        let threshold = u64::from(self.cfg.rate_curve.threshold.max(1));
        let average = u64::from(holds) * rw / w.max(1);
        let allowance = threshold.max(average * u64::from(self.cfg.history_factor));
        let scaled = (u64::from(recent) * threshold / allowance) as u32;
        let rate_points = self.cfg.rate_curve.points(scaled);
        let crowd = if rate_points < self.cfg.curve.max {
            self.crowd(now)
        } else {
            0
        };
        let min_crowd = self.cfg.min_crowd.min(16);
        let pct = (holds.saturating_mul(100) / self.cfg.fair_holds.max(1))
            .max(items.saturating_mul(100) / self.cfg.fair_items.max(1));
        let share_points = if crowd >= min_crowd {
            self.cfg.curve.points(pct)
        } else {
            0
        };
        let capacity = route_capacity(f);
        let capacity_pct = if capacity > 0 {
            (u64::from(holds) * 100 / u64::from(capacity)) as u32
        } else {
            0
        };
        let capacity_points = if capacity > 0 {
            self.cfg.capacity_curve.points(capacity_pct)
        } else {
            0
        };
        let points = rate_points.max(share_points).max(capacity_points);
        let reason = if points == 0 {
            return None;
        } else if rate_points == points {
            format!(
                "{recent} distinct items reserved in {} s (allowance {allowance})",
                self.cfg.rate_window.as_secs()
            )
        } else if capacity_points == points {
            format!("{holds} holds: {capacity_pct}% of the route's {capacity} items")
        } else {
            format!("{holds} holds of {items} distinct items: {pct}% of the fair share among {crowd} clients")
        };
        Some(Points {
            points,
            key: f.actor()?.1,
            reason: Cow::Owned(reason),
        })
    }

    fn observe(&self, f: &RequestFacts, outcome: Outcome) {
        let Some(route) = f.route.filter(|r| r.scarce) else {
            return;
        };
        if f.identity_failure.is_some() {
            return;
        }
        let Some(h) = f.actor_hash() else { return };
        let now = f.now_nanos;
        let (w, rw) = (self.window, self.rate_window);
        // Every reservation counts towards the rate, also one refused (a client
        // that keeps reserving while throttled escalates); only a successful one
        // is a hold.
        let held = outcome.status.is_success() && !outcome.refused_by_risk;
        self.by_actor.update(h, now, Holds::default, |s| {
            s.attempt(route.resource_hash, now, rw);
            if held {
                s.holds.add(now, w, 1);
                if let Some(item) = route.resource_hash {
                    s.items.insert(item, now, w);
                }
            }
        });
        if held {
            self.crowd
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(h, now, w);
        }
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
            capacity: 0,
        })
    }

    fn ok() -> Outcome {
        Outcome {
            status: http::StatusCode::OK,
            refused_by_risk: false,
        }
    }

    fn buyer(h: &KeyHasher, hoarding: &Hoarding, t: f64, client: &str, sku: u64) {
        hoarding.observe(&reserve(h, t, client, sku), ok());
    }

    #[test]
    fn the_only_client_reserving_steadily_is_left_alone() {
        let h = KeyHasher::new();
        let s = Hoarding::new(HoardingConfig::default());
        // One distinct item every 2 s for two hours, with nobody else reserving.
        for i in 0..3_600u64 {
            let f = reserve(&h, i as f64 * 2.0, "stock-sync", i);
            assert_eq!(s.evaluate(&f), None, "item {i}");
            s.observe(&f, ok());
        }
    }

    #[test]
    fn a_high_rate_of_distinct_items_scores_and_escalates() {
        let h = KeyHasher::new();
        let s = Hoarding::new(HoardingConfig::default());
        let mut first = None;
        let mut last = 0;
        for i in 0..200u64 {
            let f = reserve(&h, 100.0 + i as f64 * 0.1, "bot", i);
            if let Some(p) = s.evaluate(&f) {
                first.get_or_insert(i);
                last = p.points;
                assert_eq!(p.key.to_string(), "client:bot");
            }
            // Refused by risk once it scores: still counts towards the rate.
            let refused = Outcome {
                status: http::StatusCode::TOO_MANY_REQUESTS,
                refused_by_risk: true,
            };
            s.observe(&f, if first.is_some() { refused } else { ok() });
        }
        assert_eq!(first, Some(60), "the 61st item in a minute scores");
        assert!(last >= 80, "persisting escalates to a block: {last}");
        // Retrying the same item is no new item.
        let t = Hoarding::new(HoardingConfig::default());
        for i in 0..500u64 {
            let f = reserve(&h, i as f64 * 0.1, "retrier", 7);
            assert_eq!(t.evaluate(&f), None);
            t.observe(&f, ok());
        }
    }

    #[test]
    fn a_client_with_a_busy_history_gets_a_larger_allowance() {
        let h = KeyHasher::new();
        let s = Hoarding::new(HoardingConfig::default());
        // 40 a minute for an hour (a big warehouse) …
        for i in 0..2_400u64 {
            s.observe(&reserve(&h, i as f64 * 1.5, "warehouse", i), ok());
        }
        // … so 80 in the next minute is within 3× its own average.
        for i in 0..80u64 {
            let f = reserve(&h, 3_600.0 + i as f64 * 0.75, "warehouse", 10_000 + i);
            assert_eq!(s.evaluate(&f), None, "item {i}");
            s.observe(&f, ok());
        }
    }

    #[test]
    fn holding_a_tenth_of_a_declared_capacity_scores_crowd_or_not() {
        let h = KeyHasher::new();
        let s = Hoarding::new(HoardingConfig::default());
        let hold = |t: f64, client: &str, seat: u64| {
            let mut f = reserve(&h, t, client, seat);
            if let Some(r) = f.route.as_mut() {
                r.capacity = 200;
            }
            f
        };
        // 19 seats of 200 in ten minutes: below a tenth.
        for i in 0..19u64 {
            let f = hold(i as f64 * 30.0, "scalper", i);
            assert_eq!(s.evaluate(&f), None, "seat {i}");
            s.observe(&f, ok());
        }
        s.observe(&hold(600.0, "scalper", 19), ok());
        let p = s.evaluate(&hold(601.0, "scalper", 20)).expect("a tenth");
        assert_eq!((p.points, p.key.to_string()), (40, "client:scalper".to_string()));
        assert!(p.reason.contains("10% of the route's 200 items"), "{}", p.reason);
        // The same holds on a route without a declared capacity: nobody's business.
        assert_eq!(s.evaluate(&reserve(&h, 601.0, "scalper", 20)), None);
        assert_eq!(s.evaluate(&hold(601.0, "fan", 1)), None);
    }

    #[test]
    fn the_fair_share_applies_only_with_a_crowd() {
        let h = KeyHasher::new();
        let s = Hoarding::new(HoardingConfig::default());
        // Alone: 15 items in ten minutes is nobody's business.
        for i in 0..15u64 {
            s.observe(&reserve(&h, i as f64 * 40.0, "hoarder", i), ok());
        }
        assert_eq!(s.evaluate(&reserve(&h, 601.0, "hoarder", 99)), None);
        // With five other buyers holding, it is 150% of the fair share.
        for b in 0..5u64 {
            buyer(&h, &s, 602.0, &format!("buyer{b}"), 1_000 + b);
        }
        let p = s.evaluate(&reserve(&h, 603.0, "hoarder", 99)).expect("points");
        assert_eq!(p.points, 60);
        assert!(p.reason.contains("fair share among 6 clients"), "{}", p.reason);
        // Another buyer is unaffected; failed holds do not count; a bulk tier is
        // not scored.
        let f = reserve(&h, 604.0, "buyer0", 1);
        s.observe(
            &f,
            Outcome {
                status: http::StatusCode::CONFLICT,
                refused_by_risk: false,
            },
        );
        assert_eq!(s.evaluate(&f), None);
        assert_eq!(
            s.evaluate(&reserve(&h, 605.0, "hoarder", 98).with_bulk(true)),
            None
        );
    }
}
