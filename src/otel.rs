//! OpenTelemetry export (feature `otel`): the request spans of
//! [`NhiGuardService`](crate::NhiGuardService) as OpenTelemetry spans, and the
//! guard's metrics (the names of [`core::metrics`](crate::core::metrics)) as
//! OpenTelemetry instruments, exported over OTLP/gRPC or through any exporter of the
//! OpenTelemetry SDK.
//!
//! - Traces: [`Telemetry::tracing_layer`] is a `tracing-opentelemetry` layer; add it
//!   to the application's `tracing_subscriber` registry. Each request span becomes
//!   an OpenTelemetry server span named `{method} {route}` whose attributes are the
//!   span's fields (`http.route`, `client.address`, `enduser.id`, `nhi.control`,
//!   `nhi.reason`, `nhi.risk.score`, ...), and each control's decision event one of
//!   its events.
//! - Metrics: [`Telemetry::metrics_recorder`] is a `metrics` recorder over an
//!   OpenTelemetry meter (the `metrics-exporter-opentelemetry` bridge): counters
//!   become monotonic sums, gauges gauges, histograms histograms.
//!   [`Telemetry::install_metrics`] makes it the process's recorder; do it before
//!   the first request, as with any recorder. The meter provider of
//!   [`Telemetry::meter_provider_builder`] gives the decision-time and risk-score
//!   histograms bucket boundaries of their own (OpenTelemetry's default boundaries,
//!   0 to 10 000, suit neither seconds nor a 0–100 score).
//!
//! ```no_run
//! # async fn run() -> Result<(), nhi_guard::otel::OtelError> {
//! use nhi_guard::otel::Telemetry;
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! // Inside the Tokio runtime (the OTLP exporter's gRPC client runs on it).
//! let telemetry = Telemetry::otlp("orders-api", Some("http://otel-collector:4317"))?;
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::EnvFilter::new("info"))
//!     .with(telemetry.tracing_layer())
//!     .init();
//! telemetry.install_metrics()?; // before building the guard
//! // ... build the NhiGuard stack, serve ...
//! telemetry.shutdown()?; // flushes what is buffered
//! # Ok(())
//! # }
//! ```

use std::fmt;

use nhi_guard_core::metrics as m;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{
    Aggregation, Instrument, MeterProviderBuilder, PeriodicReader, SdkMeterProvider, Stream,
};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetryLayer;

/// The instrumentation scope of the guard's tracer and meter.
pub const SCOPE: &str = "nhi-guard";

/// The `metrics` recorder that records into an OpenTelemetry meter.
pub type MetricsRecorder = metrics_exporter_opentelemetry::Recorder;

/// A failure to build an exporter, install the recorder, flush or shut down.
#[derive(Debug)]
pub struct OtelError(String);

impl fmt::Display for OtelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "opentelemetry: {}", self.0)
    }
}

impl std::error::Error for OtelError {}

fn error(what: &str, e: impl fmt::Display) -> OtelError {
    OtelError(format!("{what}: {e}"))
}

