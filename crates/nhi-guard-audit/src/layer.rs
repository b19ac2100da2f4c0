//! [`AuditLayer`]: what the records show.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use nhi_guard_core::ClientAddrResolver;
use nhi_guard_core::clock::{SharedClock, SystemClock};
use nhi_guard_core::settings::{Explicit, LayerSettings};
use tower_layer::Layer;

use crate::error::ConfigError;
use crate::service::Audit;
use crate::writer::AuditWriter;

/// Header names that carry credentials or session state and can never be
/// allow-listed, whatever the configuration says.
const FORBIDDEN_HEADER_PARTS: &[&str] = &[
    "authorization",
    "cookie",
    "token",
    "secret",
    "key",
    "password",
    "session",
    "credential",
    "signature",
    "auth",
];

#[derive(Clone)]
pub(crate) struct LayerConfig {
    pub(crate) writer: AuditWriter,
    pub(crate) resolver: ClientAddrResolver,
    pub(crate) clock: SharedClock,
    pub(crate) explicit: Explicit,
    pub(crate) raw_path_fallback: bool,
    pub(crate) query_allow: Vec<Box<str>>,
    pub(crate) header_allow: Vec<HeaderName>,
    /// Allowed requests kept, per million (`None` = all).
    pub(crate) sample_ppm: Option<u32>,
    pub(crate) service_name: Option<Arc<str>>,
}

/// The outermost nhi-guard layer: one tamper-evident OCSF record per request.
///
/// Creates the request's [`nhi_guard_core::SecurityContext`] (or finds the one an
/// outer layer created), calls the inner service, and when the inner service is
/// done — with a response, an error, a panic, or because the response future was
/// dropped — reads the final context and hands the record to the
/// [`AuditWriter`]'s queue. Nothing is logged on the request path itself.
///
/// The record shows the route template (axum's `MatchedPath`, or the route a
/// control recorded, or a gRPC call's `/package.Service/Method`), never the raw
/// path unless [`AuditLayer::raw_path_fallback`] is set; no query string unless parameters are allow-listed; no header unless
/// allow-listed; credentials only as fingerprints.
#[derive(Clone)]
pub struct AuditLayer {
    cfg: Arc<LayerConfig>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("writer", &self.cfg.writer)
            .field("raw_path_fallback", &self.cfg.raw_path_fallback)
            .field("query_allow", &self.cfg.query_allow)
            .field("header_allow", &self.cfg.header_allow)
            .field("sample_ppm", &self.cfg.sample_ppm)
            .field("service_name", &self.cfg.service_name)
            .finish_non_exhaustive()
    }
}

impl AuditLayer {
    /// An audit layer sending its records to `writer`.
    pub fn new(writer: AuditWriter) -> Self {
        Self {
            cfg: Arc::new(LayerConfig {
                writer,
                resolver: ClientAddrResolver::new(),
                clock: Arc::new(SystemClock),
                explicit: Explicit::default(),
                raw_path_fallback: false,
                query_allow: Vec::new(),
                header_allow: Vec::new(),
                sample_ppm: None,
                service_name: None,
            }),
        }
    }

    fn cfg(&mut self) -> &mut LayerConfig {
        Arc::make_mut(&mut self.cfg)
    }

