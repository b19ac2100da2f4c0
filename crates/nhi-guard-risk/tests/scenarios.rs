//! The abuse scenario suite: attacks and bursty-but-benign traffic through the full
//! stack (risk edge → identity stand-in → risk → application) on simulated time,
//! with every layer on its defaults. Prints the table:
//!
//! ```text
//! cargo test -p nhi-guard-risk --test scenarios -- --nocapture
//! ```
//!
//! Every scenario first runs 4 000 s of steady benign traffic (the clients' baseline
//! period), then the attack starts at `ATTACK`; benign traffic continues
//! throughout. "Stopped" counts attack requests refused by the risk layer (403 /
//! 429 / 401 step-up) among those sent after the stated detection window; "time to
//! detection" is from the attack's start to its first refused request; "benign
//! refused" counts benign requests the risk layer refused (identity's own 401s to a
//! client using a stale key are not the risk layer's and are not counted).

mod sim;

use std::net::Ipv4Addr;

use sim::{Cred, Report, Req, Rng, Role, World, benign_population, simulate};

const ATTACK: f64 = 4_000.0;
const POPULATION: usize = 30;

fn population_until(end: f64, rng: &mut Rng) -> Vec<Req> {
    benign_population(POPULATION, 0.0, end, 20.0, rng)
}

fn no_reaction(_: &mut World, _: &Req, _: &sim::Answer) -> Vec<Req> {
    Vec::new()
}

/// Credential stuffing from 3 addresses, 5 guesses a second each for 10 minutes;
/// every 500th guess is a real key of another client.
fn stuffing_few_addresses() -> Report {
    let mut rng = Rng::new(1);
    let end = ATTACK + 900.0;
    let mut world = World::new(POPULATION, &[]);
    let mut reqs = population_until(end, &mut rng);
    for a in 0..3u8 {
        let ip = Ipv4Addr::new(127, 66, 0, a + 1);
        for k in 0..3000 {
            let n = u64::from(a) * 10_000 + k;
            let key = if k % 500 == 499 {
                format!("key-{}", rng.below(POPULATION as u64))
            } else {
                format!("guess-{n}")
            };
            reqs.push(Req {
                at: ATTACK + k as f64 * 0.2 + f64::from(a) * 0.05,
                role: Role::Attack,
                ip,
                method: "GET",
                path: "/orders".into(),
                cred: Cred::Key(key),
                actor: 0,
            });
        }
    }
    simulate(
        &mut world,
        "credential stuffing, 3 addresses",
        reqs,
        ATTACK,
        30.0,
        no_reaction,
    )
}

/// Low-and-slow stuffing: 400 addresses in four /24 networks, each address one
/// guess every ~5 minutes for an hour.
fn stuffing_low_and_slow() -> Report {
    let mut rng = Rng::new(2);
    let end = ATTACK + 3_700.0;
    let mut world = World::new(POPULATION, &[]);
    let mut reqs = population_until(end, &mut rng);
    let mut n = 0;
    for net in 0..4u8 {
        for host in 1..=100u8 {
            let ip = Ipv4Addr::new(127, 70, net, host);
            let mut t = ATTACK + rng.unit() * 300.0;
            while t < ATTACK + 3_600.0 {
                n += 1;
                reqs.push(Req {
                    at: t,
                    role: Role::Attack,
                    ip,
                    method: "GET",
                    path: "/orders".into(),
                    cred: Cred::Key(format!("guess-{n}")),
                    actor: 0,
                });
                t += 240.0 + rng.unit() * 120.0;
            }
        }
    }
    simulate(
        &mut world,
        "low-and-slow stuffing, 400 addresses / 4 networks",
        reqs,
        ATTACK,
        120.0,
        no_reaction,
    )
}

/// A stolen API key (client-0's) replayed from 200 addresses in 100 networks, 5
/// requests each over 30 minutes, while client-0 keeps working from home.
fn stolen_api_key() -> Report {
    let mut rng = Rng::new(3);
    let end = ATTACK + 1_900.0;
    let mut world = World::new(POPULATION, &[]);
    let mut reqs = population_until(end, &mut rng);
    for i in 0..200u32 {
        let ip = Ipv4Addr::new(127, 80, (i / 2) as u8, (i % 2) as u8 + 1);
        for _ in 0..5 {
            reqs.push(Req {
                at: ATTACK + rng.unit() * 1_800.0,
                role: Role::Attack,
                ip,
                method: "GET",
                path: "/orders".into(),
                cred: Cred::Key("key-0".into()),
                actor: 0,
            });
        }
    }
    simulate(
        &mut world,
        "stolen API key, 200 addresses",
        reqs,
        ATTACK,
        60.0,
        no_reaction,
    )
}

