//! The traffic simulator behind `tests/risk_scenarios.rs`: the demo gateway's own
//! stack (`examples/gateway/guard.rs`: address limit, failure limit, identity with
//! the demo issuer's tokens and API keys, per-client limit, scope, risk, audit) in
//! front of the gateway's routes, served by `axum::serve` on a loopback port with
//! each connection's peer address, and called over HTTP/1.1 by hyper clients whose
//! connections leave from many loopback source addresses (127.0.0.0/8).
//!
//! Requests are sent one at a time in time order, and the manual clock of every
//! control is set to each request's time before it is sent: minutes of traffic
//! take seconds and every run is the same.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use std::collections::HashMap;

use axum::response::IntoResponse;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use nhi_guard::core::clock::ManualClock;
use nhi_guard::core::registry::{ClientRecord, InMemoryRegistry, Inventory, Tier};
use nhi_guard::core::{Denial, ScopeSet};
use serde_json::json;

use crate::common::{HttpClient, Server, http_client};
use crate::{app, config, guard};

/// The response header in which the test server names the control that refused a
/// request and why (`risk/risk_blocked`), read from the response's `Denial`: a
/// `HEAD` answer has no problem body to read it from.
const DENIED_BY: &str = "x-scenario-denied-by";

/// Simulated time of the first request: a fixed instant, so every run is the same.
pub const T0: u64 = 1_900_000_000;

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Part of the attack being measured.
    Attack,
    /// Honest traffic: must never be refused by the guard (beyond identity's own
    /// answer to a credential that is really invalid, see [`Req::invalid`]).
    Benign,
}

/// The credential a request carries.
#[derive(Debug, Clone)]
pub enum Cred {
    /// `x-api-key`.
    Key(String),
    /// `Authorization: Bearer`.
    Token(String),
}

/// One simulated request.
#[derive(Debug, Clone)]
pub struct Req {
    /// Seconds since the start of the scenario.
    pub at: f64,
    pub role: Role,
    pub ip: Ipv4Addr,
    pub method: &'static str,
    pub path: String,
    pub cred: Cred,
    /// Which actor sent it (for actors that react to answers).
    pub actor: usize,
    /// The credential is known to be invalid (an expired token, a stale key):
    /// identity's 401 is the right answer and not a refusal of honest traffic.
    pub invalid: bool,
}

impl Req {
    pub fn new(
        at: f64,
        role: Role,
        ip: Ipv4Addr,
        method: &'static str,
        path: impl Into<String>,
        cred: Cred,
    ) -> Self {
        Self {
            at,
            role,
            ip,
            method,
            path: path.into(),
            cred,
            actor: 0,
            invalid: false,
        }
    }

    pub fn actor(mut self, actor: usize) -> Self {
        self.actor = actor;
        self
    }

    pub fn invalid(mut self) -> Self {
        self.invalid = true;
        self
    }
}

/// How the stack answered one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    /// The control that refused it and why: `risk/risk_blocked`.
    pub denial: Option<String>,
}

impl Answer {
    /// Refused by a guard control before or instead of the application, other than
    /// identity's verdict on the credential itself.
    pub fn stopped(&self) -> bool {
        self.denial
            .as_deref()
            .is_some_and(|d| !d.starts_with("identity/"))
    }

    pub fn step_up(&self) -> bool {
        self.denial.as_deref() == Some("risk/step_up_required")
    }
}

/// An API-key client of the scenario inventory.
pub struct Client {
    pub id: String,
    pub key: String,
    pub tier: &'static str,
}

impl Client {
    pub fn new(id: impl Into<String>, tier: &'static str) -> Self {
        let id = id.into();
        Self {
            key: format!("nhik_sim_{id}_key"),
            id,
            tier,
        }
    }
}

