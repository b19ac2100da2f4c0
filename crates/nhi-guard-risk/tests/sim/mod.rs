//! A traffic simulator for the abuse scenarios: a full stack (risk edge → identity
//! stand-in → risk → application) on a manual clock, driven by time-ordered
//! requests from many loopback source addresses (127.0.0.0/8).
//!
//! The identity layer here is a test-only stand-in: it looks API keys up in an
//! `InMemoryRegistry` and bearer tokens up in a small token table, and records the
//! principal, the credential fingerprint, the token's `iat` and any identity
//! failure in the security context the way the real identity layer
//! (`nhi-guard-identity`) does, answering failures with 401. The lead swaps in the
//! real identity layer when wiring the whole stack.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::denial::{DefaultRenderer, respond};
use nhi_guard_core::registry::{ApiKeyHash, ClientRecord, ClientRegistry, InMemoryRegistry, Inventory};
use nhi_guard_core::{
    ClientAddrResolver, Control, CredentialFingerprint, CredentialInfo, Denial, GuardBody, Principal,
    SecurityContext, Tier,
};
use nhi_guard_risk::{RiskLayer, Route};
use tower::{Layer, Service};

pub(crate) const T0: u64 = 1_800_000_000;

/// Tokens the simulated issuer minted: token → (client id, issued at).
pub(crate) type TokenTable = Arc<Mutex<HashMap<String, (String, SystemTime)>>>;

/// The identity stand-in layer.
#[derive(Clone)]
pub(crate) struct StandInIdentityLayer {
    registry: Arc<InMemoryRegistry>,
    tokens: TokenTable,
    clock: ManualClock,
}

#[derive(Clone)]
pub(crate) struct StandInIdentity<S> {
    inner: S,
    layer: StandInIdentityLayer,
}

impl<S> Layer<S> for StandInIdentityLayer {
    type Service = StandInIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StandInIdentity {
            inner,
            layer: self.clone(),
        }
    }
}

type BoxFut<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Full<Bytes>>> for StandInIdentity<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<GuardBody<Full<Bytes>>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<GuardBody<Full<Bytes>>>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let ctx = SecurityContext::get_or_insert(&mut req, &ClientAddrResolver::new(), &self.layer.clock);
        let l = &self.layer;
        let api_key = req
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let verdict: Result<(), Denial> = match (api_key, bearer) {
            (Some(key), None) => {
                let fp = CredentialFingerprint::of(key.as_bytes());
                ctx.update(|s| s.credential_fingerprint = Some(fp));
                match l.registry.client_by_api_key(&ApiKeyHash::of_key(key.as_bytes())) {
                    Some(record) => {
                        let info = CredentialInfo::ApiKey {
                            prefix: CredentialInfo::api_key_prefix(&key, 8),
                        };
                        let tier = l.registry.tier(record.tier()).unwrap_or(Tier::BUILT_IN_DEFAULT);
                        let scopes = record.scopes().clone();
                        ctx.set_principal(Principal::new(record, info, scopes, tier));
                        Ok(())
                    }
                    None => Err(fail(&ctx, "unknown_api_key")),
                }
            }
            (None, Some(token)) => {
                let fp = CredentialFingerprint::of(token.as_bytes());
                ctx.update(|s| s.credential_fingerprint = Some(fp));
                let entry = l.tokens.lock().expect("tokens").get(&token).cloned();
                match entry.and_then(|(id, iat)| Some((l.registry.client(&id)?, iat))) {
                    Some((record, iat)) => {
                        let info = CredentialInfo::Jwt {
                            kid: None,
                            alg: Arc::from("ES256"),
                            jti: None,
                            certificate_bound: false,
                        };
                        let scopes = record.scopes().clone();
                        ctx.set_principal(Principal::new(record, info, scopes, Tier::BUILT_IN_DEFAULT));
                        ctx.update(|s| s.credential_issued_at = Some(iat));
                        Ok(())
                    }
                    None => Err(fail(&ctx, "invalid_token")),
                }
            }
            (None, None) => {
                let d = Denial::missing_credential(Control::Identity);
                ctx.update(|s| s.identity_failure = Some("credential_missing"));
                Err(d)
            }
            (Some(_), Some(_)) => Err(Denial::invalid_request(
                Control::Identity,
                "multiple_credentials",
                "more than one credential",
            )),
        };
        match verdict {
            Ok(()) => {
                let fut = self.inner.call(req);
                Box::pin(fut)
            }
            Err(denial) => {
                ctx.deny(&denial);
                let res = respond(&DefaultRenderer::new(), denial, nhi_guard_core::Protocol::Http);
                Box::pin(std::future::ready(Ok(res)))
            }
        }
    }
}

fn fail(ctx: &SecurityContext, reason: &'static str) -> Denial {
    ctx.update(|s| s.identity_failure = Some(reason));
    Denial::invalid_token(Control::Identity, reason, "The credential is not valid")
}