/// A tracer provider and a meter provider: where the guard's spans and metrics go.
///
/// Cheap to clone (the providers are handles); [`Telemetry::shutdown`] flushes and
/// stops both.
#[derive(Clone)]
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Exports over OTLP/gRPC to `endpoint` (`http://collector:4317`), or, when
    /// `None`, where `OTEL_EXPORTER_OTLP_ENDPOINT` says (default
    /// `http://localhost:4317`). Spans are sent in batches, metrics every 60 s
    /// (`OTEL_METRIC_EXPORT_INTERVAL`, in milliseconds, overrides it); every span
    /// and metric carries the resource attribute `service.name`.
    ///
    /// Call it inside the Tokio runtime that serves the application: the gRPC
    /// client (tonic) runs on it. It does not connect yet: an unreachable
    /// collector shows as failed exports, not as an error here.
    ///
    /// # Errors
    /// An exporter could not be built (an invalid endpoint).
    pub fn otlp(service_name: &str, endpoint: Option<&str>) -> Result<Self, OtelError> {
        let mut spans = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        let mut metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic();
        if let Some(endpoint) = endpoint {
            spans = spans.with_endpoint(endpoint);
            metrics = metrics.with_endpoint(endpoint);
        }
        let spans = spans.build().map_err(|e| error("span exporter", e))?;
        let metrics = metrics.build().map_err(|e| error("metric exporter", e))?;
        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let meter_provider = Self::meter_provider_builder()
            .with_reader(PeriodicReader::builder(metrics).build())
            .with_resource(resource)
            .build();
        Ok(Self::from_providers(tracer_provider, meter_provider))
    }

    /// Exports through providers built by the application: other exporters, other
    /// processors, the SDK's in-memory exporters in tests. Build the meter provider
    /// from [`Telemetry::meter_provider_builder`] to keep the guard's histogram
    /// boundaries.
    pub fn from_providers(tracer_provider: SdkTracerProvider, meter_provider: SdkMeterProvider) -> Self {
        Self {
            tracer_provider,
            meter_provider,
        }
    }

    /// A meter provider builder with views giving the guard's histograms their
    /// boundaries: `nhi_guard_decision_duration_seconds` those of
    /// [`DECISION_DURATION_BUCKETS`](nhi_guard_core::metrics::DECISION_DURATION_BUCKETS),
    /// `nhi_guard_risk_score` steps of 10 points. Add a reader (an exporter) and
    /// build it.
    pub fn meter_provider_builder() -> MeterProviderBuilder {
        SdkMeterProvider::builder().with_view(|i: &Instrument| {
            let boundaries = match i.name() {
                m::DECISION_DURATION_SECONDS => m::DECISION_DURATION_BUCKETS.to_vec(),
                m::RISK_SCORE => (0..=10).map(|b| f64::from(b) * 10.0).collect(),
                _ => return None,
            };
            Stream::builder()
                .with_aggregation(Aggregation::ExplicitBucketHistogram {
                    boundaries,
                    record_min_max: true,
                })
                .build()
                .ok()
        })
    }

    /// The `tracing` layer that turns spans (the guard's request spans among them)
    /// into OpenTelemetry spans of the tracer provider.
    pub fn tracing_layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer_provider.tracer(SCOPE))
    }

    /// A `metrics` recorder recording into the meter provider (scope `nhi-guard`).
    /// Install it with [`Telemetry::install_metrics`], or use it as a local
    /// recorder (tests).
    pub fn metrics_recorder(&self) -> MetricsRecorder {
        use opentelemetry::metrics::MeterProvider as _;
        MetricsRecorder::with_meter(self.meter_provider.meter(SCOPE))
    }

    /// Installs [`Telemetry::metrics_recorder`] as the process's `metrics` recorder
    /// and describes the guard's metrics to it. Call it once, before the guard
    /// serves its first request.
    ///
    /// # Errors
    /// Another recorder is installed already.
    pub fn install_metrics(&self) -> Result<(), OtelError> {
        metrics::set_global_recorder(self.metrics_recorder()).map_err(|e| error("metrics recorder", e))?;
        m::describe();
        Ok(())
    }

    /// The tracer provider.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.tracer_provider
    }

    /// The meter provider.
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meter_provider
    }

    /// Exports what both providers hold now.
    ///
    /// # Errors
    /// An exporter failed.
    pub fn force_flush(&self) -> Result<(), OtelError> {
        self.tracer_provider
            .force_flush()
            .map_err(|e| error("flushing spans", e))?;
        self.meter_provider
            .force_flush()
            .map_err(|e| error("flushing metrics", e))
    }

    /// Flushes and stops both providers.
    ///
    /// # Errors
    /// An exporter failed, or the providers were shut down already.
    pub fn shutdown(&self) -> Result<(), OtelError> {
        let spans = self
            .tracer_provider
            .shutdown()
            .map_err(|e| error("shutting down spans", e));
        let metrics = self
            .meter_provider
            .shutdown()
            .map_err(|e| error("shutting down metrics", e));
        spans.and(metrics)
    }
}