/// The scenario world: the gateway's stack on a manual clock, served on a loopback
/// port.
pub struct World {
    pub clock: ManualClock,
    server: Server,
    base: String,
    /// One client per source address (its keep-alive connection leaves from it).
    clients: HashMap<Ipv4Addr, HttpClient>,
    guard: guard::Guard,
    outage: Arc<AtomicBool>,
    audience: String,
    minted: u64,
}

/// The gateway's public URL (the demo issuer's `iss`).
const PUBLIC_URL: &str = "http://127.0.0.1:8080";

impl World {
    /// The gateway with its default configuration and an inventory of `clients`
    /// (plus `svc-token`, a client that authenticates with the demo issuer's tokens).
    pub async fn new(clients: &[Client]) -> Self {
        let config = config::from_lookup(|_| None).expect("default config");
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(T0));
        let expires = UNIX_EPOCH + Duration::from_secs(T0 + 365 * 86_400);
        let scopes =
            ScopeSet::parse("orders:read orders:write inventory:read inventory:write").expect("scopes");
        let mut inv = Inventory::builder()
            .tier(
                "standard",
                Tier {
                    per_second: 50,
                    burst: 100,
                },
            )
            .tier(
                "bulk",
                Tier {
                    per_second: 200,
                    burst: 400,
                },
            );
        for c in clients.iter().chain([&Client::new("svc-token", "standard")]) {
            inv = inv.client(
                ClientRecord::builder(
                    c.id.as_str(),
                    "team@example.com",
                    "simulated integration",
                    expires,
                )
                .scopes(scopes.clone())
                .tier(c.tier)
                .api_key(&c.key)
                .build()
                .expect("record"),
            );
        }
        let registry = Arc::new(InMemoryRegistry::new(inv.build().expect("inventory")));
        let guard = guard::build(&config, registry, PUBLIC_URL, Arc::new(clock.clone()))
            .await
            .expect("the gateway's stack builds");
        let state = guard.app_state(None);
        let outage = Arc::new(AtomicBool::new(false));
        let down = outage.clone();
        // The upstream: the gateway's routes over a catalogue of items 1..=10 000
        // (any other item is 404), answering 503 during an outage.
        let router = app::routes(state)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let down = down.load(Ordering::Relaxed);
                    let missing = req
                        .uri()
                        .path()
                        .strip_prefix("/inventory/")
                        .and_then(|rest| rest.split('/').next())
                        .and_then(|sku| sku.parse::<u64>().ok())
                        .is_some_and(|n| !(1..=10_000).contains(&n));
                    async move {
                        if down {
                            StatusCode::SERVICE_UNAVAILABLE.into_response()
                        } else if missing {
                            StatusCode::NOT_FOUND.into_response()
                        } else {
                            next.run(req).await
                        }
                    }
                },
            ))
            .layer(guard.layer.clone())
            .layer(axum::middleware::map_response(
                |mut res: axum::response::Response| async move {
                    let by = res
                        .extensions()
                        .get::<Denial>()
                        .map(|d| format!("{}/{}", d.control(), d.reason()));
                    if let Some(v) = by.and_then(|b| HeaderValue::from_str(&b).ok()) {
                        res.headers_mut().insert(DENIED_BY, v);
                    }
                    res
                },
            ));
        let server = Server::start(router).await;
        Self {
            clock,
            base: server.base(),
            server,
            clients: HashMap::new(),
            guard,
            outage,
            audience: config.audience.clone(),
            minted: 0,
        }
    }

    /// Seconds since the start.
    fn set_time(&self, at: f64) {
        self.clock
            .set(UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(at));
    }

    /// A token of `svc-token` issued at `at` for `ttl` seconds.
    pub fn mint(&mut self, at: f64, ttl: u64) -> String {
        let demo = self.guard.demo.as_ref().expect("demo issuer");
        self.minted += 1;
        let iat = T0 + at as u64;
        demo.mint_claims(&json!({
            "iss": PUBLIC_URL,
            "aud": self.audience,
            "sub": "svc-token",
            "client_id": "svc-token",
            "scope": "orders:read inventory:read",
            "iat": iat,
            "exp": iat + ttl,
            "jti": format!("sim-{}", self.minted),
        }))
    }

    /// Sends one request at its time, from its source address.
    pub async fn send(&mut self, r: &Req) -> Answer {
        self.set_time(r.at);
        let mut b = Request::builder()
            .method(r.method)
            .uri(format!("{}{}", self.base, r.path));
        b = match &r.cred {
            Cred::Key(k) => b.header("x-api-key", k),
            Cred::Token(t) => b.header("authorization", format!("Bearer {t}")),
        };
        let req = b.body(Empty::new()).expect("request");
        let client = self
            .clients
            .entry(r.ip)
            .or_insert_with(|| http_client(Some(r.ip.into())));
        let res = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{} {} from {}: {e}", r.method, r.path, r.ip));
        let denial = res
            .headers()
            .get(DENIED_BY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = res.status();
        let _ = res.into_body().collect().await;
        Answer { status, denial }
    }

    /// The risk layer's operator.
    pub fn risk(&self) -> nhi_guard::risk::RiskOperator {
        self.guard.risk.clone().expect("risk is on")
    }
}

