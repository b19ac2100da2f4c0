//! [`RiskLayer`]: configuration and builder.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::RiskStore;
use nhi_guard_core::denial::{DefaultRenderer, RenderDenial, SharedRenderer};
use nhi_guard_core::metrics::{ControlMetrics, LazyHistogram};
use nhi_guard_core::settings::{Explicit, LayerSettings};
use nhi_guard_core::{ClientAddrResolver, SharedClock, SystemClock};
use tower_layer::Layer;

use crate::engine::{Cooldowns, Engine, Mode, Shared, SharedLimits, Thresholds};
use crate::error::ConfigError;
use crate::explain::DecisionLog;
use crate::operator::RiskOperator;
use crate::route::{Route, RouteTable};
use crate::service::{Risk, RiskEdge};
use crate::signal::{Phase, Signal};
use crate::signals;
use crate::state::KeyHasher;
use crate::sticky::InMemoryRiskStore;
use nhi_guard_core::route::Routes;

/// Builds the risk layer: signals, routes, thresholds, cool-downs and mode.
///
/// The configuration lives behind an `Arc`; clones of the layer (and of its
/// services) share the same signal state and sticky decisions. See the crate docs
/// for the placement relative to the identity layer.
#[derive(Debug, Clone)]
pub struct RiskLayer {
    engine: Arc<Engine>,
}

impl Default for RiskLayer {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl RiskLayer {
    /// A layer with the eight default signals, default thresholds (throttle 40,
    /// step-up 60, block 80), default cool-downs, enforcing, on the system clock.
    pub fn new() -> Self {
        let hasher = KeyHasher::new();
        let cooldowns = Cooldowns::default();
        let signals = signals::defaults();
        let edge = signals.iter().map(|s| s.phase() == Phase::Edge).collect();
        Self {
            engine: Arc::new(Engine {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                signals: signals.into(),
                edge,
                routes: RouteTable::default(),
                sticky: Arc::new(InMemoryRiskStore::with_hasher(
                    hasher.clone(),
                    100_000,
                    longest(&cooldowns),
                )),
                hasher,
                thresholds: Thresholds::default(),
                cooldowns,
                throttle_interval: Duration::from_secs(10),
                max_age: Duration::from_secs(300),
                repeat_points: 20,
                tiers: HashMap::default(),
                bulk_tiers: Vec::new(),
                shared: None,
                mode: Mode::Enforce,
                clock: Arc::new(SystemClock),
                resolver: ClientAddrResolver::new(),
                renderer: DefaultRenderer::new().shared(),
                explicit: Explicit::default(),
                metrics: ControlMetrics::new(nhi_guard_core::Control::Risk),
                score: LazyHistogram::new(nhi_guard_core::metrics::RISK_SCORE),
                decisions: Arc::new(DecisionLog::new(1_000)),
            }),
        }
    }

    fn edit(&mut self) -> &mut Engine {
        // The builder runs before the layer is shared, so this does not clone; if a
        // clone exists, the edit goes to a fresh copy (state included) for this one.
        if Arc::get_mut(&mut self.engine).is_none() {
            let e = &self.engine;
            self.engine = Arc::new(Engine {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                signals: e.signals.clone(),
                edge: e.edge.clone(),
                routes: e.routes.clone(),
                hasher: e.hasher.clone(),
                thresholds: e.thresholds,
                cooldowns: e.cooldowns,
                throttle_interval: e.throttle_interval,
                max_age: e.max_age,
                repeat_points: e.repeat_points,
                tiers: e.tiers.clone(),
                bulk_tiers: e.bulk_tiers.clone(),
                sticky: e.sticky.clone(),
                shared: e.shared.clone(),
                mode: e.mode,
                clock: e.clock.clone(),
                resolver: e.resolver.clone(),
                renderer: e.renderer.clone(),
                explicit: e.explicit,
                metrics: e.metrics.clone(),
                score: e.score.clone(),
                decisions: e.decisions.clone(),
            });
        }
        Arc::get_mut(&mut self.engine).unwrap_or_else(|| unreachable!("just made unique"))
    }

