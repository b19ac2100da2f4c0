//! Over a real socket: an axum server on 127.0.0.1:0 with the peer address from
//! `ConnectInfo`, spoken to with plain HTTP/1.1.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use nhi_guard_ratelimit::store::Quota;
use nhi_guard_ratelimit::{Limit, RateLimitLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get_once(addr: SocketAddr, extra: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET /orders HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_the_socket_peer_and_ignores_forged_forwarding_headers() {
    let layer = RateLimitLayer::new()
        .limit(Limit::per_address(
            "per-ip",
            Quota::per_minute(1).and_then(|q| q.with_burst(2)).expect("quota"),
        ))
        .expect("limit");
    let app = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .expect("serve");
    });

    let (s1, r1) = get_once(addr, "").await;
    assert_eq!(s1, 200);
    assert!(
        r1.to_ascii_lowercase().contains("ratelimit: \"per-ip\";r=1;t="),
        "{r1}"
    );
    // No trusted proxy is configured: a forged X-Forwarded-For does not buy a new key.
    let (s2, _) = get_once(addr, "X-Forwarded-For: 198.51.100.1\r\n").await;
    assert_eq!(s2, 200);
    let (s3, r3) = get_once(addr, "X-Forwarded-For: 198.51.100.2\r\n").await;
    assert_eq!(s3, 429);
    let lower = r3.to_ascii_lowercase();
    // Two per minute were spent just now: the next one is about a minute away.
    let retry: u64 = lower
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("retry-after");
    assert!((1..=60).contains(&retry), "{r3}");
    assert!(lower.contains("content-type: application/problem+json"), "{r3}");
    assert!(r3.contains("\"violated-policies\":[\"per-ip\"]"), "{r3}");
}