/// The application: items 1..=10 000 exist; reservations and exports succeed.
fn app(req: Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let path = req.uri().path();
    let status = if let Some(id) = path.strip_prefix("/items/") {
        match id.parse::<u64>() {
            Ok(n) if (1..=10_000).contains(&n) => StatusCode::OK,
            _ => StatusCode::NOT_FOUND,
        }
    } else {
        StatusCode::OK
    };
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = status;
    std::future::ready(Ok(res))
}

type AppFn = fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;
type Stack = nhi_guard_risk::RiskEdge<StandInIdentity<nhi_guard_risk::Risk<tower::util::ServiceFn<AppFn>>>>;

/// The default risk configuration of the suite: default signals, thresholds and
/// cool-downs, plus the application's routes and a batch tier.
pub(crate) fn risk_layer(clock: &ManualClock) -> RiskLayer {
    RiskLayer::new()
        .clock(Arc::new(clock.clone()))
        .route(Route::new("GET", "/items/{id}").expect("route").group("items"))
        .expect("route")
        .route(
            Route::new("POST", "/inventory/{sku}/reserve")
                .expect("route")
                .group("inventory")
                .scarce(),
        )
        .expect("route")
        .tier_multiplier("batch", 0.5)
        .expect("tier")
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Attack,
    Benign,
}

/// A credential a simulated request carries.
#[derive(Debug, Clone)]
pub(crate) enum Cred {
    Key(String),
    Token(String),
}

/// One simulated request.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) at: f64,
    pub(crate) role: Role,
    pub(crate) ip: Ipv4Addr,
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) cred: Cred,
    /// Actor id, for clients that react to answers (refresh a token, ...).
    pub(crate) actor: usize,
}

/// What happened to one request.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) refused_by_risk: bool,
    pub(crate) reason: Option<&'static str>,
}

/// The simulated world: registry, token issuer, clock and the stack.
pub(crate) struct World {
    pub(crate) clock: ManualClock,
    pub(crate) registry: Arc<InMemoryRegistry>,
    pub(crate) tokens: TokenTable,
    pub(crate) risk: RiskLayer,
    stack: Stack,
}

impl World {
    /// A world with `clients` API-key clients `client-<i>` (key `key-<i>`), plus
    /// the named ones.
    pub(crate) fn new(clients: usize, extra: &[(&str, &str, &str)]) -> Self {
        let clock = ManualClock::at(UNIX_EPOCH + Duration::from_secs(T0));
        let expires = UNIX_EPOCH + Duration::from_secs(T0 + 365 * 86_400);
        let mut inv = Inventory::builder().tier(
            "batch",
            Tier {
                per_second: 100,
                burst: 200,
            },
        );
        for i in 0..clients {
            inv = inv.client(
                ClientRecord::builder(format!("client-{i}"), "team@example.com", "sim", expires)
                    .api_key(&format!("key-{i}"))
                    .build()
                    .expect("record"),
            );
        }
        for (id, key, tier) in extra {
            inv = inv.client(
                ClientRecord::builder(*id, "team@example.com", "sim", expires)
                    .api_key(key)
                    .tier(*tier)
                    .build()
                    .expect("record"),
            );
        }
        let registry = Arc::new(InMemoryRegistry::new(inv.build().expect("inventory")));
        let tokens: TokenTable = Arc::default();
        let risk = risk_layer(&clock);
        let identity = StandInIdentityLayer {
            registry: registry.clone(),
            tokens: tokens.clone(),
            clock: clock.clone(),
        };
        let stack = risk
            .edge()
            .layer(identity.layer(risk.layer(tower::service_fn(app as AppFn))));
        Self {
            clock,
            registry,
            tokens,
            risk,
            stack,
        }
    }

    /// Mints a token for `client` issued now.
    pub(crate) fn mint(&self, client: &str, token: &str) {
        let now = nhi_guard_core::Clock::now(&self.clock);
        self.tokens
            .lock()
            .expect("tokens")
            .insert(token.to_owned(), (client.to_owned(), now));
    }

    /// Sends one request at its time.
    pub(crate) fn send(&mut self, r: &Req) -> Answer {
        self.clock
            .set(UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(r.at));
        let mut b = Request::builder().method(r.method).uri(&r.path);
        b = match &r.cred {
            Cred::Key(k) => b.header("x-api-key", k),
            Cred::Token(t) => b.header("authorization", format!("Bearer {t}")),
        };
        let mut req = b.body(Full::new(Bytes::new())).expect("request");
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::new(r.ip.into(), 40_000)));
        let res = run(self.stack.call(req)).expect("infallible");
        let denial = res.extensions().get::<Denial>();
        Answer {
            status: res.status(),
            refused_by_risk: denial.is_some_and(|d| d.control() == Control::Risk),
            reason: denial.map(Denial::reason),
        }
    }
}

fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

