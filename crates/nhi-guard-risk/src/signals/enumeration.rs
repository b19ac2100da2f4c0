use std::borrow::Cow;
use std::time::Duration;

use super::{combine, nanos};
use crate::signal::{Curve, Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, Hll64, WindowedDistinct};

/// Configuration of [`Enumeration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnumerationConfig {
    /// Window of the distinct count and of a sequential run. Default 10 minutes.
    pub window: Duration,
    /// Points for distinct resource ids per actor and route group in the window.
    /// Default: 100 → 40, +10 per 25 more, so 200 → 80 (block).
    ///
    /// Integrations work on their own objects: an order sync touches the orders it
    /// created, a fulfilment client the items it ships. A hundred distinct objects
    /// of one kind in ten minutes, outside a bulk endpoint, is harvesting. Give
    /// legitimate bulk readers a route without a resource capture, a lower route
    /// sensitivity, or a tier multiplier.
    pub distinct_curve: Curve,
    /// Points for a run of consecutive requests whose numeric ids step by 1 to 3 in
    /// the same direction. Default: 20 → 40, +10 per 10 more, so 60 → 80.
    /// Walking ids is what BOLA probes and scrapers do; applications look up the
    /// ids they hold.
    pub sequential_curve: Curve,
    /// Most (actor, group) pairs tracked. Default 100 000.
    pub capacity: usize,
}

impl Default for EnumerationConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            distinct_curve: Curve::new(100, 40, 10, 25, 100),
            sequential_curve: Curve::new(20, 40, 10, 10, 100),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Walk {
    last_id: u64,
    last_at: u64,
    run: u32,
    direction: i8,
    distinct: WindowedDistinct<Hll64>,
}

/// Signal 6: enumeration: distinct resource identifiers per client on a route group
/// within a window, and sequential walking of identifiers (scraping, BOLA probing).
/// Identifiers come from route captures ([`crate::Route::resource`]).
#[derive(Debug)]
pub struct Enumeration {
    cfg: EnumerationConfig,
    window: u64,
    by_actor: BoundedMap<Walk>,
}

impl Enumeration {
    /// The signal with `cfg`.
    pub fn new(cfg: EnumerationConfig) -> Self {
        Self {
            window: nanos(cfg.window),
            by_actor: BoundedMap::new(cfg.capacity, cfg.window * 2),
            cfg,
        }
    }
}

impl Signal for Enumeration {
    fn name(&self) -> &'static str {
        "enumeration"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let route = f.route?;
        let id = route.resource_hash?;
        // Refused credentials are the stuffing signals' business, taking scarce
        // items (in any order) the hoarding signal's; a bulk tier is entitled to
        // volume.
        if f.identity_failure.is_some() || f.bulk || route.scarce {
            return None;
        }
        let actor = f.actor_hash()?;
        let now = f.now_nanos;
        let window = self.window;
        let (distinct, run) =
            self.by_actor
                .update(combine(actor, route.group_hash), now, Walk::default, |w| {
                    let distinct = w.distinct.insert(id, now, window);
                    if let Some(n) = route.resource_number {
                        let step = n as i128 - w.last_id as i128;
                        let dir = step.signum() as i8;
                        let recent = now.saturating_sub(w.last_at) < window;
                        if (1..=3).contains(&step.abs()) && recent && (w.run == 0 || dir == w.direction) {
                            w.run += 1;
                            w.direction = dir;
                        } else if step != 0 {
                            w.run = 0;
                        }
                        w.last_id = n;
                        w.last_at = now;
                    }
                    (distinct, w.run)
                });
        let dp = self.cfg.distinct_curve.points(distinct);
        let sp = self.cfg.sequential_curve.points(run);
        if dp == 0 && sp == 0 {
            return None;
        }
        let reason = if sp > dp {
            format!("sequential walk of {run} identifiers")
        } else {
            format!("{distinct} distinct identifiers on this route group within the window")
        };
        Some(Points {
            points: dp.max(sp),
            key: f.actor()?.1,
            reason: Cow::Owned(reason),
        })
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

    fn on(h: &KeyHasher, t: f64, client: &str, id: u64) -> RequestFacts {
        authed(h, t, "127.0.0.1", client, client).with_route(RouteFacts {
            index: 0,
            group_hash: h.hash("items"),
            resource_hash: Some(h.hash(&id)),
            resource_number: Some(id),
            scarce: false,
            capacity: 0,
        })
    }

    #[test]
    fn sequential_walk_scores_early() {
        let h = KeyHasher::new();
        let s = Enumeration::new(EnumerationConfig::default());
        let mut first = None;
        for id in 1000..1100u64 {
            if let Some(p) = s.evaluate(&on(&h, id as f64 * 0.5, "scraper", id)) {
                first.get_or_insert((id, p.points));
            }
        }
        assert_eq!(first, Some((1020, 40)));
        assert_eq!(
            s.evaluate(&on(&h, 600.0, "scraper", 1100))
                .map(|p| (p.points, p.key.to_string())),
            Some((100, "client:scraper".to_string()))
        );
    }

    #[test]
    fn random_ids_score_by_distinct_count_and_repeat_reads_do_not() {
        let h = KeyHasher::new();
        let s = Enumeration::new(EnumerationConfig::default());
        let mut x: u64 = 88172645463325252;
        let mut points = 0;
        for i in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if let Some(p) = s.evaluate(&on(&h, f64::from(i) * 0.5, "scraper", x % 1_000_000)) {
                points = p.points;
            }
        }
        assert!(points >= 80, "{points}");
        // A client re-reading its 30 items all day never scores.
        for i in 0..3000u64 {
            assert_eq!(s.evaluate(&on(&h, i as f64 * 10.0, "app", (i * 7) % 30)), None);
        }
    }
}