/// A stolen access token replayed from 100 addresses in 100 networks while the
/// real client keeps working, refreshing its token every 10 minutes (and at once
/// when challenged).
fn stolen_token() -> Report {
    let mut rng = Rng::new(4);
    let end = ATTACK + 1_900.0;
    let mut world = World::new(POPULATION, &[("svc-orders", "svc-orders-unused-key", "default")]);
    let mut reqs = population_until(end, &mut rng);
    let home = Ipv4Addr::new(127, 11, 0, 1);
    // Tokens tok-<k>, minted at k × 600 s, each used for its 10 minutes.
    for k in 0..=(end / 600.0) as u64 {
        world
            .clock
            .set(std::time::UNIX_EPOCH + std::time::Duration::from_secs(sim::T0 + k * 600));
        world.mint("svc-orders", &format!("tok-{k}"));
    }
    let mut t = 1.0;
    while t < end {
        reqs.push(Req {
            at: t,
            role: Role::Benign,
            ip: home,
            method: "GET",
            path: "/orders".into(),
            cred: Cred::Token(format!("tok-{}", (t / 600.0) as u64)),
            actor: 1,
        });
        t += 10.0;
    }
    // The thief took the token in use just before the attack.
    let stolen = format!("tok-{}", (ATTACK / 600.0) as u64 - 1);
    for i in 0..100u32 {
        let ip = Ipv4Addr::new(127, 81, i as u8, 1);
        for _ in 0..5 {
            reqs.push(Req {
                at: ATTACK + rng.unit() * 1_800.0,
                role: Role::Attack,
                ip,
                method: "GET",
                path: "/orders".into(),
                cred: Cred::Token(stolen.clone()),
                actor: 0,
            });
        }
    }
    let mut refreshed = 0u32;
    simulate(
        &mut world,
        "stolen access token, 100 addresses",
        reqs,
        ATTACK,
        60.0,
        |w, r, a| {
            // The real client answers an RFC 9470 challenge by fetching a fresh token.
            if r.role == Role::Benign && r.actor == 1 && a.reason == Some("step_up_required") {
                refreshed += 1;
                let token = format!("fresh-{refreshed}");
                w.mint("svc-orders", &token);
                return vec![Req {
                    cred: Cred::Token(token),
                    at: r.at + 0.1,
                    ..r.clone()
                }];
            }
            Vec::new()
        },
    )
}

/// A partner integration that, after an hour of normal use, walks the catalogue.
fn scraping(sequential: bool) -> Report {
    let mut rng = Rng::new(if sequential { 5 } else { 6 });
    let end = ATTACK + 1_300.0;
    let mut world = World::new(POPULATION, &[("partner", "partner-key", "default")]);
    let mut reqs = population_until(end, &mut rng);
    let ip = Ipv4Addr::new(127, 12, 0, 1);
    let mut t = 5.0;
    while t < ATTACK {
        reqs.push(Req {
            at: t,
            role: Role::Benign,
            ip,
            method: "GET",
            path: format!("/items/{}", 500 + rng.below(15)),
            cred: Cred::Key("partner-key".into()),
            actor: 2,
        });
        t += 30.0;
    }
    for k in 0..2_400u64 {
        let id = if sequential {
            1 + k
        } else {
            1 + rng.below(1_000_000)
        };
        reqs.push(Req {
            at: ATTACK + k as f64 * 0.5,
            role: Role::Attack,
            ip,
            method: "GET",
            path: format!("/items/{id}"),
            cred: Cred::Key("partner-key".into()),
            actor: 2,
        });
    }
    let name = if sequential {
        "scraping, sequential ids"
    } else {
        "scraping, random ids"
    };
    simulate(&mut world, name, reqs, ATTACK, 60.0, no_reaction)
}

/// One client reserves a new item every 5 s for 30 minutes while 20 buyers reserve
/// two or three items an hour.
fn hoarding() -> Report {
    let mut rng = Rng::new(7);
    let end = ATTACK + 1_900.0;
    let mut world = World::new(POPULATION, &[("hoarder", "hoarder-key", "default")]);
    let mut reqs = population_until(end, &mut rng);
    for i in 0..20usize {
        let ip = Ipv4Addr::new(127, 10, 0, i as u8 + 1);
        let mut t = rng.unit() * 1_200.0;
        while t < end {
            reqs.push(Req {
                at: t,
                role: Role::Benign,
                ip,
                method: "POST",
                path: format!("/inventory/sku-{}/reserve", rng.below(5_000)),
                cred: Cred::Key(format!("key-{i}")),
                actor: 0,
            });
            t += 1_200.0 + rng.unit() * 600.0;
        }
    }
    let ip = Ipv4Addr::new(127, 13, 0, 1);
    for k in 0..360u64 {
        reqs.push(Req {
            at: ATTACK + k as f64 * 5.0,
            role: Role::Attack,
            ip,
            method: "POST",
            path: format!("/inventory/sku-{}/reserve", 10_000 + k),
            cred: Cred::Key("hoarder-key".into()),
            actor: 3,
        });
    }
    simulate(
        &mut world,
        "inventory hoarding, 1 client vs 20 buyers",
        reqs,
        ATTACK,
        180.0,
        no_reaction,
    )
}

