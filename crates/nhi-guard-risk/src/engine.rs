//! Scoring and actions: the part of the layer that does not depend on the service.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{RiskKey, RiskStore, StickyAction, StickyDecision};
use http::StatusCode;
use nhi_guard_core::context::{ContextState, Decision, RiskAssessment, SignalHit};
use nhi_guard_core::denial::SharedRenderer;
use nhi_guard_core::hash::FxBuildHasher;
use nhi_guard_core::{ClientAddrResolver, Control, CredentialInfo, Denial, SecurityContext, SharedClock};

use crate::explain::{DecisionLog, ExplainedDecision};
use crate::route::RouteTable;
use crate::signal::{AddrFacts, CredentialClass, Outcome, Phase, Points, RequestFacts, RouteFacts, Signal};
use crate::signals::nanos;
use crate::state::KeyHasher;
use crate::sticky::{InMemoryRiskStore, StickyHit};

/// The `violated-policies` name of a risk throttle.
pub const ABNORMAL_USAGE_POLICY: &str = "abnormal-usage-detected";

/// Score thresholds of the graded actions (0–100, each at least the one before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Thresholds {
    /// Throttle from this score. Default 40: one strong signal (a credential spray,
    /// an enumeration run, a hoarder at its fair share) or two weaker ones.
    pub throttle: u32,
    /// Step-up from this score. Default 60.
    pub step_up: u32,
    /// Block from this score. Default 80: a strong signal well past its threshold,
    /// or strong signals agreeing.
    pub block: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            throttle: 40,
            step_up: 60,
            block: 80,
        }
    }
}

/// How long sticky decisions last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cooldowns {
    /// Default 5 minutes: long enough to break a burst, short enough that a
    /// legitimate client that tripped it recovers by itself.
    pub throttle: Duration,
    /// Default 15 minutes: the window in which a fresh credential is demanded.
    pub step_up: Duration,
    /// Default 15 minutes: attackers rotate addresses within minutes, so longer
    /// blocks buy little and cost more when wrong.
    pub block: Duration,
}

impl Default for Cooldowns {
    fn default() -> Self {
        Self {
            throttle: Duration::from_secs(300),
            step_up: Duration::from_secs(900),
            block: Duration::from_secs(900),
        }
    }
}

/// Whether the layer enforces its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Score, record and act.
    #[default]
    Enforce,
    /// Score and record everything (including sticky decisions and the denials that
    /// would have been made, as shadow denials), never refuse.
    Shadow,
    /// Do nothing: pass every request through.
    Off,
}

impl Mode {
    /// Parses `enforce`, `shadow` or `off` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "enforce" => Some(Self::Enforce),
            "shadow" => Some(Self::Shadow),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// Cluster-wide evidence kept in a shared [`RiskStore`]: failures and distinct
/// failed credentials per address and network, added up over every replica; when a
/// total reaches its limit the address or network is blocked in the store, so every
/// replica refuses it. Defaults are the block levels of the default signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedLimits {
    /// Failures per address per `address_window`. Default 15 per 60 s.
    pub address_failures: u64,
    /// Default 60 s.
    pub address_window: Duration,
    /// Failures per network per `network_window`. Default 40 per 10 minutes.
    pub network_failures: u64,
    /// Default 10 minutes.
    pub network_window: Duration,
    /// Distinct failed credentials per address per `network_window`. Default 6.
    pub distinct_credentials: u64,
}

impl Default for SharedLimits {
    fn default() -> Self {
        Self {
            address_failures: 15,
            address_window: Duration::from_secs(60),
            network_failures: 40,
            network_window: Duration::from_secs(600),
            distinct_credentials: 6,
        }
    }
}

/// A shared store and what to do when it fails.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn RiskStore>,
    pub(crate) fail_closed: bool,
    pub(crate) limits: SharedLimits,
}