pub use nhi_guard_testkit::rng::Rng;

/// The measured outcome of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub name: String,
    pub attack_total: usize,
    /// Attack requests sent after the first `window` seconds of the attack, and how
    /// many of them were stopped.
    pub after_window_total: usize,
    pub after_window_stopped: usize,
    /// From the attack's start to its first stopped request.
    pub first_stop: Option<f64>,
    pub benign_total: usize,
    pub benign_refused: usize,
    pub benign_step_ups: usize,
    /// How attack requests were stopped: "control/reason" → count.
    pub stopped_by: BTreeMap<String, usize>,
    /// What refused benign requests, for the failure message.
    pub benign_refused_by: BTreeMap<String, usize>,
    /// The share of the attack that must be stopped after the window: 99%, lower
    /// only for a stretch scenario beyond what the suite promises.
    pub bar: f64,
}

/// The detection window: attack requests sent in the attack's first 10 seconds are
/// not held against the guard.
pub const WINDOW: f64 = 10.0;

impl Report {
    pub fn stopped_after_window(&self) -> f64 {
        if self.after_window_total == 0 {
            0.0
        } else {
            self.after_window_stopped as f64 / self.after_window_total as f64
        }
    }

    pub fn row(&self) -> String {
        let (stopped, first) = if self.attack_total == 0 {
            ("— (benign shape)".to_owned(), "—".to_owned())
        } else {
            (
                format!(
                    "{:.1}% of {}",
                    100.0 * self.stopped_after_window(),
                    self.after_window_total
                ),
                self.first_stop
                    .map_or_else(|| "never".to_owned(), |d| format!("{d:.1} s")),
            )
        };
        let by = if self.stopped_by.is_empty() {
            "—".to_owned()
        } else {
            self.stopped_by
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "| {} | {} | {} | {} | {} of {} | {} |",
            self.name, stopped, first, by, self.benign_refused, self.benign_total, self.benign_step_ups
        )
    }

    /// What the issue asks: every attack ≥ 99% stopped after the window and first
    /// stopped within it; no benign request refused or challenged.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.benign_refused > 0 || self.benign_step_ups > 0 {
            out.push(format!(
                "{}: {} benign requests refused, {} step-ups ({:?})",
                self.name, self.benign_refused, self.benign_step_ups, self.benign_refused_by
            ));
        }
        if self.attack_total > 0 {
            if self.stopped_after_window() < self.bar {
                out.push(format!(
                    "{}: only {:.1}% of the attack stopped after the first {WINDOW} s (bar {:.0}%)",
                    self.name,
                    100.0 * self.stopped_after_window(),
                    100.0 * self.bar
                ));
            }
            if !self.first_stop.is_some_and(|d| d <= WINDOW) {
                out.push(format!("{}: first stop {:?} s", self.name, self.first_stop));
            }
        }
        out
    }
}

