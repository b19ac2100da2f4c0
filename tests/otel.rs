//! The `otel` feature: a request through the whole stack becomes an OpenTelemetry
//! span with the decision's attributes, and the guard's metrics OpenTelemetry data
//! points, read back from the SDK's in-memory exporters.
#![cfg(feature = "otel")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use nhi_guard::core::address::PeerAddr;
use nhi_guard::identity::IdentityLayer;
use nhi_guard::otel::Telemetry;
use nhi_guard::prelude::*;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

const GOOD_KEY: &str = "nhik_otel_good_0123456789";
const BOT_KEY: &str = "nhik_otel_bot_0123456789";

fn app() -> Router {
    let expires = SystemTime::now() + Duration::from_secs(86_400 * 30);
    let client = |id: &str, scopes: &str, key: &str| {
        ClientRecord::builder(id, "team@example.com", "otel test", expires)
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
        .scope(ScopeLayer::new(policy))
        .build()
        .expect("stack");
    Router::new()
        .route("/orders/{id}", get(|| async { "{}" }))
        .layer(guard)
}

async fn send(app: &Router, key: &str) -> StatusCode {
    let mut req = Request::get("/orders/42?access_token=s3cr3t")
        .header("x-api-key", key)
        .body(Body::empty())
        .expect("request");
    req.extensions_mut()
        .insert(PeerAddr("192.0.2.7:40000".parse::<SocketAddr>().expect("peer")));
    app.clone().oneshot(req).await.expect("infallible").status()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn s(v: &str) -> Option<Value> {
    Some(Value::from(v.to_owned()))
}

/// The data points of the metric `name`: (attributes, value or count).
fn points(metrics: &[ResourceMetrics], name: &str) -> Vec<(Vec<KeyValue>, f64)> {
    let mut out = Vec::new();
    for rm in metrics {
        for sm in rm.scope_metrics() {
            for m in sm.metrics().filter(|m| m.name() == name) {
                let attrs = |a: &mut dyn Iterator<Item = &KeyValue>| {
                    let mut v: Vec<KeyValue> = a.cloned().collect();
                    v.sort_by(|x, y| x.key.as_str().cmp(y.key.as_str()));
                    v
                };
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        for p in sum.data_points() {
                            out.push((attrs(&mut p.attributes()), p.value() as f64));
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            out.push((attrs(&mut p.attributes()), p.count() as f64));
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            out.push((attrs(&mut p.attributes()), p.value()));
                        }
                    }
                    other => panic!("{name}: unexpected data {other:?}"),
                }
            }
        }
    }
    out
}

fn value(points: &[(Vec<KeyValue>, f64)], labels: &[(&'static str, &'static str)]) -> Option<f64> {
    let mut want: Vec<KeyValue> = labels.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
    want.sort_by(|x, y| x.key.as_str().cmp(y.key.as_str()));
    points.iter().find(|(a, _)| *a == want).map(|(_, v)| *v)
}

