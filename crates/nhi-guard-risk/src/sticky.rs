//! The in-process store of sticky decisions (and an in-process [`RiskStore`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::store::{RiskKey, RiskStore, RiskStoreFuture, StickyAction, StickyDecision};
use nhi_guard_core::clock::duration_nanos;

use crate::signal::RequestFacts;
use crate::state::{BoundedMap, CappedSet, Hll64, KeyHasher, Sketch};

fn unix_nanos(t: SystemTime) -> u64 {
    duration_nanos(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// The hash of a risk key, as [`RequestFacts`] computes it for the same key.
pub(crate) fn key_hash(hasher: &KeyHasher, key: &RiskKey) -> u64 {
    match key {
        RiskKey::Address(ip) => hasher.hash_tagged(1, ip),
        RiskKey::Network(net) => hasher.hash_tagged(2, net),
        RiskKey::Client(id) => hasher.hash_tagged(3, id.as_str()),
        RiskKey::Credential(fp) => hasher.hash_tagged(4, fp.as_bytes()),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) decision: StickyDecision,
    until_nanos: u64,
    /// Throttle: the GCRA theoretical arrival time of the cut allowance.
    tat: u64,
    /// Throttle: earned by the edge half's signals (so the edge enforces it);
    /// otherwise the inner half does, after scoring the request.
    by_edge: bool,
}

/// What a sticky look-up found.
#[derive(Debug, Clone)]
pub(crate) enum StickyHit {
    Block(StickyDecision),
    StepUp(StickyDecision),
    /// Throttled, over the allowance: retry after this long.
    ThrottleRefused(StickyDecision, Duration),
    /// Throttled, within the allowance.
    ThrottlePassed,
}

/// In-process sticky decisions: bounded, each expiring at its `until`.
#[derive(Debug)]
pub struct InMemoryRiskStore {
    hasher: KeyHasher,
    entries: BoundedMap<Entry>,
    /// Blocks earned per key in the last day: repeat offenders get longer blocks
    /// and start with points.
    strikes: BoundedMap<u32>,
    counters: BoundedMap<(u64, u64)>,
    distinct: BoundedMap<(u64, Hll64, CappedSet<64>)>,
}

impl InMemoryRiskStore {
    /// A store holding at most `capacity` decisions, none lasting longer than
    /// `longest`.
    pub fn new(capacity: usize, longest: Duration) -> Self {
        Self::with_hasher(KeyHasher::new(), capacity, longest)
    }

    pub(crate) fn with_hasher(hasher: KeyHasher, capacity: usize, longest: Duration) -> Self {
        let idle = longest + Duration::from_secs(1);
        Self {
            hasher,
            entries: BoundedMap::new(capacity, idle),
            strikes: BoundedMap::new(capacity, Duration::from_secs(24 * 3600)),
            counters: BoundedMap::new(capacity, Duration::from_secs(24 * 3600)),
            distinct: BoundedMap::new(capacity, Duration::from_secs(24 * 3600)),
        }
    }

    /// Stores `decision` unless a stronger or longer one is in place on its key.
    pub fn put_decision(&self, decision: StickyDecision, now: SystemTime) {
        let h = key_hash(&self.hasher, &decision.key);
        let now_n = unix_nanos(now);
        let until_nanos = unix_nanos(decision.until);
        let fresh = Entry {
            until_nanos,
            tat: now_n,
            by_edge: false,
            decision: decision.clone(),
        };
        self.entries.update(
            h,
            now_n,
            || fresh.clone(),
            |e| {
                let active = e.until_nanos > now_n;
                if !active || decision.action > e.decision.action {
                    *e = fresh.clone();
                } else if decision.action == e.decision.action && until_nanos > e.until_nanos {
                    e.until_nanos = until_nanos;
                    e.decision.until = decision.until;
                    e.decision.score = e.decision.score.max(decision.score);
                }
            },
        );
    }

    /// Starts a throttle whose allowance is spent until `now + interval`, or extends
    /// the cool-down of an active one (keeping its allowance schedule, so refused
    /// requests do not push the next allowed one further away).
    pub(crate) fn put_throttle(
        &self,
        decision: StickyDecision,
        now: SystemTime,
        interval: u64,
        by_edge: bool,
    ) {
        let h = key_hash(&self.hasher, &decision.key);
        let now_n = unix_nanos(now);
        let was_active = self
            .entries
            .read(h, now_n, |e| {
                e.until_nanos > now_n && e.decision.action == StickyAction::Throttle
            })
            .unwrap_or(false);
        self.put_decision(decision, now);
        if !was_active {
            self.entries.update(
                h,
                now_n,
                || unreachable_entry(now_n),
                |e| {
                    if e.decision.action == StickyAction::Throttle {
                        e.tat = now_n + interval;
                        e.by_edge = by_edge;
                    }
                },
            );
        }
    }

    /// The strongest active decision on the request's keys; a throttle's allowance
    /// is consumed when the request passes it. At the edge (`phase` Edge) only
    /// throttles the edge earned count: the others are the inner half's, which
    /// scores the request first. `edge_checked`: the edge half already spent the
    /// allowance of the edge-earned throttles of this request.
    pub(crate) fn check(
        &self,
        facts: &RequestFacts,
        interval: u64,
        at_edge: bool,
        edge_checked: bool,
    ) -> Option<StickyHit> {
        if self.entries.is_empty() {
            return None;
        }
        let now = facts.now_nanos;
        let keys = [
            facts.addr_hash(),
            facts.network_hash(),
            facts.credential_hash(),
            facts.client_hash(),
        ];
        let mut best: Option<(StickyAction, u64, bool)> = None;
        for h in keys.into_iter().flatten() {
            if let Some((action, by_edge)) = self
                .entries
                .read(h, now, |e| {
                    (e.until_nanos > now).then_some((e.decision.action, e.by_edge))
                })
                .flatten()
                && !(at_edge && action == StickyAction::Throttle && !by_edge)
                && best.is_none_or(|b| action > b.0)
            {
                best = Some((action, h, by_edge));
            }
        }
        let (action, h, by_edge) = best?;
        self.entries
            .read(h, now, |e| e.decision.clone())
            .map(|d| match action {
                StickyAction::Block => StickyHit::Block(d),
                StickyAction::StepUp => StickyHit::StepUp(d),
                // The edge half already spent this request's allowance.
                _ if by_edge && edge_checked => StickyHit::ThrottlePassed,
                _ => self.take_allowance(h, now, interval, d),
            })
    }

    fn take_allowance(&self, h: u64, now: u64, interval: u64, d: StickyDecision) -> StickyHit {
        let wait = self.entries.update(
            h,
            now,
            || unreachable_entry(now),
            |e| {
                if e.tat <= now {
                    e.tat = now + interval;
                    None
                } else {
                    Some(e.tat - now)
                }
            },
        );
        match wait {
            None => StickyHit::ThrottlePassed,
            Some(w) => StickyHit::ThrottleRefused(d, Duration::from_nanos(w)),
        }
    }

    /// Counts a block on `key`; returns its blocks in the last day (this one included).
    pub(crate) fn strike(&self, key: &RiskKey, now: SystemTime) -> u32 {
        let h = key_hash(&self.hasher, key);
        self.strikes.update(
            h,
            unix_nanos(now),
            || 0,
            |n| {
                *n = n.saturating_add(1);
                *n
            },
        )
    }

    /// Points for a request from a key blocked before within the last day:
    /// `per_strike` per block, at most three strikes' worth.
    pub(crate) fn repeat_offender(&self, f: &RequestFacts, per_strike: u32) -> Option<crate::signal::Points> {
        if self.strikes.is_empty() || per_strike == 0 {
            return None;
        }
        let now = f.now_nanos;
        let candidates = [
            (f.addr_hash(), 0u8),
            (f.network_hash(), 1),
            (f.credential_hash(), 2),
            (f.client_hash(), 3),
        ];
        let (n, which) = candidates
            .iter()
            .filter_map(|(h, w)| Some((self.strikes.read((*h)?, now, |n| *n)?, *w)))
            .max_by_key(|(n, _)| *n)?;
        let key = match which {
            0 => RiskKey::Address(f.addr()?),
            1 => RiskKey::Network(f.network()?),
            2 => RiskKey::Credential(f.credential()?),
            _ => RiskKey::Client(f.client()?.clone()),
        };
        Some(crate::signal::Points {
            points: per_strike.saturating_mul(n.min(3)),
            key,
            reason: std::borrow::Cow::Owned(format!("blocked {n} time(s) in the last day")),
        })
    }

    /// Every active decision at `now`, strongest first.
    pub fn active(&self, now: SystemTime) -> Vec<StickyDecision> {
        let now_n = unix_nanos(now);
        let mut out = Vec::new();
        self.entries.for_each(now_n, |_, e| {
            if e.until_nanos > now_n {
                out.push(e.decision.clone());
            }
        });
        out.sort_by(|a, b| b.action.cmp(&a.action).then_with(|| a.key.cmp(&b.key)));
        out
    }

    /// Lifts the decision on `key`; whether an active one was there.
    pub fn lift_key(&self, key: &RiskKey, now: SystemTime) -> bool {
        let h = key_hash(&self.hasher, key);
        let now_n = unix_nanos(now);
        let was_active = self
            .entries
            .read(h, now_n, |e| e.until_nanos > now_n)
            .unwrap_or(false);
        self.entries.remove(h);
        // The operator forgives: no repeat-offender points or longer blocks either.
        self.strikes.remove(h);
        was_active
    }

    /// Decisions held (including lapsed ones not yet evicted).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no decision is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

// Only reached if an entry vanished between two look-ups under eviction: an
// already-lapsed throttle that lets the request through.
fn unreachable_entry(now: u64) -> Entry {
    Entry {
        decision: StickyDecision {
            key: RiskKey::Client(nhi_guard_core::ClientId::from("-")),
            action: StickyAction::Throttle,
            until: SystemTime::UNIX_EPOCH + Duration::from_nanos(now),
            score: 0,
            reason: Arc::from(""),
        },
        until_nanos: now,
        tat: now,
        by_edge: false,
    }
}

impl RiskStore for InMemoryRiskStore {
    fn increment(&self, name: Arc<str>, window: Duration, now: SystemTime) -> RiskStoreFuture<u64> {
        let w = duration_nanos(window).max(1);
        let now_n = unix_nanos(now);
        let index = now_n / w;
        let h = self.hasher.hash_tagged(7, &*name);
        let n = self.counters.update(
            h,
            now_n,
            || (index, 0),
            |(i, c)| {
                if *i != index {
                    *i = index;
                    *c = 0;
                }
                *c += 1;
                *c
            },
        );
        Box::pin(std::future::ready(Ok(n)))
    }

    fn add_distinct(
        &self,
        name: Arc<str>,
        member: Arc<[u8]>,
        window: Duration,
        now: SystemTime,
    ) -> RiskStoreFuture<u64> {
        let w = duration_nanos(window).max(1);
        let now_n = unix_nanos(now);
        let index = now_n / w;
        let h = self.hasher.hash_tagged(8, &*name);
        let m = self.hasher.hash(&*member);
        let n = self.distinct.update(
            h,
            now_n,
            || (index, Hll64::default(), CappedSet::default()),
            |(i, hll, exact)| {
                if *i != index {
                    *i = index;
                    *hll = Hll64::default();
                    *exact = CappedSet::default();
                }
                hll.insert(m);
                exact.insert(m);
                if exact.len() < 64 {
                    exact.len()
                } else {
                    hll.count().max(64)
                }
            },
        );
        Box::pin(std::future::ready(Ok(u64::from(n))))
    }

    fn put(&self, decision: StickyDecision, now: SystemTime) -> RiskStoreFuture<()> {
        self.put_decision(decision, now);
        Box::pin(std::future::ready(Ok(())))
    }

    fn find(&self, keys: Arc<[RiskKey]>, now: SystemTime) -> RiskStoreFuture<Option<StickyDecision>> {
        let now_n = unix_nanos(now);
        let best = keys
            .iter()
            .filter_map(|k| {
                let h = key_hash(&self.hasher, k);
                self.entries
                    .read(h, now_n, |e| (e.until_nanos > now_n).then(|| e.decision.clone()))
                    .flatten()
            })
            .max_by_key(|d| d.action);
        Box::pin(std::future::ready(Ok(best)))
    }

    fn list(&self, now: SystemTime) -> RiskStoreFuture<Vec<StickyDecision>> {
        Box::pin(std::future::ready(Ok(self.active(now))))
    }

    fn lift(&self, key: RiskKey) -> RiskStoreFuture<bool> {
        let h = key_hash(&self.hasher, &key);
        Box::pin(std::future::ready(Ok(self.entries.remove(h))))
    }
}