/// Runs time-ordered requests from `attack_start` on; `react` lets actors answer
/// what they got (a fresh token after a challenge or an expiry, ...).
pub async fn simulate(
    world: &mut World,
    name: &str,
    mut reqs: Vec<Req>,
    attack_start: f64,
    outage: Option<(f64, f64)>,
    mut react: impl FnMut(&mut World, &Req, &Answer) -> Vec<Req>,
) -> Report {
    reqs.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut queue: std::collections::VecDeque<Req> = reqs.into();
    let mut report = Report {
        name: name.to_owned(),
        bar: 0.99,
        ..Report::default()
    };
    let debug = std::env::var_os("SIM_DEBUG").is_some();
    if debug {
        // The risk layer's decisions, with their signals, on stderr.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("nhi_guard::risk=info")
            .with_writer(std::io::stderr)
            .try_init();
    }
    while let Some(r) = queue.pop_front() {
        let down = outage.is_some_and(|(from, to)| (from..to).contains(&r.at));
        world.outage.store(down, Ordering::Relaxed);
        let a = world.send(&r).await;
        let label = a.denial.clone();
        match r.role {
            Role::Attack => {
                report.attack_total += 1;
                let after = r.at >= attack_start + WINDOW;
                if a.stopped() {
                    *report
                        .stopped_by
                        .entry(label.clone().unwrap_or_default())
                        .or_default() += 1;
                    report.first_stop.get_or_insert(r.at - attack_start);
                }
                if after {
                    report.after_window_total += 1;
                    if a.stopped() {
                        report.after_window_stopped += 1;
                    } else if debug {
                        eprintln!(
                            "{name}: passed t={:.1} ip={} {} {}",
                            r.at - attack_start,
                            r.ip,
                            r.path,
                            a.status
                        );
                    }
                }
            }
            Role::Benign => {
                report.benign_total += 1;
                let refused = a.stopped() || (a.denial.is_some() && !r.invalid);
                if refused {
                    report.benign_refused += 1;
                    *report
                        .benign_refused_by
                        .entry(label.unwrap_or_default())
                        .or_default() += 1;
                    if debug {
                        eprintln!(
                            "{name}: benign refused t={:.1} ip={} {} {:?}",
                            r.at, r.ip, r.path, a.denial
                        );
                    }
                }
                if a.step_up() {
                    report.benign_step_ups += 1;
                }
            }
        }
        for f in react(world, &r, &a) {
            let pos = queue.partition_point(|q| q.at <= f.at);
            queue.insert(pos, f);
        }
    }
    report
}

/// Honest background traffic: `n` clients `bg-<i>` (from `clients`), each from its
/// own address in 127.10.0.0/16, reading orders and a few items of its own every
/// ~`period` seconds until `end`.
pub fn background(n: usize, end: f64, period: f64, rng: &mut Rng) -> (Vec<Client>, Vec<Req>) {
    let mut clients = Vec::new();
    let mut reqs = Vec::new();
    for i in 0..n {
        let c = Client::new(format!("bg-{i}"), "standard");
        let ip = Ipv4Addr::new(127, 10, (i / 200) as u8, (i % 200) as u8 + 1);
        let mut t = rng.unit() * period;
        while t < end {
            let path = if rng.below(3) == 0 {
                "/orders".to_owned()
            } else {
                format!("/inventory/{}", 1 + i as u64 * 37 + rng.below(10))
            };
            reqs.push(Req::new(
                t,
                Role::Benign,
                ip,
                "GET",
                path,
                Cred::Key(c.key.clone()),
            ));
            t += period * (0.5 + rng.unit());
        }
        clients.push(c);
    }
    (clients, reqs)
}
