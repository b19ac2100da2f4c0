use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;

use super::nanos;
use crate::signal::{Curve, Outcome, Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, WindowCounter};

/// Configuration of [`Probing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbingConfig {
    /// Window of the counts. Default 10 minutes.
    pub window: Duration,
    /// Responses needed before the ratio is judged. Default 20.
    pub min_responses: u32,
    /// Points by the percentage of 401/403/404 answers (of at least
    /// `min_responses`). Default: 50% → 40, +10 per 15 points more, so 95% → 70.
    ///
    /// Applications ask for what exists and what they may see; a client whose
    /// answers are mostly "not found" or "forbidden" is guessing (BOLA probing, id
    /// harvesting, mapping the API).
    pub refused_curve: Curve,
    /// Points by requests that lacked a required scope in the window. Default: 5 →
    /// 40, +10 per 5 more. A client that keeps trying what it may not do is probing
    /// its permissions; a misconfigured one fails the same way and its owner should
    /// hear about it.
    pub scope_curve: Curve,
    /// Most clients tracked. Default 100 000.
    pub capacity: usize,
}

impl Default for ProbingConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            min_responses: 20,
            refused_curve: Curve::new(50, 40, 10, 15, 100),
            scope_curve: Curve::new(5, 40, 10, 5, 100),
            capacity: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Answers {
    total: WindowCounter,
    refused: WindowCounter,
    scope_misses: WindowCounter,
}

/// Signal 7: probing: the share of 401/403/404 answers per client, and repeated
/// attempts at scopes it lacks. Learns after the response.
#[derive(Debug)]
pub struct Probing {
    cfg: ProbingConfig,
    window: u64,
    by_actor: BoundedMap<Answers>,
}

impl Probing {
    /// The signal with `cfg`.
    pub fn new(cfg: ProbingConfig) -> Self {
        Self {
            window: nanos(cfg.window),
            by_actor: BoundedMap::new(cfg.capacity, cfg.window * 2),
            cfg,
        }
    }
}

impl Signal for Probing {
    fn name(&self) -> &'static str {
        "probing"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        f.client.as_ref()?;
        let h = f.actor_hash()?;
        let now = f.now_nanos;
        let w = self.window;
        let (total, refused, misses) = self.by_actor.read(h, now, |a| {
            (
                a.total.count(now, w),
                a.refused.count(now, w),
                a.scope_misses.count(now, w),
            )
        })?;
        let rp = if total >= self.cfg.min_responses {
            self.cfg
                .refused_curve
                .points(refused.saturating_mul(100) / total.max(1))
        } else {
            0
        };
        let sp = self.cfg.scope_curve.points(misses);
        if rp == 0 && sp == 0 {
            return None;
        }
        let reason = if sp > rp {
            format!("{misses} requests for scopes the client lacks")
        } else {
            format!("{refused} of {total} answers were 401/403/404")
        };
        Some(Points {
            points: rp.max(sp),
            key: f.actor()?.1,
            reason: Cow::Owned(reason),
        })
    }

    fn observe(&self, f: &RequestFacts, outcome: Outcome) {
        if f.client.is_none() || outcome.refused_by_risk {
            return;
        }
        let Some(h) = f.actor_hash() else { return };
        let now = f.now_nanos;
        let w = self.window;
        let refused = matches!(
            outcome.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        );
        self.by_actor.update(h, now, Answers::default, |a| {
            a.total.add(now, w, 1);
            if refused {
                a.refused.add(now, w, 1);
            }
            if f.missing_scopes {
                a.scope_misses.add(now, w, 1);
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
    use crate::signals::testing::*;
    use crate::state::KeyHasher;

    fn out(code: u16) -> Outcome {
        Outcome {
            status: StatusCode::from_u16(code).expect("status"),
            refused_by_risk: false,
        }
    }

    #[test]
    fn mostly_not_found_scores_after_enough_answers() {
        let h = KeyHasher::new();
        let s = Probing::new(ProbingConfig::default());
        for i in 0..19 {
            s.observe(&authed(&h, f64::from(i), "127.0.0.1", "prober", "k"), out(404));
        }
        assert_eq!(
            s.evaluate(&authed(&h, 20.0, "127.0.0.1", "prober", "k")),
            None,
            "too few answers"
        );
        s.observe(&authed(&h, 20.0, "127.0.0.1", "prober", "k"), out(403));
        let p = s
            .evaluate(&authed(&h, 21.0, "127.0.0.1", "prober", "k"))
            .expect("points");
        assert_eq!((p.points, p.key.to_string()), (70, "client:prober".to_string()));
    }

    #[test]
    fn a_healthy_mix_does_not_score_and_scope_misses_do() {
        let h = KeyHasher::new();
        let s = Probing::new(ProbingConfig::default());
        for i in 0..100 {
            let code = if i % 10 == 0 { 404 } else { 200 };
            s.observe(&authed(&h, f64::from(i), "127.0.0.1", "app", "k"), out(code));
        }
        assert_eq!(s.evaluate(&authed(&h, 101.0, "127.0.0.1", "app", "k")), None);
        for i in 0..5 {
            let f = authed(&h, 110.0 + f64::from(i), "127.0.0.1", "app", "k").with_missing_scopes();
            s.observe(&f, out(403));
        }
        let p = s
            .evaluate(&authed(&h, 120.0, "127.0.0.1", "app", "k"))
            .expect("points");
        assert_eq!(p.points, 40);
        assert!(p.reason.contains("scopes"), "{}", p.reason);
    }
}