/// Everything a layer needs, behind one `Arc`.
pub(crate) struct Engine {
    pub(crate) id: u64,
    pub(crate) signals: Box<[Arc<dyn Signal>]>,
    pub(crate) edge: Box<[bool]>,
    pub(crate) routes: RouteTable,
    pub(crate) hasher: KeyHasher,
    pub(crate) thresholds: Thresholds,
    pub(crate) cooldowns: Cooldowns,
    pub(crate) throttle_interval: Duration,
    pub(crate) max_age: Duration,
    pub(crate) repeat_points: u32,
    /// Filled from the configuration only: the unkeyed hasher is safe for lookups.
    pub(crate) tiers: HashMap<Box<str>, f32, FxBuildHasher>,
    /// Tiers entitled to volume (see [`crate::RiskLayer::bulk_tier`]).
    pub(crate) bulk_tiers: Vec<Box<str>>,
    pub(crate) sticky: Arc<InMemoryRiskStore>,
    pub(crate) shared: Option<Shared>,
    pub(crate) mode: Mode,
    pub(crate) clock: SharedClock,
    pub(crate) resolver: ClientAddrResolver,
    pub(crate) renderer: SharedRenderer,
    /// Which of clock, resolver and renderer were set on the layer.
    pub(crate) explicit: nhi_guard_core::settings::Explicit,
    /// `nhi_guard_requests_total{control="risk"}`: the edge half counts its
    /// refusals, the identified half every request it decides.
    pub(crate) metrics: nhi_guard_core::metrics::ControlMetrics,
    /// `nhi_guard_risk_score`, recorded by the identified half.
    pub(crate) score: nhi_guard_core::metrics::LazyHistogram,
    /// The latest actions and their signals, for operators.
    pub(crate) decisions: Arc<DecisionLog>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.signals.iter().map(|s| s.name()).collect();
        f.debug_struct("RiskConfig")
            .field("signals", &names)
            .field("routes", &self.routes)
            .field("thresholds", &self.thresholds)
            .field("cooldowns", &self.cooldowns)
            .field("throttle_interval", &self.throttle_interval)
            .field("max_age", &self.max_age)
            .field("tiers", &self.tiers)
            .field("bulk_tiers", &self.bulk_tiers)
            .field("shared", &self.shared)
            .field("mode", &self.mode)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// The outcome of assessing one request.
#[derive(Debug)]
pub(crate) struct Verdict {
    pub(crate) denial: Option<Denial>,
    /// A sticky decision made now (to copy to the shared store).
    pub(crate) new_sticky: Option<StickyDecision>,
}

impl Engine {
    /// Reads what signals need from the context, once.
    /// The request's facts; `addr` is what the edge half of this engine already
    /// hashed for the same request (the context's address), if it ran.
    pub(crate) fn facts(
        &self,
        ctx: &SecurityContext,
        route: Option<RouteFacts>,
        addr: Option<AddrFacts>,
    ) -> RequestFacts {
        // The arrival time the context recorded (by the clock of the layer that
        // created it): one clock read per request for the whole stack.
        let mut f = RequestFacts::new(ctx.received_at());
        match addr {
            Some(a) => f.set_addr_facts(a),
            None => {
                if let Some(a) = ctx.client_addr() {
                    f = f.with_addr(&self.hasher, a.key_ip());
                }
            }
        }
        f.route = route;
        ctx.update(|s| self.refresh(&mut f, s));
        f
    }

    /// Fills in what identity and scope recorded.
    fn refresh(&self, f: &mut RequestFacts, s: &ContextState) {
        if f.client.is_none()
            && let Some(p) = &s.principal
        {
            f.client = Some((
                p.client_id().clone(),
                self.hasher.hash_tagged(3, p.client_id().as_str()),
            ));
            if !self.tiers.is_empty() {
                f.tier_multiplier = self.tiers.get(p.tier_name()).copied().unwrap_or(1.0);
            }
            f.bulk = self.bulk_tiers.iter().any(|t| **t == *p.tier_name());
            let now = f.now;
            f.credential_class = match p.credential() {
                CredentialInfo::Jwt {
                    certificate_bound: true,
                    ..
                }
                | CredentialInfo::Certificate { .. } => CredentialClass::SenderConstrained,
                CredentialInfo::Jwt { .. } => CredentialClass::Bearer {
                    fresh: s
                        .credential_issued_at
                        .is_some_and(|iat| match now.duration_since(iat) {
                            Ok(age) => age <= self.max_age,
                            // Issued "in the future": clock skew of a fresh token.
                            Err(e) => e.duration() <= Duration::from_secs(60),
                        }),
                },
                CredentialInfo::ApiKey { .. } => CredentialClass::ApiKey,
                _ => CredentialClass::None,
            };
        }
        if f.credential.is_none()
            && let Some(fp) = s.credential_fingerprint
        {
            f.credential = Some((fp, self.hasher.hash_tagged(4, fp.as_bytes())));
        }
        f.identity_failure = s.identity_failure;
        f.missing_scopes = s.scopes.as_ref().is_some_and(|o| !o.missing.is_empty());
    }

