use std::borrow::Cow;
use std::time::Duration;

use crate::store::RiskKey;

use super::nanos;
use crate::signal::{Curve, Points, RequestFacts, Signal, SignalMemory};
use crate::state::{BoundedMap, CappedSet, Sketch, WindowedDistinct};

/// Configuration of [`CredentialSpread`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialSpreadConfig {
    /// Window of the distinct counts. Default 1 hour.
    pub window: Duration,
    /// How many networks a client is first seen from are its home: requests from
    /// them never score here. Default 4 (at most 4): a deployment egresses through
    /// a NAT per availability zone, three in most regions, plus a failover. Home is
    /// learned per client, not per credential, so a client's next token is at home
    /// where its last one was, and a token stolen in its first minutes cannot make
    /// the thief's network its home.
    pub home_networks: u8,
    /// How long after a client is first seen its home networks are learned.
    /// Default 15 minutes: long enough for a deployment to show its egress networks,
    /// short enough that a copy used later never becomes home.
    pub home_learning: Duration,
    /// Points for a request from outside the home networks, by the distinct foreign
    /// networks the credential was used from in the window. Default: 2 → 40, +10
    /// per extra network.
    ///
    /// A credential lives in one deployment. One new network is a deployment
    /// growing (a new node pool, a new subnet) and is left alone; a second one
    /// within the hour means the credential has left its deployment (copied,
    /// shared or stolen). With [`super::NewNetwork`] (30) such a request reaches 70
    /// (step-up for a bearer token), the next network 80 (block that network).
    pub network_curve: Curve,
    /// Points for a request from outside the home networks, by distinct addresses
    /// outside them, once they span at least two foreign networks. Default: 8 → 40,
    /// +10 per 4 more. Thirty new pods in one new subnet are a scale-out; many
    /// addresses over several foreign networks are copies.
    pub address_curve: Curve,
    /// Most credentials tracked. Default 100 000.
    pub capacity: usize,
}

impl Default for CredentialSpreadConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            home_networks: 4,
            home_learning: Duration::from_secs(900),
            network_curve: Curve::new(2, 40, 10, 1, 100),
            address_curve: Curve::new(8, 40, 10, 4, 100),
            capacity: 100_000,
        }
    }
}

/// A client's home networks.
#[derive(Debug, Clone, Copy, Default)]
struct Home {
    first_seen: u64,
    home: CappedSet<4>,
}

/// Where one credential was used outside its client's home.
#[derive(Debug, Clone, Copy, Default)]
struct Foreign {
    networks: WindowedDistinct<CappedSet<8>>,
    addrs: WindowedDistinct<CappedSet<16>>,
}

/// Signal 3: one credential (token fingerprint, API key, or client id when there is
/// no fingerprint) used from many addresses or networks within a window: theft or
/// sharing. Points go to requests from outside the credential's home networks, keyed
/// on the request's network, so the legitimate deployment keeps working while the
/// copies are stopped.
#[derive(Debug)]
pub struct CredentialSpread {
    cfg: CredentialSpreadConfig,
    window: u64,
    learning: u64,
    by_client: BoundedMap<Home>,
    by_credential: BoundedMap<Foreign>,
}

impl CredentialSpread {
    /// The signal with `cfg`.
    pub fn new(cfg: CredentialSpreadConfig) -> Self {
        Self {
            window: nanos(cfg.window),
            learning: nanos(cfg.home_learning),
            by_client: BoundedMap::new(cfg.capacity, cfg.window * 2),
            by_credential: BoundedMap::new(cfg.capacity, cfg.window * 2),
            cfg,
        }
    }
}

