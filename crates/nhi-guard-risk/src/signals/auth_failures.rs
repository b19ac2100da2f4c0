use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::store::RiskKey;

use super::nanos;
use crate::signal::{Curve, Outcome, Phase, Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, CappedSet, WindowCounter, WindowedDistinct};

/// Configuration of [`AuthFailureVelocity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthFailureConfig {
    /// Window of the per-address count. Default 60 s.
    pub address_window: Duration,
    /// Points for failures per address in the window. Default: 5 failures → 40
    /// (throttle), +8 per 2 more, so 15 failures in a minute → 80 (block).
    ///
    /// A machine client that is correctly configured does not fail to authenticate;
    /// one whose key was just rotated fails a handful of times before it stops or
    /// is fixed. Five a minute leaves that room; stuffing runs far faster.
    pub address_curve: Curve,
    /// Window of the per-network (/24, IPv6 /48) count. Default 10 minutes.
    pub network_window: Duration,
    /// Points for failures per network in the window. Default: 10 → 40, +10 per 5
    /// more, so 30 failures in 10 minutes → 80 (block the network). Catches
    /// low-and-slow stuffing that spreads over many addresses of a few networks,
    /// each address staying far under the per-address threshold.
    pub network_curve: Curve,
    /// The network curve applies only once this many distinct addresses of the
    /// network failed in the window. Default 5: one misconfigured client retrying a
    /// stale key, or a NAT address, is the per-address signal's business and must
    /// not put its neighbours under suspicion.
    pub network_min_addresses: u32,
    /// A failure wave is on while the service as a whole sees at least this many
    /// failed authentications in `wave_window` (default 60, one a second) and at
    /// least `wave_factor` times its usual rate.
    pub wave_min: u32,
    /// How far above its usual rate (the average per `wave_window` over the last
    /// hour outside waves) the service-wide rate must be for a wave. Default 10.
    pub wave_factor: u32,
    /// Window of the service-wide count. Default 60 s.
    pub wave_window: Duration,
    /// During a wave, points for failures per network (in `network_window`, once
    /// 2 of its addresses failed), whichever of this and `network_curve` gives
    /// more. Default: 3 → 40, +20 per 2 more, so 5 → 60 (a block at the edge, where
    /// no credential can answer a step-up). A wave spread so thin that no network
    /// reaches the normal threshold is still recognised network by network.
    pub wave_network_curve: Curve,
    /// Most addresses and networks tracked (each). Default 100 000.
    pub capacity: usize,
}

impl Default for AuthFailureConfig {
    fn default() -> Self {
        Self {
            address_window: Duration::from_secs(60),
            address_curve: Curve::new(5, 40, 8, 2, 100),
            network_window: Duration::from_secs(600),
            network_curve: Curve::new(10, 40, 10, 5, 100),
            network_min_addresses: 5,
            wave_min: 60,
            wave_factor: 10,
            wave_window: Duration::from_secs(60),
            wave_network_curve: Curve::new(3, 40, 20, 2, 100),
            capacity: 100_000,
        }
    }
}

/// Whether an identity failure can be a guess. An expired or not-yet-valid token
/// carried a valid signature: it is a real client's stale credential (a restart, a
/// clock off by a little), not stuffing, and it is never counted.
pub(crate) fn is_guess(reason: &str) -> bool {
    !matches!(
        reason,
        "token_expired" | "token_not_yet_valid" | "token_issued_in_future"
    )
}

/// Signal 1: authentication-failure velocity per client address and per network
/// (credential stuffing). Learns from responses whose identity check failed with a
/// presented credential; scores every later request from the address or network.
#[derive(Debug)]
pub struct AuthFailureVelocity {
    cfg: AuthFailureConfig,
    addr_window: u64,
    net_window: u64,
    by_addr: BoundedMap<AddrFailures>,
    by_net: BoundedMap<NetFailures>,
    wave: Wave,
}

/// Service-wide failures: the current window and the usual rate.
#[derive(Debug, Default)]
struct Wave {
    counts: Mutex<WaveCounts>,
    /// Until when (nanoseconds) a wave is on; read on every request.
    until: AtomicU64,
}

#[derive(Debug, Default)]
struct WaveCounts {
    current: WindowCounter,
    /// Failures outside waves over the last hour: the usual rate.
    usual: WindowCounter,
}