    /// Replaces the signals (start from [`crate::signals::defaults`] to extend them).
    #[must_use]
    pub fn signals(mut self, signals: Vec<Arc<dyn Signal>>) -> Self {
        let e = self.edit();
        e.edge = signals.iter().map(|s| s.phase() == Phase::Edge).collect();
        e.signals = signals.into();
        self
    }

    /// Adds a signal.
    #[must_use]
    pub fn signal(mut self, signal: impl Signal) -> Self {
        let e = self.edit();
        let mut v = e.signals.to_vec();
        v.push(Arc::new(signal));
        e.edge = v.iter().map(|s| s.phase() == Phase::Edge).collect();
        e.signals = v.into();
        self
    }

    /// Adds a route (group, resource capture, sensitivity, scarce) to the layer's
    /// own route table. The most specific route matches, whatever the order.
    ///
    /// # Errors
    /// Two equally specific routes for overlapping methods (naming both), or the
    /// layer already reads a shared table ([`RiskLayer::routes`]).
    pub fn route(mut self, route: Route) -> Result<Self, ConfigError> {
        let e = self.edit();
        let hasher = e.hasher.clone();
        e.routes.push(route, &hasher)?;
        Ok(self)
    }

    /// Whether the layer has routes: its own ([`RiskLayer::route`]) or a shared
    /// table ([`RiskLayer::routes`]).
    pub fn has_routes(&self) -> bool {
        self.engine.routes.is_configured()
    }

    /// Reads the risk routes from the shared route table: the routes with a
    /// [`RouteRisk`](crate::RouteRisk) attribute. The stack's layers given the same table match each
    /// request once.
    ///
    /// # Errors
    /// A [`RouteRisk::resource`](crate::RouteRisk::resource) naming a capture its pattern lacks, or routes
    /// already added one by one with [`RiskLayer::route`].
    pub fn routes(mut self, routes: &Routes) -> Result<Self, ConfigError> {
        let e = self.edit();
        let hasher = e.hasher.clone();
        e.routes.shared(routes, &hasher)?;
        Ok(self)
    }

    /// Sets the action thresholds.
    ///
    /// # Errors
    /// Unless `1 ≤ throttle ≤ step_up ≤ block ≤ 100`; the error names the field.
    pub fn thresholds(mut self, t: Thresholds) -> Result<Self, ConfigError> {
        if t.throttle == 0 {
            return Err(ConfigError::new(
                "risk",
                "thresholds.throttle",
                "must be at least 1",
            ));
        }
        if t.step_up < t.throttle {
            return Err(ConfigError::new(
                "risk",
                "thresholds.step_up",
                "must be at least thresholds.throttle",
            ));
        }
        if t.block < t.step_up {
            return Err(ConfigError::new(
                "risk",
                "thresholds.block",
                "must be at least thresholds.step_up",
            ));
        }
        if t.block > 100 {
            return Err(ConfigError::new(
                "risk",
                "thresholds.block",
                "must be at most 100",
            ));
        }
        self.edit().thresholds = t;
        Ok(self)
    }

    /// Sets how long sticky decisions last.
    ///
    /// # Errors
    /// When a cool-down is zero or longer than 30 days; the error names it.
    pub fn cooldowns(mut self, c: Cooldowns) -> Result<Self, ConfigError> {
        for (name, d) in [
            ("cooldowns.throttle", c.throttle),
            ("cooldowns.step_up", c.step_up),
            ("cooldowns.block", c.block),
        ] {
            if d.is_zero() || d > Duration::from_secs(30 * 86_400) {
                return Err(ConfigError::new("risk", name, "must be between 1 ns and 30 days"));
            }
        }
        let e = self.edit();
        e.cooldowns = c;
        e.sticky = Arc::new(InMemoryRiskStore::with_hasher(
            e.hasher.clone(),
            100_000,
            longest(&c),
        ));
        Ok(self)
    }

