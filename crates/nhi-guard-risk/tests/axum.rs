//! The risk layer (both halves) on an axum `Router`: it composes, routes its
//! captures, and its denials are ordinary responses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::clock::ManualClock;
use nhi_guard_risk::{RiskLayer, Route};
use tower::ServiceExt;

#[tokio::test]
async fn composes_with_an_axum_router() {
    let clock = ManualClock::now();
    let risk = RiskLayer::new()
        .clock(Arc::new(clock.clone()))
        .route(Route::new("GET", "/items/{id}").expect("route").group("items"))
        .expect("route");
    let operator = risk.operator();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .layer(risk.clone())
        .layer(risk.edge());
    let send = |id: u32| {
        let mut req = Request::get(format!("/items/{id}"))
            .body(Body::empty())
            .expect("request");
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::from(([127, 0, 0, 3], 9000))));
        app.clone().oneshot(req)
    };
    assert_eq!(send(1).await.expect("infallible").status(), StatusCode::OK);
    // An anonymous client walking ids is throttled, then blocked on its address.
    let mut statuses = Vec::new();
    for id in 2..80 {
        clock.advance(std::time::Duration::from_secs(1));
        statuses.push(send(id).await.expect("infallible").status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&403), "{statuses:?}");
    assert_eq!(operator.active()[0].key.to_string(), "addr:127.0.0.3");
}