pub(crate) use nhi_guard_testkit::rng::Rng;

/// The measured outcome of one scenario.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) name: &'static str,
    pub(crate) attack_total: usize,
    pub(crate) attack_stopped: usize,
    /// Attack requests after the detection window, and how many were stopped.
    pub(crate) after_window_total: usize,
    pub(crate) after_window_stopped: usize,
    pub(crate) window_secs: f64,
    pub(crate) detection_secs: Option<f64>,
    pub(crate) benign_total: usize,
    pub(crate) benign_refused: usize,
    /// How attack requests were stopped: risk reason → count.
    pub(crate) stopped_by: std::collections::BTreeMap<&'static str, usize>,
}

impl Report {
    pub(crate) fn stopped_after_window(&self) -> f64 {
        if self.after_window_total == 0 {
            1.0
        } else {
            self.after_window_stopped as f64 / self.after_window_total as f64
        }
    }

    pub(crate) fn row(&self) -> String {
        let attack = if self.attack_total == 0 {
            "— (benign only)".to_owned()
        } else {
            format!(
                "{:.1}% of {} ({:.1}% overall)",
                100.0 * self.stopped_after_window(),
                self.after_window_total,
                100.0 * self.attack_stopped as f64 / self.attack_total as f64
            )
        };
        let window = if self.attack_total == 0 {
            "—".to_owned()
        } else {
            format!("{:.0} s", self.window_secs)
        };
        let detect = match (self.attack_total, self.detection_secs) {
            (0, _) => "—".to_owned(),
            (_, Some(d)) => format!("{d:.1} s"),
            (_, None) => "never".to_owned(),
        };
        let how = if self.stopped_by.is_empty() {
            "—".to_owned()
        } else {
            self.stopped_by
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "| {} | {} | {} | {} | {} | {} of {} |",
            self.name, window, attack, detect, how, self.benign_refused, self.benign_total
        )
    }
}

/// Runs time-ordered requests; `react` lets benign actors respond to answers
/// (returning follow-up requests, e.g. a retry with a fresh token).
pub(crate) fn simulate(
    world: &mut World,
    name: &'static str,
    mut reqs: Vec<Req>,
    attack_start: f64,
    window_secs: f64,
    mut react: impl FnMut(&mut World, &Req, &Answer) -> Vec<Req>,
) -> Report {
    reqs.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut queue: std::collections::VecDeque<Req> = reqs.into();
    let mut report = Report {
        name,
        attack_total: 0,
        attack_stopped: 0,
        after_window_total: 0,
        after_window_stopped: 0,
        window_secs,
        detection_secs: None,
        benign_total: 0,
        benign_refused: 0,
        stopped_by: std::collections::BTreeMap::new(),
    };
    while let Some(r) = queue.pop_front() {
        let a = world.send(&r);
        match r.role {
            Role::Attack => {
                report.attack_total += 1;
                let after = r.at >= attack_start + window_secs;
                if after {
                    report.after_window_total += 1;
                }
                // SIM_DEBUG=1 lists the attack requests that got through.
                if std::env::var_os("SIM_DEBUG").is_some() && !a.refused_by_risk && after {
                    eprintln!(
                        "passed t={:.0}s ip={} status={}",
                        r.at - attack_start,
                        r.ip,
                        a.status
                    );
                }
                if a.refused_by_risk {
                    *report.stopped_by.entry(a.reason.unwrap_or("?")).or_default() += 1;
                    report.attack_stopped += 1;
                    if after {
                        report.after_window_stopped += 1;
                    }
                    report.detection_secs.get_or_insert(r.at - attack_start);
                }
            }
            Role::Benign => {
                report.benign_total += 1;
                if a.refused_by_risk {
                    report.benign_refused += 1;
                }
            }
        }
        let follow = react(world, &r, &a);
        for f in follow {
            let pos = queue.partition_point(|q| q.at <= f.at);
            queue.insert(pos, f);
        }
    }
    report
}

/// Steady benign traffic: `n` clients `client-<i>` (key `key-<i>`), each from its
/// own address in 127.10.0.0/16, reading 20 items of its own every `period`
/// seconds from `from` to `to`.
pub(crate) fn benign_population(n: usize, from: f64, to: f64, period: f64, rng: &mut Rng) -> Vec<Req> {
    let mut out = Vec::new();
    for i in 0..n {
        let ip = Ipv4Addr::new(127, 10, (i / 200) as u8, (i % 200) as u8 + 1);
        let mut t = from + rng.unit() * period;
        while t < to {
            let item = 1 + (i as u64 * 37 + rng.below(20)) % 10_000;
            out.push(Req {
                at: t,
                role: Role::Benign,
                ip,
                method: "GET",
                path: format!("/items/{item}"),
                cred: Cred::Key(format!("key-{i}")),
                actor: i,
            });
            t += period * (0.5 + rng.unit());
        }
    }
    out
}
