//! The request span of [`NhiGuardService`](crate::NhiGuardService): one `tracing`
//! span per request, with the decision in OpenTelemetry's semantic-convention
//! names.

use std::sync::Arc;

use http::{Request, StatusCode};
use nhi_guard_core::clock::SharedClock;
use nhi_guard_core::context::Decision;
use nhi_guard_core::{ClientAddrResolver, SecurityContext};
use tracing::Span;
use tracing::field::{Empty, display};

/// The span's target.
pub(crate) const TARGET: &str = "nhi_guard::request";

/// What the facade needs to create the request's context itself when its span is
/// on: the stack's one resolver and clock, so the context is the one the controls
/// would have created.
#[derive(Clone)]
pub(crate) struct SpanSettings {
    pub(crate) resolver: ClientAddrResolver,
    pub(crate) clock: SharedClock,
}

/// The span of one request, or `None` when no subscriber wants it: then nothing
/// is formatted, allocated or recorded.
#[inline]
pub(crate) fn open<B>(settings: &Arc<SpanSettings>, req: &mut Request<B>) -> Option<(Span, SecurityContext)> {
    let span = tracing::info_span!(
        target: TARGET,
        "nhi_guard.request",
        otel.name = Empty,
        otel.kind = "server",
        http.request.method = req.method().as_str(),
        // The path only: a query may carry a credential.
        url.path = req.uri().path(),
        http.route = Empty,
        client.address = Empty,
        enduser.id = Empty,
        nhi.request_id = Empty,
        nhi.decision = Empty,
        nhi.control = Empty,
        nhi.reason = Empty,
        nhi.risk.score = Empty,
        http.response.status_code = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    // The OpenTelemetry span is started when first entered, and its name is fixed
    // from then on: `{method} {route}` when the router has matched already (axum),
    // else `{method}` (the semantic conventions' name without a route); the
    // template a route table matches later is `http.route`.
    match nhi_guard_core::route::router_template(req.extensions()) {
        Some(route) => span.record("otel.name", display(format_args!("{} {route}", req.method()))),
        None => span.record("otel.name", req.method().as_str()),
    };
    let ctx = SecurityContext::get_or_insert(req, &settings.resolver, &*settings.clock);
    span.record("nhi.request_id", display(ctx.request_id()));
    if let Some(addr) = ctx.client_addr() {
        span.record("client.address", display(addr.ip()));
    }
    Some((span, ctx))
}

/// Records the outcome: route, client, decision, risk score and status.
pub(crate) fn close(span: &Span, ctx: &SecurityContext, status: Option<StatusCode>) {
    let (client, decision, score) = ctx.read(|s| {
        (
            s.principal.as_ref().map(|p| p.client_id().clone()),
            s.decision,
            s.risk.as_ref().map(|r| r.score),
        )
    });
    if let Some(route) = ctx.route() {
        span.record("http.route", &*route);
    }
    if let Some(client) = client {
        span.record("enduser.id", client.as_str());
    }
    match decision {
        Decision::Allowed => {
            span.record("nhi.decision", "allow");
        }
        Decision::Denied(d) => {
            span.record("nhi.decision", "deny");
            span.record("nhi.control", d.control.as_str());
            span.record("nhi.reason", d.reason);
        }
        Decision::Pending => {}
    }
    if let Some(score) = score {
        span.record("nhi.risk.score", i64::from(score));
    }
    if let Some(status) = status {
        span.record("http.response.status_code", i64::from(status.as_u16()));
    }
}