#[tokio::test]
async fn spans_and_metrics_reach_the_opentelemetry_exporters() {
    let span_exporter = InMemorySpanExporter::default();
    let metric_exporter = InMemoryMetricExporter::default();
    let telemetry = Telemetry::from_providers(
        SdkTracerProvider::builder()
            .with_simple_exporter(span_exporter.clone())
            .build(),
        Telemetry::meter_provider_builder()
            .with_reader(PeriodicReader::builder(metric_exporter.clone()).build())
            .build(),
    );
    // This thread's subscriber and recorder: the test runs on one thread, and the
    // layers resolve their metric handles on their first request, under it.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(telemetry.tracing_layer());
    let _tracing = tracing::subscriber::set_default(subscriber);
    let recorder = telemetry.metrics_recorder();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let app = app();
    assert_eq!(send(&app, GOOD_KEY).await, StatusCode::OK);
    assert_eq!(send(&app, BOT_KEY).await, StatusCode::FORBIDDEN);
    telemetry.force_flush().expect("flushed");

    let spans = span_exporter.get_finished_spans().expect("spans");
    let requests: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.instrumentation_scope.name() == "nhi-guard" && attr(s, "nhi.request_id").is_some())
        .collect();
    assert_eq!(requests.len(), 2, "{spans:#?}");
    let (allowed, denied) = (requests[0], requests[1]);
    assert_eq!(allowed.name, "GET /orders/{id}");
    assert_eq!(allowed.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(attr(allowed, "http.route").cloned(), s("/orders/{id}"));
    assert_eq!(attr(allowed, "url.path").cloned(), s("/orders/42"));
    assert_eq!(attr(allowed, "client.address").cloned(), s("192.0.2.7"));
    assert_eq!(attr(allowed, "enduser.id").cloned(), s("good"));
    assert_eq!(attr(allowed, "nhi.decision").cloned(), s("allow"));
    assert_eq!(attr(allowed, "nhi.risk.score"), Some(&Value::I64(0)));
    assert_eq!(attr(allowed, "http.response.status_code"), Some(&Value::I64(200)));
    assert_eq!(attr(allowed, "nhi.control"), None);
    // Each control's decision is an event of the span.
    let controls: Vec<String> = allowed
        .events
        .iter()
        .filter_map(|e| {
            e.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "nhi.control")
                .map(|kv| kv.value.to_string())
        })
        .collect();
    assert_eq!(controls, ["identity", "risk", "scope"]);

    assert_eq!(attr(denied, "enduser.id").cloned(), s("bot"));
    assert_eq!(attr(denied, "nhi.decision").cloned(), s("deny"));
    assert_eq!(attr(denied, "nhi.control").cloned(), s("scope"));
    assert_eq!(attr(denied, "nhi.reason").cloned(), s("insufficient_scope"));
    assert_eq!(attr(denied, "http.response.status_code"), Some(&Value::I64(403)));
    for span in &spans {
        let text = format!("{span:?}");
        assert!(
            !text.contains(GOOD_KEY) && !text.contains(BOT_KEY) && !text.contains("s3cr3t"),
            "a credential in {text}"
        );
    }

    let metrics = metric_exporter.get_finished_metrics().expect("metrics");
    let requests = points(&metrics, "nhi_guard_requests_total");
    assert_eq!(
        value(&requests, &[("control", "identity"), ("decision", "allow")]),
        Some(2.0)
    );
    assert_eq!(
        value(&requests, &[("control", "scope"), ("decision", "allow")]),
        Some(1.0)
    );
    assert_eq!(
        value(&requests, &[("control", "scope"), ("decision", "deny")]),
        Some(1.0)
    );
    let denials = points(&metrics, "nhi_guard_denials_total");
    assert_eq!(
        value(
            &denials,
            &[("control", "scope"), ("reason", "insufficient_scope")]
        ),
        Some(1.0)
    );
    // Decision times: identity and scope decided both requests; risk's edge and
    // inner halves both timed both.
    let decided = points(&metrics, "nhi_guard_decision_duration_seconds");
    assert_eq!(value(&decided, &[("control", "identity")]), Some(2.0));
    assert_eq!(value(&decided, &[("control", "scope")]), Some(2.0));
    assert_eq!(value(&decided, &[("control", "risk")]), Some(4.0));
    let scores = points(&metrics, "nhi_guard_risk_score");
    assert_eq!(value(&scores, &[]), Some(2.0));
    telemetry.shutdown().expect("shut down");
}

#[tokio::test]
async fn the_otlp_exporters_build_without_a_collector() {
    // No collector listens: building connects lazily, and nothing was recorded.
    let telemetry = Telemetry::otlp("nhi-guard-test", Some("http://127.0.0.1:9")).expect("exporters");
    assert!(format!("{telemetry:?}").starts_with("Telemetry"));
}