/// Benign traffic that looks bursty: a nightly batch, a client restarting (a few
/// requests with a stale key, then a retry storm), and 50 clients behind one NAT
/// address with bursts and one misconfigured client among them.
fn benign_bursts() -> Report {
    let mut rng = Rng::new(8);
    let end = ATTACK + 1_800.0;
    let mut world = World::new(
        100,
        &[
            ("batch-export", "batch-key", "batch"),
            ("worker", "worker-key", "default"),
        ],
    );
    let mut reqs = population_until(end, &mut rng);
    let benign = |at: f64, ip: Ipv4Addr, method: &'static str, path: String, key: &str| Req {
        at,
        role: Role::Benign,
        ip,
        method,
        path,
        cred: Cred::Key(key.into()),
        actor: 0,
    };
    // Nightly batch: a request a minute all day, then 3 000 in five minutes.
    let batch_ip = Ipv4Addr::new(127, 14, 0, 1);
    let mut t = 3.0;
    while t < ATTACK {
        reqs.push(benign(t, batch_ip, "POST", "/reports/export".into(), "batch-key"));
        t += 60.0;
    }
    for k in 0..3_000 {
        reqs.push(benign(
            ATTACK + k as f64 * 0.1,
            batch_ip,
            "POST",
            "/reports/export".into(),
            "batch-key",
        ));
    }
    // Restart and retry.
    let worker_ip = Ipv4Addr::new(127, 15, 0, 1);
    let mut t = 7.0;
    while t < end {
        if !(ATTACK..ATTACK + 30.0).contains(&t) {
            let item = 2_000 + rng.below(20);
            reqs.push(benign(
                t,
                worker_ip,
                "GET",
                format!("/items/{item}"),
                "worker-key",
            ));
        }
        t += 15.0;
    }
    for k in 0..3 {
        reqs.push(benign(
            ATTACK + f64::from(k),
            worker_ip,
            "GET",
            "/items/2001".into(),
            "worker-old-key",
        ));
    }
    for k in 0..200 {
        let item = 2_000 + rng.below(20);
        reqs.push(benign(
            ATTACK + 5.0 + k as f64 * 0.05,
            worker_ip,
            "GET",
            format!("/items/{item}"),
            "worker-key",
        ));
    }
    // 50 clients behind one NAT address, with bursts; one with a wrong key.
    let nat = Ipv4Addr::new(127, 90, 0, 1);
    for c in 30..80usize {
        let mut t = rng.unit() * 30.0;
        while t < end {
            let item = 3_000 + (c as u64 * 20) + rng.below(20);
            reqs.push(benign(
                t,
                nat,
                "GET",
                format!("/items/{item}"),
                &format!("key-{c}"),
            ));
            t += 30.0;
        }
        let mut b = 600.0 + rng.unit() * 600.0;
        while b < end {
            for k in 0..20 {
                let item = 3_000 + (c as u64 * 20) + rng.below(20);
                reqs.push(benign(
                    b + f64::from(k) * 0.1,
                    nat,
                    "GET",
                    format!("/items/{item}"),
                    &format!("key-{c}"),
                ));
            }
            b += 600.0;
        }
    }
    let mut t = 10.0;
    while t < end {
        reqs.push(benign(t, nat, "GET", "/items/1".into(), "key-misconfigured"));
        t += 60.0;
    }
    simulate(
        &mut world,
        "benign: nightly batch, restart + retry, 50 clients behind one NAT",
        reqs,
        ATTACK,
        0.0,
        no_reaction,
    )
}

#[test]
fn abuse_scenarios() {
    let reports = vec![
        stuffing_few_addresses(),
        stuffing_low_and_slow(),
        stolen_api_key(),
        stolen_token(),
        scraping(true),
        scraping(false),
        hoarding(),
        benign_bursts(),
    ];
    let mut table = String::from(
        "| scenario | detection window | attack requests stopped after the window | time to detection | stopped by | benign refused |\n|---|---|---|---|---|---|\n",
    );
    for r in &reports {
        table.push_str(&r.row());
        table.push('\n');
    }
    eprintln!("\n{table}");
    for r in &reports {
        assert_eq!(r.benign_refused, 0, "{}: benign requests refused", r.name);
        if r.attack_total > 0 {
            assert!(
                r.stopped_after_window() >= 0.95,
                "{}: only {:.1}% stopped",
                r.name,
                100.0 * r.stopped_after_window()
            );
            assert!(
                r.detection_secs.is_some_and(|d| d <= r.window_secs),
                "{}: detected late",
                r.name
            );
        }
    }
}