    /// Checks sticky decisions, scores, picks the action and records the assessment.
    /// `allow` marks the context allowed when the request passes (one lock for both);
    /// `edge_checked` says the edge half already checked the address and network.
    pub(crate) fn assess(
        &self,
        ctx: &SecurityContext,
        f: &RequestFacts,
        phase: Phase,
        allow: bool,
        edge_checked: bool,
    ) -> Verdict {
        let mut throttled = false;
        let mut held_back: Option<(StickyDecision, Duration)> = None;
        match self.sticky.check(
            f,
            nanos(self.throttle_interval),
            phase == Phase::Edge,
            edge_checked,
        ) {
            None => {}
            Some(StickyHit::ThrottlePassed) => throttled = true,
            Some(StickyHit::Block(d)) => return self.sticky_denial(ctx, f, &d, self.block_denial(&d, f)),
            // Over the cut allowance: still scored, so that persisting escalates to
            // a block instead of waiting the throttle out.
            Some(StickyHit::ThrottleRefused(d, wait)) => held_back = Some((d, wait)),
            // Before identity the credential is unknown: the inner half decides.
            Some(StickyHit::StepUp(_)) if phase == Phase::Edge => {}
            Some(StickyHit::StepUp(d)) if !satisfies_step_up(f.credential_class) => {
                return self.sticky_denial(ctx, f, &d, self.step_up_denial());
            }
            Some(StickyHit::StepUp(_)) => {}
        }

        // Score: no allocation unless a signal fires.
        let mut hits: Vec<(&'static str, Points)> = Vec::new();
        let mut raw = 0u32;
        for (signal, edge) in self.signals.iter().zip(self.edge.iter()) {
            if phase == Phase::Edge && !*edge {
                continue;
            }
            if let Some(p) = signal.evaluate(f)
                && p.points > 0
            {
                raw = raw.saturating_add(p.points);
                hits.push((signal.name(), p));
            }
        }
        if let Some(p) = self.sticky.repeat_offender(f, self.repeat_points) {
            raw = raw.saturating_add(p.points);
            hits.push(("repeat_offender", p));
        }
        if hits.is_empty() {
            if let Some((d, wait)) = held_back {
                return self.sticky_denial(ctx, f, &d, throttle_denial(wait));
            }
            if phase == Phase::Identified {
                self.score.record(0.0);
            }
            ctx.update(|s| {
                s.risk = Some(RiskAssessment {
                    score: 0,
                    action: Cow::Borrowed("allow"),
                    signals: Vec::new(),
                });
                if allow && s.decision == Decision::Pending {
                    s.decision = Decision::Allowed;
                }
            });
            return Verdict {
                denial: None,
                new_sticky: None,
            };
        }
        let weight = f.route.map_or(1.0, |r| self.routes.sensitivity(r.index())) * f.tier_multiplier;
        let score = ((raw as f32 * weight).round() as u32).min(100);
        if phase == Phase::Identified {
            self.score.record(f64::from(score));
        }
        let top = hits
            .iter()
            .max_by_key(|(_, p)| p.points)
            .map(|(_, p)| p.key.clone())
            .unwrap_or_else(|| RiskKey::Client(nhi_guard_core::ClientId::from("-")));
        let t = self.thresholds;
        let action = if score >= t.block {
            Some(StickyAction::Block)
        } else if score >= t.step_up {
            match f.credential_class {
                // A fresh or sender-constrained credential answers the step-up.
                CredentialClass::Bearer { fresh: true } | CredentialClass::SenderConstrained => None,
                CredentialClass::Bearer { fresh: false } => Some(StickyAction::StepUp),
                // An API key (or a request without a verified credential, such as
                // one before identity) cannot answer a step-up: it escalates to a
                // block.
                _ => Some(StickyAction::Block),
            }
        } else if score >= t.throttle {
            Some(StickyAction::Throttle)
        } else {
            None
        };

        let now = f.now;
        let mut new_sticky = None;
        let mut denial = None;
        let mut action_name = "allow";
        let signals: Vec<SignalHit> = hits
            .into_iter()
            .map(|(name, p)| SignalHit {
                signal: name,
                points: p.points,
                reason: Cow::Owned(format!("{} ({})", p.reason, p.key)),
            })
            .collect();
        if let Some(action) = action {
            let reason: Arc<str> = Arc::from(signals.iter().map(|h| h.signal).collect::<Vec<_>>().join(","));
            let cooldown = match action {
                StickyAction::Block => {
                    let strikes = self.sticky.strike(&top, now);
                    let factor = 1u32 << strikes.saturating_sub(1).min(6);
                    (self.cooldowns.block * factor).min(Duration::from_secs(86_400))
                }
                StickyAction::StepUp => self.cooldowns.step_up,
                _ => self.cooldowns.throttle,
            };
            let decision = StickyDecision {
                key: top,
                action,
                until: now + cooldown,
                score,
                reason,
            };
            match action {
                StickyAction::Block => {
                    action_name = "block";
                    // With a shared store, blocks and step-ups live there (so an
                    // operator's lift reaches every replica); the caller puts it.
                    if self.shared.is_none() {
                        self.sticky.put_decision(decision.clone(), now);
                    }
                    denial = Some(self.block_denial(&decision, f));
                }
                StickyAction::StepUp => {
                    action_name = "step_up";
                    if self.shared.is_none() {
                        self.sticky.put_decision(decision.clone(), now);
                    }
                    denial = Some(self.step_up_denial());
                }
                _ => {
                    action_name = "throttle";
                    self.sticky.put_throttle(
                        decision.clone(),
                        now,
                        nanos(self.throttle_interval),
                        phase == Phase::Edge,
                    );
                    if !throttled {
                        denial = Some(throttle_denial(
                            held_back.as_ref().map_or(self.throttle_interval, |h| h.1),
                        ));
                    }
                }
            }
            tracing::info!(
                target: "nhi_guard::risk",
                request_id = %ctx.request_id(),
                score,
                action = action_name,
                key = %decision.key,
                until = %nhi_guard_core::rfc3339(decision.until),
                signals = %decision.reason,
                "risk decision"
            );
            self.decisions.record(ExplainedDecision {
                at: now,
                last_at: now,
                repeats: 0,
                action: decision.action,
                enforced: self.mode == Mode::Enforce,
                key: decision.key.clone(),
                until: decision.until,
                score,
                client: f.client().cloned(),
                address: f.addr(),
                route: f.route.and_then(|r| self.routes.pattern_arc(r.index())).cloned(),
                request_id: ctx.request_id().to_string(),
                signals: signals.clone(),
            });
            new_sticky = Some(decision);
        } else if let Some((_, wait)) = held_back {
            action_name = "throttle";
            denial = Some(throttle_denial(wait));
        }
        for hit in &signals {
            nhi_guard_core::metrics::risk_signal(hit.signal, action_name);
        }
        let passes = denial.is_none();
        ctx.update(|s| {
            s.risk = Some(RiskAssessment {
                score,
                action: Cow::Borrowed(action_name),
                signals,
            });
            if allow && passes && s.decision == Decision::Pending {
                s.decision = Decision::Allowed;
            }
        });
        tracing::debug!(
            target: "nhi_guard::risk",
            request_id = %ctx.request_id(),
            score,
            action = action_name,
            "risk assessed"
        );
        Verdict { denial, new_sticky }
    }

    fn sticky_denial(
        &self,
        ctx: &SecurityContext,
        f: &RequestFacts,
        d: &StickyDecision,
        denial: Denial,
    ) -> Verdict {
        let action = match d.action {
            StickyAction::Block => "block",
            StickyAction::StepUp => "step_up",
            _ => "throttle",
        };
        let hit = SignalHit {
            signal: "sticky",
            points: d.score,
            reason: Cow::Owned(format!(
                "{action} on {} for {}s more ({})",
                d.key,
                d.remaining(f.now).as_secs(),
                d.reason
            )),
        };
        ctx.update(|s| {
            s.risk = Some(RiskAssessment {
                score: d.score,
                action: Cow::Borrowed(action),
                signals: vec![hit],
            })
        });
        Verdict {
            denial: Some(denial),
            new_sticky: None,
        }
    }

    pub(crate) fn block_denial(&self, d: &StickyDecision, f: &RequestFacts) -> Denial {
        Denial::forbidden(
            Control::Risk,
            "risk_blocked",
            "Requests are blocked for a cool-down after abnormal activity",
        )
        .retry_after(d.remaining(f.now).max(Duration::from_secs(1)))
    }

    pub(crate) fn step_up_denial(&self) -> Denial {
        Denial::step_up(
            Control::Risk,
            "step_up_required",
            "Present a freshly issued or sender-constrained access token",
            self.max_age,
        )
    }

    /// Lets every signal learn how the request ended: the request's facts, brought
    /// up to date with what inner layers recorded. Returns them (for shared
    /// evidence).
    pub(crate) fn observe(
        &self,
        ctx: &SecurityContext,
        mut f: RequestFacts,
        status: StatusCode,
    ) -> RequestFacts {
        let decision = ctx.read(|s| {
            self.refresh(&mut f, s);
            s.decision
        });
        let (status, refused_by_risk) = match decision {
            Decision::Denied(d) => (d.status, d.control == Control::Risk),
            _ => (status, false),
        };
        let outcome = Outcome {
            status,
            refused_by_risk,
        };
        for s in self.signals.iter() {
            s.observe(&f, outcome);
        }
        f
    }
}

fn satisfies_step_up(class: CredentialClass) -> bool {
    matches!(
        class,
        CredentialClass::Bearer { fresh: true } | CredentialClass::SenderConstrained
    )
}

pub(crate) fn throttle_denial(wait: Duration) -> Denial {
    Denial::rate_limited(
        Control::Risk,
        "abnormal_usage",
        "Request rate reduced for a cool-down after abnormal usage",
        wait,
    )
    .violated_policy(ABNORMAL_USAGE_POLICY)
}

/// Cluster-wide evidence of one failed authentication, and the block it earns.
pub(crate) async fn share_failure(
    shared: &Shared,
    f: &RequestFacts,
    cooldown: Duration,
) -> Result<Option<StickyDecision>, crate::store::RiskStoreError> {
    let (Some((ip, _)), Some((net, _)), Some((fp, _)), Some(_)) =
        (f.addr, f.network, f.credential, f.identity_failure)
    else {
        return Ok(None);
    };
    let l = shared.limits;
    let now = f.now;
    let addr_key = RiskKey::Address(ip).to_string();
    let a = shared
        .store
        .increment(Arc::from(format!("fail:{addr_key}")), l.address_window, now)
        .await?;
    let d = shared
        .store
        .add_distinct(
            Arc::from(format!("creds:{addr_key}")),
            Arc::from(&fp.as_bytes()[..]),
            l.network_window,
            now,
        )
        .await?;
    let n = shared
        .store
        .increment(
            Arc::from(format!("fail:{}", RiskKey::Network(net))),
            l.network_window,
            now,
        )
        .await?;
    let decision = |key: RiskKey, why: String| StickyDecision {
        key,
        action: StickyAction::Block,
        until: now + cooldown,
        score: 100,
        reason: Arc::from(why),
    };
    let block = if n >= l.network_failures {
        Some(decision(
            RiskKey::Network(net),
            format!("shared:{n} failures from network"),
        ))
    } else if a >= l.address_failures || d >= l.distinct_credentials {
        Some(decision(
            RiskKey::Address(ip),
            format!("shared:{a} failures, {d} distinct credentials from address"),
        ))
    } else {
        None
    };
    if let Some(b) = &block {
        shared.store.put(b.clone(), now).await?;
    }
    Ok(block)
}

/// The shared store's decision on the request's keys.
pub(crate) async fn shared_check(
    shared: &Shared,
    f: &RequestFacts,
) -> Result<Option<StickyDecision>, crate::store::RiskStoreError> {
    let mut keys = Vec::with_capacity(4);
    if let Some((ip, _)) = f.addr {
        keys.push(RiskKey::Address(ip));
    }
    if let Some((net, _)) = f.network {
        keys.push(RiskKey::Network(net));
    }
    if let Some((fp, _)) = f.credential {
        keys.push(RiskKey::Credential(fp));
    }
    if let Some((id, _)) = &f.client {
        keys.push(RiskKey::Client(id.clone()));
    }
    if keys.is_empty() {
        return Ok(None);
    }
    shared.store.find(Arc::from(keys), f.now).await
}