const HOUR: u64 = 3_600_000_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct AddrFailures {
    failures: WindowCounter,
    /// The last failed credential (a hash prefix): a client retrying the same
    /// stale credential counts once until it presents another.
    last: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct NetFailures {
    failures: WindowCounter,
    addresses: WindowedDistinct<CappedSet<16>>,
}

impl AuthFailureVelocity {
    /// The signal with `cfg`.
    pub fn new(cfg: AuthFailureConfig) -> Self {
        Self {
            addr_window: nanos(cfg.address_window),
            net_window: nanos(cfg.network_window),
            by_addr: BoundedMap::new(cfg.capacity, cfg.address_window * 2),
            by_net: BoundedMap::new(cfg.capacity, cfg.network_window * 2),
            wave: Wave::default(),
            cfg,
        }
    }
}

impl AuthFailureVelocity {
    /// Counts one failed authentication service-wide, and starts (or extends) a
    /// wave when the current rate is far above the usual one.
    fn count_service_wide(&self, now: u64) {
        let w = nanos(self.cfg.wave_window);
        let mut c = self.wave.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.current.add(now, w, 1);
        let current = c.current.count(now, w);
        let usual = u64::from(c.usual.count(now, HOUR)) * w / HOUR;
        let on = u64::from(current) >= u64::from(self.cfg.wave_min)
            && u64::from(current) >= usual.max(1) * u64::from(self.cfg.wave_factor);
        if on {
            self.wave
                .until
                .fetch_max(now.saturating_add(w), Ordering::Relaxed);
        } else if self.wave.until.load(Ordering::Relaxed) <= now {
            // The usual rate learns only outside waves, so a long wave does not
            // become the norm.
            c.usual.add(now, HOUR, 1);
        }
    }
}

impl Signal for AuthFailureVelocity {
    fn name(&self) -> &'static str {
        "auth_failure_velocity"
    }

    fn phase(&self) -> Phase {
        Phase::Edge
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let now = f.now_nanos;
        let (ip, ah) = f.addr?;
        let a = self
            .by_addr
            .read(ah, now, |c| c.failures.count(now, self.addr_window))
            .unwrap_or(0);
        let ap = self.cfg.address_curve.points(a);
        let (net, nh) = f.network?;
        let w = self.net_window;
        let (n, spread) = self
            .by_net
            .read(nh, now, |c| (c.failures.count(now, w), c.addresses.count(now, w)))
            .unwrap_or((0, 0));
        let wave = self.wave.until.load(Ordering::Relaxed) > now;
        let np = if spread >= self.cfg.network_min_addresses {
            self.cfg.network_curve.points(n)
        } else {
            0
        };
        let np = if wave && spread >= 2 {
            np.max(self.cfg.wave_network_curve.points(n))
        } else {
            np
        };
        if ap == 0 && np == 0 {
            return None;
        }
        Some(if ap >= np {
            Points {
                points: ap,
                key: RiskKey::Address(ip),
                reason: Cow::Owned(format!("{a} authentication failures from this address")),
            }
        } else {
            Points {
                points: np,
                key: RiskKey::Network(net),
                reason: Cow::Owned(if wave {
                    format!("{n} authentication failures from this network during a service-wide wave")
                } else {
                    format!("{n} authentication failures from this network")
                }),
            }
        })
    }

    fn observe(&self, f: &RequestFacts, outcome: Outcome) {
        let counts = match (f.identity_failure, f.credential) {
            (Some(reason), Some(_)) => is_guess(reason),
            // Refused by risk before identity looked (a throttled or blocked
            // address or network): what keeps arriving there counts as more of
            // the same, so persisting escalates instead of waiting the throttle
            // out with one guess per interval.
            (None, _) => outcome.refused_by_risk && f.client.is_none(),
            _ => false,
        };
        if !counts {
            return;
        }
        let now = f.now_nanos;
        if f.identity_failure.is_some() {
            self.count_service_wide(now);
        }
        if let Some((_, h)) = f.addr {
            let cred = f.credential.map(|(_, ch)| (ch >> 32) as u32 | 1);
            self.by_addr.update(h, now, AddrFailures::default, |c| {
                if cred.is_none() || cred != Some(c.last) {
                    c.failures.add(now, self.addr_window, 1);
                }
                c.last = cred.unwrap_or(0);
            });
        }
        if let (Some((_, h)), Some((_, ah))) = (f.network, f.addr) {
            let w = self.net_window;
            self.by_net.update(h, now, NetFailures::default, |c| {
                c.failures.add(now, w, 1);
                c.addresses.insert(ah, now, w);
            });
        }
    }

    fn memory(&self) -> SignalMemory {
        SignalMemory {
            keys: self.by_addr.len() + self.by_net.len(),
            capacity: self.by_addr.capacity() + self.by_net.capacity(),
            bytes: self.by_addr.memory_bytes(|_| 0) + self.by_net.memory_bytes(|_| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing::*;
    use crate::state::KeyHasher;

    fn ok() -> Outcome {
        Outcome {
            status: http::StatusCode::UNAUTHORIZED,
            refused_by_risk: false,
        }
    }

    #[test]
    fn failures_from_one_address_add_up_and_fade() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        for i in 0..4 {
            s.observe(&failed(&h, f64::from(i), "127.0.0.9", &format!("k{i}")), ok());
        }
        assert_eq!(
            s.evaluate(&facts(&h, 5.0, "127.0.0.9")),
            None,
            "4 failures are tolerated"
        );
        s.observe(&failed(&h, 5.0, "127.0.0.9", "k5"), ok());
        let p = s.evaluate(&facts(&h, 6.0, "127.0.0.9")).expect("points");
        assert_eq!((p.points, p.key.to_string()), (40, "addr:127.0.0.9".to_string()));
        // Other addresses of the network are not affected at this volume.
        assert_eq!(s.evaluate(&facts(&h, 6.0, "127.0.0.10")), None);
        for i in 0..10 {
            s.observe(&failed(&h, 7.0, "127.0.0.9", &format!("x{i}")), ok());
        }
        assert_eq!(
            s.evaluate(&facts(&h, 8.0, "127.0.0.9")).map(|p| p.points),
            Some(80)
        );
        // Two windows later it is forgotten.
        assert_eq!(s.evaluate(&facts(&h, 130.0, "127.0.0.9")), None);
    }

    #[test]
    fn failures_spread_over_a_network_score_the_network() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        for i in 0..30u32 {
            let ip = format!("127.5.6.{}", i + 1);
            s.observe(&failed(&h, f64::from(i) * 10.0, &ip, &format!("k{i}")), ok());
        }
        let p = s.evaluate(&facts(&h, 300.0, "127.5.6.200")).expect("points");
        assert_eq!(
            (p.points, p.key.to_string()),
            (80, "net:127.5.6.0/24".to_string())
        );
        assert_eq!(s.evaluate(&facts(&h, 300.0, "127.5.7.1")), None);
    }

    #[test]
    fn ipv6_failures_add_up_per_48() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        // One guess from each of 30 /64s of one /48 (a host rotating prefixes).
        for i in 0..30u32 {
            let ip = format!("2001:db8:7:{i:x}::1");
            s.observe(&failed(&h, f64::from(i) * 10.0, &ip, &format!("k{i}")), ok());
        }
        let p = s
            .evaluate(&facts(&h, 300.0, "2001:db8:7:ffff::9"))
            .expect("points");
        assert_eq!(
            (p.points, p.key.to_string()),
            (80, "net:2001:db8:7::/48".to_string())
        );
        assert_eq!(s.evaluate(&facts(&h, 300.0, "2001:db8:8::1")), None);
    }

    #[test]
    fn one_address_failing_slowly_does_not_taint_its_network() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        // A client retrying a stale key every 20 s: 3 a minute, 30 in 10 minutes.
        for i in 0..30u32 {
            s.observe(&failed(&h, f64::from(i) * 20.0, "127.5.6.7", "stale"), ok());
        }
        assert_eq!(s.evaluate(&facts(&h, 600.0, "127.5.6.8")), None);
        assert_eq!(s.evaluate(&facts(&h, 600.0, "127.5.6.7")), None);
    }

    #[test]
    fn stale_tokens_and_a_repeated_credential_are_no_stuffing() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        // A restarting client: its expired token five times, then a stale key
        // retried ten times in a row.
        for i in 0..5 {
            let f = facts(&h, f64::from(i), "127.0.0.3")
                .with_credential(&h, nhi_guard_core::CredentialFingerprint::of(b"expired"))
                .with_identity_failure("token_expired");
            s.observe(&f, ok());
        }
        for i in 0..10 {
            s.observe(&failed(&h, 5.0 + f64::from(i), "127.0.0.3", "stale"), ok());
        }
        assert_eq!(s.evaluate(&facts(&h, 16.0, "127.0.0.3")), None);
        // Five different wrong keys are.
        for i in 0..5 {
            s.observe(&failed(&h, 17.0, "127.0.0.3", &format!("g{i}")), ok());
        }
        assert!(s.evaluate(&facts(&h, 18.0, "127.0.0.3")).is_some());
    }

    #[test]
    fn attempts_refused_by_risk_before_identity_escalate() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        for i in 0..5 {
            s.observe(&failed(&h, 1.0, "127.0.0.4", &format!("g{i}")), ok());
        }
        assert_eq!(
            s.evaluate(&facts(&h, 2.0, "127.0.0.4")).map(|p| p.points),
            Some(40)
        );
        // Throttled at the edge, it keeps sending: each refused attempt counts.
        let refused = Outcome {
            status: http::StatusCode::TOO_MANY_REQUESTS,
            refused_by_risk: true,
        };
        for _ in 0..10 {
            s.observe(&facts(&h, 3.0, "127.0.0.4"), refused);
        }
        assert_eq!(
            s.evaluate(&facts(&h, 4.0, "127.0.0.4")).map(|p| p.points),
            Some(80)
        );
        // A verified client refused by the inner half is not a failed login.
        s.observe(&authed(&h, 3.0, "127.0.0.5", "c", "k"), refused);
        assert_eq!(s.evaluate(&facts(&h, 4.0, "127.0.0.5")), None);
    }

    #[test]
    fn a_service_wide_wave_lowers_the_bar_for_networks() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        // The usual: a stale key now and then.
        for i in 0..30u32 {
            s.observe(&failed(&h, f64::from(i) * 100.0, "127.1.0.1", "stale"), ok());
        }
        // Two addresses of a network fail 6 times: below the normal bar (10 from 5
        // addresses).
        for i in 0..6u32 {
            let ip = format!("127.2.0.{}", 1 + i % 2);
            s.observe(&failed(&h, 3_000.0 + f64::from(i), &ip, &format!("k{i}")), ok());
        }
        assert_eq!(s.evaluate(&facts(&h, 3_010.0, "127.2.0.9")), None);
        // A wave: 100 failures in a minute spread over 100 networks, one each.
        for i in 0..100u32 {
            let ip = format!("127.50.{i}.1");
            s.observe(
                &failed(&h, 3_011.0 + f64::from(i) * 0.5, &ip, &format!("w{i}")),
                ok(),
            );
        }
        let p = s
            .evaluate(&facts(&h, 3_062.0, "127.2.0.9"))
            .expect("the network scores during the wave");
        assert_eq!(
            (p.points, p.key.to_string()),
            (60, "net:127.2.0.0/24".to_string())
        );
        assert!(p.reason.contains("wave"), "{}", p.reason);
        // A single failing address is still nobody's neighbour problem, and once
        // the wave has passed the normal bar is back.
        assert_eq!(s.evaluate(&facts(&h, 3_062.0, "127.50.7.2")), None);
        assert_eq!(s.evaluate(&facts(&h, 3_300.0, "127.2.0.9")), None);
    }

    #[test]
    fn successes_and_missing_credentials_do_not_count() {
        let h = KeyHasher::new();
        let s = AuthFailureVelocity::new(AuthFailureConfig::default());
        for i in 0..50 {
            s.observe(&authed(&h, f64::from(i), "127.0.0.1", "c", "k"), ok());
            s.observe(
                &facts(&h, f64::from(i), "127.0.0.1").with_identity_failure("credential_missing"),
                ok(),
            );
        }
        assert_eq!(s.evaluate(&facts(&h, 51.0, "127.0.0.1")), None);
        assert!(s.memory().capacity >= 200_000);
    }
}
