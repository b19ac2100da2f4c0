//! The risk layer on its own: a client that starts walking item ids is throttled,
//! then blocked; an operator lists the block and lifts it.
//!
//! ```text
//! cargo run -p nhi-guard-risk --example risk_alone
//! ```
//!
//! In a real stack the identity layer records the principal in the security
//! context; here the example records it itself before each call.
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use nhi_guard_core::clock::ManualClock;
use nhi_guard_core::registry::ClientRecord;
use nhi_guard_core::{
    ClientAddr, CredentialFingerprint, CredentialInfo, Principal, ScopeSet, SecurityContext, Tier,
};
use nhi_guard_risk::{RiskLayer, Route};
use tower::{Layer, Service, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::now();
    let risk = RiskLayer::new()
        .clock(Arc::new(clock.clone()))
        .route(Route::new("GET", "/items/{id}")?.group("items"))?;
    let operator = risk.operator();
    let mut svc = risk.layer(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("item")))
    }));

    let record = Arc::new(
        ClientRecord::builder(
            "catalog-partner",
            "partners@example.com",
            "Reads prices of the items it sells",
            SystemTime::now() + Duration::from_secs(90 * 86_400),
        )
        .build()?,
    );
    let principal = Principal::new(
        record,
        CredentialInfo::ApiKey {
            prefix: Arc::from("nhik_liv"),
        },
        ScopeSet::parse("catalog:read")?,
        Tier::BUILT_IN_DEFAULT,
    );
    let peer: SocketAddr = "127.0.0.10:50000".parse()?;

    let mut last = 0;
    for id in 1..=120u32 {
        clock.advance(Duration::from_millis(500));
        let mut req = Request::get(format!("/items/{id}")).body(())?;
        let ctx = SecurityContext::new(Some(ClientAddr::direct(peer)), &clock);
        ctx.set_principal(principal.clone());
        ctx.update(|s| s.credential_fingerprint = Some(CredentialFingerprint::of(b"nhik_live_example")));
        req.extensions_mut().insert(ctx.clone());
        let res = svc.ready().await?.call(req).await?;
        let status = res.status().as_u16();
        if status != last {
            let risk = ctx.read(|s| s.risk.clone()).unwrap_or_default();
            println!(
                "item {id:>3}: {status} score {:>3} action {:<8} {}",
                risk.score,
                risk.action,
                risk.signals.first().map_or("", |s| &*s.reason)
            );
            last = status;
        }
    }

    for d in operator.active() {
        println!(
            "active: {} on {} for {}s ({})",
            d.action.as_str(),
            d.key,
            d.remaining(nhi_guard_core::Clock::now(&clock)).as_secs(),
            d.reason
        );
        println!("lifted: {}", operator.lift(&d.key));
    }
    println!(
        "memory held by the signals: {} bytes",
        operator.memory().total_bytes()
    );
    Ok(())
}
