//! The request span of the composed stack: its fields for an allowed and for a
//! refused request, the controls' decision events inside it, and no credential
//! anywhere, read by a small `tracing` layer that keeps what it is given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use nhi_guard::core::address::PeerAddr;
use nhi_guard::identity::IdentityLayer;
use nhi_guard::prelude::*;
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const GOOD_KEY: &str = "nhik_span_good_0123456789";
const BOT_KEY: &str = "nhik_span_bot_0123456789";

/// The fields of one span or event, as text.
#[derive(Debug, Default, Clone)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// One closed request span: its fields and the events recorded inside it.
#[derive(Debug, Default, Clone)]
struct Seen {
    fields: Fields,
    events: Vec<Fields>,
}

/// Keeps every `nhi_guard.request` span (with the events under it) and every
/// event's and field's text, to look for credentials.
#[derive(Clone, Default)]
struct Capture {
    closed: Arc<Mutex<Vec<Seen>>>,
    everything: Arc<Mutex<Vec<String>>>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.everything
            .lock()
            .expect("capture lock")
            .push(format!("{fields:?}"));
        if attrs.metadata().name() == "nhi_guard.request" {
            let span = ctx.span(id).expect("the span being created");
            span.extensions_mut().insert(Seen {
                fields,
                events: Vec::new(),
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("a live span");
        let mut ext = span.extensions_mut();
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.everything
            .lock()
            .expect("capture lock")
            .push(format!("{fields:?}"));
        if let Some(seen) = ext.get_mut::<Seen>() {
            seen.fields.0.extend(fields.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields.0.insert("target".into(), event.metadata().target().into());
        self.everything
            .lock()
            .expect("capture lock")
            .push(format!("{fields:?}"));
        if let Some(span) = ctx.event_span(event)
            && let Some(seen) = span.extensions_mut().get_mut::<Seen>()
        {
            seen.events.push(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).expect("a closing span");
        if let Some(seen) = span.extensions_mut().remove::<Seen>() {
            self.closed.lock().expect("capture lock").push(seen);
        }
    }
}

fn app() -> Router {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
    let client = |id: &str, scopes: &str, key: &str| {
        ClientRecord::builder(id, "team@example.com", "span test", expires)
            .scopes(ScopeSet::parse(scopes).expect("scopes"))
            .api_key(key)
            .build()
            .expect("client")
    };
    let registry = Arc::new(InMemoryRegistry::new(
        Inventory::builder()
            .client(client("good", "orders:read", GOOD_KEY))
            .client(client("bot", "inventory:read", BOT_KEY))
            .build()
            .expect("inventory"),
    ));
    let policy = Policy::builder()
        .get("/orders/{id}", Require::all_of("orders:read"))
        .build()
        .expect("policy");
    let guard = NhiGuard::builder(registry.clone())
        .identity(IdentityLayer::builder(registry))
        .risk(RiskLayer::new())
        .rate_limit(
            RateLimitLayer::new()
                .limit(Limit::per_client("per-client"))
                .expect("limit"),
        )
        .scope(ScopeLayer::new(policy))
        .build()
        .expect("stack");
    Router::new()
        .route("/orders/{id}", get(|| async { "{}" }))
        .layer(guard)
}

/// Sends `GET uri` with `key` from 192.0.2.7 and returns the status and the span.
async fn traced(uri: &str, key: Option<&str>) -> (StatusCode, Seen, Vec<String>) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry()
        .with(capture.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    let _default = tracing::subscriber::set_default(subscriber);
    let mut req = Request::get(uri);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let mut req = req.body(Body::empty()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr("192.0.2.7:40000".parse::<SocketAddr>().expect("peer")));
    let status = app().oneshot(req).await.expect("infallible").status();
    let mut closed = capture.closed.lock().expect("capture lock").clone();
    assert_eq!(closed.len(), 1, "one request span: {closed:?}");
    let everything = capture.everything.lock().expect("capture lock").clone();
    (status, closed.remove(0), everything)
}

/// The (control, decision, reason) of each decision event, in order.
fn decisions(seen: &Seen) -> Vec<(String, String, Option<String>)> {
    seen.events
        .iter()
        .filter(|e| e.get("target") == Some("nhi_guard::decision"))
        .map(|e| {
            (
                e.get("nhi.control").unwrap_or_default().to_owned(),
                e.get("nhi.decision").unwrap_or_default().to_owned(),
                e.get("nhi.reason").map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_allowed_request_carries_route_client_decision_and_score() {
    let (status, seen, everything) = traced("/orders/42?access_token=s3cr3t", Some(GOOD_KEY)).await;
    assert_eq!(status, StatusCode::OK);
    let f = &seen.fields;
    assert_eq!(f.get("http.request.method"), Some("GET"));
    assert_eq!(
        f.get("url.path"),
        Some("/orders/42"),
        "the path without its query"
    );
    assert_eq!(f.get("http.route"), Some("/orders/{id}"));
    assert_eq!(f.get("otel.name"), Some("GET /orders/{id}"));
    assert_eq!(f.get("client.address"), Some("192.0.2.7"));
    assert_eq!(f.get("enduser.id"), Some("good"));
    assert_eq!(f.get("nhi.decision"), Some("allow"));
    assert_eq!(f.get("nhi.control"), None);
    assert_eq!(f.get("nhi.reason"), None);
    assert_eq!(f.get("nhi.risk.score"), Some("0"));
    assert_eq!(f.get("http.response.status_code"), Some("200"));
    assert_eq!(f.get("nhi.request_id").map(str::len), Some(36));
    // Each control's own decision, inside the request span.
    let allow = |c: &str| (c.to_owned(), "allow".to_owned(), None);
    assert_eq!(
        decisions(&seen),
        [
            allow("identity"),
            allow("risk"),
            allow("rate_limit"),
            allow("scope")
        ]
    );
    for text in everything {
        assert!(
            !text.contains(GOOD_KEY) && !text.contains("s3cr3t"),
            "a credential in {text}"
        );
    }
}

#[tokio::test]
async fn a_refused_request_names_the_control_and_reason() {
    let (status, seen, everything) = traced("/orders/42", Some(BOT_KEY)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let f = &seen.fields;
    assert_eq!(f.get("enduser.id"), Some("bot"));
    assert_eq!(f.get("http.route"), Some("/orders/{id}"));
    assert_eq!(f.get("nhi.decision"), Some("deny"));
    assert_eq!(f.get("nhi.control"), Some("scope"));
    assert_eq!(f.get("nhi.reason"), Some("insufficient_scope"));
    assert_eq!(f.get("http.response.status_code"), Some("403"));
    assert_eq!(
        decisions(&seen).last(),
        Some(&(
            "scope".to_owned(),
            "deny".to_owned(),
            Some("insufficient_scope".to_owned())
        ))
    );
    assert!(everything.iter().all(|t| !t.contains(BOT_KEY)));

    // An unknown key: identity refuses, and there is no client to name.
    let (status, seen, everything) = traced("/orders/42", Some("nhik_span_nobody_0123456789")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let f = &seen.fields;
    assert_eq!(f.get("enduser.id"), None);
    assert_eq!(f.get("nhi.control"), Some("identity"));
    assert_eq!(f.get("nhi.reason"), Some("api_key_unknown"));
    assert_eq!(f.get("http.response.status_code"), Some("401"));
    assert!(everything.iter().all(|t| !t.contains("nhik_span_nobody")));
}

#[tokio::test]
async fn without_a_subscriber_the_stack_serves_as_before() {
    let req = Request::get("/orders/42")
        .header("x-api-key", GOOD_KEY)
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        app().oneshot(req).await.expect("infallible").status(),
        StatusCode::OK
    );
}