    /// How the client address is resolved when this layer creates the context
    /// (trusted proxies).
    #[must_use]
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        let cfg = self.cfg();
        cfg.resolver = resolver;
        cfg.explicit.resolver = true;
        self
    }

    /// The clock that stamps `time` when this layer creates the context.
    #[must_use]
    pub fn clock(mut self, clock: SharedClock) -> Self {
        let cfg = self.cfg();
        cfg.clock = clock;
        cfg.explicit.clock = true;
        self
    }

    /// Takes the stack's clock and resolver for those this layer was not given
    /// (see [`nhi_guard_core::settings`]; the audit layer renders no denial).
    #[must_use]
    pub fn inherit(mut self, stack: &LayerSettings) -> Self {
        let c = self.cfg();
        c.explicit.fill(stack, &mut c.clock, &mut c.resolver, None);
        self
    }

    /// The client-address resolver set on this layer, if one was.
    pub fn own_client_addr_resolver(&self) -> Option<&ClientAddrResolver> {
        self.cfg.explicit.resolver.then_some(&self.cfg.resolver)
    }

    /// Records the raw path when no route template is known (off by default:
    /// paths may carry identifiers).
    #[must_use]
    pub fn raw_path_fallback(mut self, on: bool) -> Self {
        self.cfg().raw_path_fallback = on;
        self
    }

    /// Keeps the query parameter `name` in `http_request.url.query_string`.
    ///
    /// # Errors
    /// [`ConfigError`] for `allow_query_param` when the name is empty, contains
    /// `&`, `=` or whitespace, or looks like a credential (`token`, `key`, ...).
    pub fn allow_query_param(mut self, name: &str) -> Result<Self, ConfigError> {
        if name.is_empty() || name.contains(['&', '=', '#']) || name.chars().any(char::is_whitespace) {
            return Err(ConfigError::new(
                "audit",
                "allow_query_param",
                format!("{name:?} is not a query parameter name"),
            ));
        }
        if looks_secret(name) {
            return Err(ConfigError::new(
                "audit",
                "allow_query_param",
                format!("{name:?} may carry a credential and is never recorded"),
            ));
        }
        self.cfg().query_allow.push(Box::from(name));
        Ok(self)
    }

    /// Records the request header `name` in `http_request.http_headers`.
    ///
    /// # Errors
    /// [`ConfigError`] for `allow_header` when the name is not a valid header name,
    /// or names a credential-bearing header (`authorization`, `cookie`,
    /// `x-api-key`, anything with `token`, `key`, `secret`, `auth`, ...).
    pub fn allow_header(mut self, name: &str) -> Result<Self, ConfigError> {
        let header = HeaderName::try_from(name).map_err(|_| {
            ConfigError::new("audit", "allow_header", format!("{name:?} is not a header name"))
        })?;
        if looks_secret(header.as_str()) {
            return Err(ConfigError::new(
                "audit",
                "allow_header",
                format!("{name:?} may carry a credential and is never recorded"),
            ));
        }
        if !self.cfg.header_allow.contains(&header) {
            self.cfg().header_allow.push(header);
        }
        Ok(self)
    }

    /// Keeps only a fraction `rate` (0.0 to 1.0) of the records of allowed,
    /// successful requests, chosen by request id. Denials, errors, panics,
    /// cancellations and requests with shadow denials are always recorded. Records
    /// left out are counted ([`crate::AuditStats::sampled_out`], and in checkpoints).
    ///
    /// # Errors
    /// [`ConfigError`] for `sample_allowed` when `rate` is not within 0.0..=1.0.
    pub fn sample_allowed(mut self, rate: f64) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(ConfigError::new(
                "audit",
                "sample_allowed",
                "must be between 0.0 and 1.0",
            ));
        }
        // In range, so the cast is exact enough and cannot overflow.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ppm = (rate * 1_000_000.0).round() as u32;
        self.cfg().sample_ppm = (ppm < 1_000_000).then_some(ppm);
        Ok(self)
    }

    /// The service name shown in `api.service.name`.
    #[must_use]
    pub fn service_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.cfg().service_name = Some(name.into());
        self
    }
}

fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    FORBIDDEN_HEADER_PARTS.iter().any(|p| lower.contains(p))
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit::new(inner, self.cfg.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sink::TracingSink;

    fn layer() -> AuditLayer {
        let (w, _h) = AuditWriter::builder().spawn(TracingSink::new()).unwrap();
        AuditLayer::new(w)
    }

    #[test]
    fn credential_headers_and_params_cannot_be_allow_listed() {
        for h in [
            "Authorization",
            "cookie",
            "x-api-key",
            "proxy-authorization",
            "x-auth-token",
            "set-cookie",
        ] {
            let err = layer().allow_header(h).unwrap_err();
            assert_eq!(err.field(), "allow_header", "{h}");
        }
        for q in [
            "access_token",
            "api_key",
            "apikey",
            "client_secret",
            "sig",
            "x-amz-signature",
        ] {
            let r = layer().allow_query_param(q);
            if q == "sig" {
                assert!(r.is_ok());
            } else {
                assert_eq!(r.unwrap_err().field(), "allow_query_param", "{q}");
            }
        }
        assert!(layer().allow_header("user-agent").is_ok());
        assert_eq!(
            layer().allow_header("bad header").unwrap_err().field(),
            "allow_header"
        );
        assert_eq!(
            layer().allow_query_param("a=b").unwrap_err().field(),
            "allow_query_param"
        );
    }

    #[test]
    fn sampling_rate_is_validated() {
        assert_eq!(layer().sample_allowed(1.5).unwrap_err().field(), "sample_allowed");
        assert_eq!(
            layer().sample_allowed(f64::NAN).unwrap_err().field(),
            "sample_allowed"
        );
        assert_eq!(
            layer().sample_allowed(0.25).unwrap().cfg.sample_ppm,
            Some(250_000)
        );
        assert_eq!(layer().sample_allowed(1.0).unwrap().cfg.sample_ppm, None);
    }
}