    /// While throttled, a key may send one request per `interval` (default 10 s,
    /// i.e. its effective quota is cut to 6 a minute for the cool-down).
    ///
    /// # Errors
    /// When `interval` is zero.
    pub fn throttle_interval(mut self, interval: Duration) -> Result<Self, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::new("risk", "throttle_interval", "must not be zero"));
        }
        self.edit().throttle_interval = interval;
        Ok(self)
    }

    /// The RFC 9470 `max_age` of a step-up: a bearer token issued (`iat`) at most
    /// this long ago answers it. Default 5 minutes.
    ///
    /// # Errors
    /// When `max_age` is under one second.
    pub fn step_up_max_age(mut self, max_age: Duration) -> Result<Self, ConfigError> {
        if max_age < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "risk",
                "step_up_max_age",
                "must be at least 1 s",
            ));
        }
        self.edit().max_age = max_age;
        Ok(self)
    }

    /// Multiplies the score of clients of tier `tier` (e.g. 0.5 for a trusted batch
    /// tier, 1.5 for a free tier). Default 1.
    ///
    /// # Errors
    /// When `multiplier` is negative, not finite, or above 10.
    pub fn tier_multiplier(mut self, tier: &str, multiplier: f32) -> Result<Self, ConfigError> {
        if !multiplier.is_finite() || !(0.0..=10.0).contains(&multiplier) {
            return Err(ConfigError::new(
                "risk",
                format!("tier_multiplier[{tier}]"),
                "must be a finite number from 0 to 10",
            ));
        }
        self.edit().tiers.insert(tier.into(), multiplier);
        Ok(self)
    }

    /// Marks `tier` as a bulk tier: its clients are entitled to read and hold in
    /// volume (a nightly export, a catalogue sync), so the volume signals
    /// (enumeration, hoarding) do not score them. Every other signal (a credential
    /// used from many networks, a new network, probing, stuffing) still does, so a
    /// stolen bulk credential is caught like any other.
    #[must_use]
    pub fn bulk_tier(mut self, tier: &str) -> Self {
        let tiers = &mut self.edit().bulk_tiers;
        if !tiers.iter().any(|t| &**t == tier) {
            tiers.push(tier.into());
        }
        self
    }

    /// How many of the latest risk actions (throttle, step-up, block) are kept
    /// with the signals behind them, for [`crate::RiskOperator::recent_decisions`].
    /// Default 1 000; 0 keeps none. Each takes a few hundred bytes.
    #[must_use]
    pub fn decision_log(mut self, capacity: usize) -> Self {
        self.edit().decisions = Arc::new(DecisionLog::new(capacity));
        self
    }

    /// Enforce, shadow or off.
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.edit().mode = mode;
        self
    }

    /// Shadow mode (`true`): score and record, never refuse, as the other layers'
    /// `shadow(true)`. `false` enforces again; a layer turned [`Mode::Off`] stays
    /// off.
    #[must_use]
    pub fn shadow(self, shadow: bool) -> Self {
        match (shadow, self.engine.mode) {
            (true, _) => self.mode(Mode::Shadow),
            (false, Mode::Shadow) => self.mode(Mode::Enforce),
            (false, _) => self,
        }
    }

    /// The clock (tests use [`nhi_guard_core::clock::ManualClock`]). Requests are
    /// judged at the arrival time their security context recorded (by the clock of
    /// the layer that created it, this one when it is first); the operator API and
    /// a context created here use this clock.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        let e = self.edit();
        e.clock = clock;
        e.explicit.clock = true;
        self
    }

    /// How the client address is resolved when this layer creates the context.
    #[must_use]
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        let e = self.edit();
        e.resolver = resolver;
        e.explicit.resolver = true;
        self
    }

    /// Replaces the denial renderer.
    #[must_use]
    pub fn renderer(self, renderer: impl RenderDenial) -> Self {
        self.shared_renderer(Arc::new(renderer))
    }

    /// A shared renderer.
    #[must_use]
    pub fn shared_renderer(mut self, renderer: SharedRenderer) -> Self {
        let e = self.edit();
        e.renderer = renderer;
        e.explicit.renderer = true;
        self
    }

    /// Takes the stack's clock, resolver and renderer for those this layer was not
    /// given (see [`nhi_guard_core::settings`]).
    #[must_use]
    pub fn inherit(mut self, stack: &LayerSettings) -> Self {
        let e = self.edit();
        e.explicit
            .fill(stack, &mut e.clock, &mut e.resolver, Some(&mut e.renderer));
        self
    }

    /// The client-address resolver set on this layer, if one was.
    pub fn own_client_addr_resolver(&self) -> Option<&ClientAddrResolver> {
        self.engine.explicit.resolver.then_some(&self.engine.resolver)
    }

    /// Shares blocks, step-ups and authentication-failure evidence with other
    /// replicas through `store` (e.g. `nhi-guard-redis`). Each request then makes
    /// one store look-up; failed authentications make three more. When the store
    /// fails, the request is scored locally (fail-open) unless
    /// [`RiskLayer::shared_store_fail_closed`].
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn RiskStore>) -> Self {
        self.edit().shared = Some(Shared {
            store,
            fail_closed: false,
            limits: SharedLimits::default(),
        });
        self
    }

    /// With a shared store: refuse requests (503 / `UNAVAILABLE`) while it fails.
    #[must_use]
    pub fn shared_store_fail_closed(mut self, fail_closed: bool) -> Self {
        if let Some(s) = &mut self.edit().shared {
            s.fail_closed = fail_closed;
        }
        self
    }

    /// With a shared store: the cluster-wide limits.
    #[must_use]
    pub fn shared_limits(mut self, limits: SharedLimits) -> Self {
        if let Some(s) = &mut self.edit().shared {
            s.limits = limits;
        }
        self
    }

    /// The operator handle: list and lift active decisions, report memory.
    pub fn operator(&self) -> RiskOperator {
        RiskOperator::new(self.engine.clone())
    }

    /// The edge half of this layer, sharing its state: place it *outside* the
    /// identity layer. It refuses addresses and networks under a sticky decision
    /// before credentials are verified, scores the address signals, and observes
    /// every outcome (including identity failures, which the inner layer never
    /// sees because the identity layer answers them).
    pub fn edge(&self) -> RiskEdgeLayer {
        RiskEdgeLayer {
            engine: self.engine.clone(),
        }
    }
}

fn longest(c: &Cooldowns) -> Duration {
    c.throttle.max(c.step_up).max(c.block)
}

impl<S> Layer<S> for RiskLayer {
    type Service = Risk<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Risk::new(inner, self.engine.clone(), Phase::Identified)
    }
}

/// The edge half of a [`RiskLayer`] (see [`RiskLayer::edge`]).
#[derive(Debug, Clone)]
pub struct RiskEdgeLayer {
    engine: Arc<Engine>,
}

impl<S> Layer<S> for RiskEdgeLayer {
    type Service = RiskEdge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RiskEdge::new(Risk::new(inner, self.engine.clone(), Phase::Edge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_takes_a_bool_like_the_other_layers() {
        let mode = |l: &RiskLayer| l.engine.mode;
        assert_eq!(mode(&RiskLayer::new().shadow(true)), Mode::Shadow);
        assert_eq!(mode(&RiskLayer::new().shadow(true).shadow(false)), Mode::Enforce);
        assert_eq!(mode(&RiskLayer::new().mode(Mode::Off).shadow(false)), Mode::Off);
        assert_eq!(mode(&RiskLayer::new().mode(Mode::Off).shadow(true)), Mode::Shadow);
    }
}