impl Signal for CredentialSpread {
    fn name(&self) -> &'static str {
        "credential_spread"
    }

    fn evaluate(&self, f: &RequestFacts) -> Option<Points> {
        let client = f.client_hash()?;
        let (net, nh) = f.network?;
        let (_, ah) = f.addr?;
        let now = f.now_nanos;
        let home = usize::from(self.cfg.home_networks);
        let init = || Home {
            first_seen: now,
            ..Home::default()
        };
        let homes = self.by_client.update(client, now, init, |s| {
            if s.home.contains(nh) {
                return None;
            }
            if (s.home.len() as usize) < home && now.saturating_sub(s.first_seen) < self.learning {
                s.home.insert(nh);
                return None;
            }
            Some(s.home.len())
        })?;
        // Outside home: the credential's foreign networks and addresses of the
        // window.
        let key = f.credential_hash().unwrap_or(client);
        let (nets, addrs) = self.by_credential.update(key, now, Foreign::default, |s| {
            (
                s.networks.insert(nh, now, self.window),
                s.addrs.insert(ah, now, self.window),
            )
        });
        let np = self.cfg.network_curve.points(nets);
        let ap = if nets >= 2 {
            self.cfg.address_curve.points(addrs)
        } else {
            0
        };
        let points = np.max(ap);
        (points > 0).then(|| Points {
            points,
            key: RiskKey::Network(net),
            reason: Cow::Owned(format!(
                "credential used from {nets} foreign networks and {addrs} foreign addresses within the window (home: {homes})"
            )),
        })
    }

    fn memory(&self) -> SignalMemory {
        SignalMemory {
            keys: self.by_client.len() + self.by_credential.len(),
            capacity: self.by_client.capacity() + self.by_credential.capacity(),
            bytes: self.by_client.memory_bytes(|s| s.home.heap_bytes())
                + self.by_credential.memory_bytes(|_| 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing::*;
    use crate::state::KeyHasher;

    #[test]
    fn copies_from_foreign_networks_score_while_home_stays_clean() {
        let h = KeyHasher::new();
        let s = CredentialSpread::new(CredentialSpreadConfig::default());
        for i in 0..10 {
            assert_eq!(
                s.evaluate(&authed(&h, f64::from(i), "127.10.0.5", "app", "key")),
                None
            );
        }
        // After the learning period, one foreign network: 2 networks, no points yet.
        assert_eq!(s.evaluate(&authed(&h, 2000.0, "127.200.1.1", "app", "key")), None);
        let p = s
            .evaluate(&authed(&h, 2001.0, "127.200.2.1", "app", "key"))
            .expect("third network");
        assert_eq!(
            (p.points, p.key.to_string()),
            (40, "net:127.200.2.0/24".to_string())
        );
        let p = s
            .evaluate(&authed(&h, 2002.0, "127.200.3.1", "app", "key"))
            .expect("fourth network");
        assert_eq!(p.points, 50);
        // The home network is never scored.
        assert_eq!(s.evaluate(&authed(&h, 2003.0, "127.10.0.5", "app", "key")), None);
        // Another credential is unaffected.
        assert_eq!(
            s.evaluate(&authed(&h, 2003.0, "127.200.3.1", "other", "k2")),
            None
        );
    }

    #[test]
    fn home_is_the_client_s_so_a_new_token_stolen_at_once_still_scores() {
        let h = KeyHasher::new();
        let s = CredentialSpread::new(CredentialSpreadConfig::default());
        // The client works from home with its first token for an hour.
        for i in 0..60 {
            assert_eq!(
                s.evaluate(&authed(&h, f64::from(i) * 60.0, "127.10.0.5", "app", "tok-1")),
                None
            );
        }
        // Its next token is copied the moment it is issued: the thief's networks are
        // not home, however early they show up; the client's own stays home.
        assert_eq!(
            s.evaluate(&authed(&h, 3600.0, "127.201.1.1", "app", "tok-2")),
            None
        );
        let p = s
            .evaluate(&authed(&h, 3600.5, "127.201.2.1", "app", "tok-2"))
            .expect("a third network");
        assert_eq!(p.key.to_string(), "net:127.201.2.0/24");
        assert_eq!(
            s.evaluate(&authed(&h, 3601.0, "127.10.0.5", "app", "tok-2")),
            None
        );
    }

    #[test]
    fn a_scale_out_into_one_new_network_is_left_alone_copies_over_two_are_not() {
        let h = KeyHasher::new();
        let s = CredentialSpread::new(CredentialSpreadConfig::default());
        // Three availability zones' NAT networks learned as home.
        for z in 0..3 {
            assert_eq!(
                s.evaluate(&authed(&h, f64::from(z), &format!("127.10.{z}.5"), "app", "key")),
                None
            );
        }
        // 30 new pods in a new subnet: one foreign network, however many addresses.
        for i in 1..=30 {
            let ip = format!("127.99.0.{i}");
            assert_eq!(s.evaluate(&authed(&h, 1000.0, &ip, "app", "key")), None, "{ip}");
        }
        // The third zone is home: never scored.
        assert_eq!(s.evaluate(&authed(&h, 1001.0, "127.10.2.5", "app", "key")), None);
        // A second foreign network: copies. With 31 foreign addresses (counted up
        // to 16) the address curve says more than the network count.
        let p = s
            .evaluate(&authed(&h, 1002.0, "127.98.0.1", "app", "key"))
            .expect("a second foreign network");
        assert_eq!(
            (p.points, p.key.to_string()),
            (60, "net:127.98.0.0/24".to_string())
        );
        assert!(p.reason.contains("2 foreign networks"), "{}", p.reason);
    }

    #[test]
    fn failed_requests_are_ignored() {
        let h = KeyHasher::new();
        let s = CredentialSpread::new(CredentialSpreadConfig::default());
        for i in 0..20 {
            assert_eq!(s.evaluate(&failed(&h, 1.0, &format!("127.{i}.0.1"), "key")), None);
        }
        assert_eq!(s.memory().keys, 0);
    }
}
