//! Calls to a running gateway's admin endpoints: `report` and `revoke`.
//!
//! The gateway comes from `--gateway URL` or `NHI_GUARD_GATEWAY`; the operator's
//! credential from `--token-file FILE` or `NHI_GUARD_TOKEN` (a bearer token), or
//! `--api-key-file FILE` or `NHI_GUARD_API_KEY` (sent as `X-Api-Key`), never from
//! the command line, where other users of the machine could read it; extra trust
//! anchors for `https` from `--ca-file FILE` or `NHI_GUARD_CA_FILE` (PEM) beside
//! the platform's. The credential appears in no message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Exit status: the gateway refused the request (a 4xx answer).
pub(crate) const REFUSED: u8 = 4;
/// Exit status: the gateway could not be reached, or failed (5xx, not JSON).
pub(crate) const UNREACHABLE: u8 = 5;
/// Exit status: a file named by an option could not be read.
const UNREADABLE: u8 = 3;

/// How long one call may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A failure: its message (one line, naming the endpoint or file) and exit status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) status: u8,
    /// The gateway's answer, when it answered with an error.
    answer: Option<StatusCode>,
}

impl Failure {
    pub(crate) fn new(status: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status,
            answer: None,
        }
    }
}

/// The options every gateway command takes.
#[derive(Debug, Default)]
pub(crate) struct GatewayOptions {
    pub(crate) gateway: Option<String>,
    pub(crate) token_file: Option<String>,
    pub(crate) api_key_file: Option<String>,
    pub(crate) ca_file: Option<String>,
}

impl GatewayOptions {
    /// Takes `--gateway`, `--token-file`, `--api-key-file` or `--ca-file` with its
    /// value; `false` when `flag` is none of them.
    pub(crate) fn take(&mut self, flag: &str, value: &str) -> bool {
        let slot = match flag {
            "--gateway" => &mut self.gateway,
            "--token-file" => &mut self.token_file,
            "--api-key-file" => &mut self.api_key_file,
            "--ca-file" => &mut self.ca_file,
            _ => return false,
        };
        *slot = Some(value.to_owned());
        true
    }
}

enum Credential {
    Bearer(String),
    ApiKey(String),
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A running gateway, as its operator.
pub(crate) struct Gateway {
    base: String,
    credential: Credential,
    client: HttpsClient,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// One secret read from `file` (surrounding whitespace dropped).
fn secret_file(flag: &str, file: &str) -> Result<String, Failure> {
    let text =
        std::fs::read_to_string(file).map_err(|e| Failure::new(UNREADABLE, format!("{flag} {file}: {e}")))?;
    let secret = text.trim();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err(Failure::new(
            1,
            format!("{flag} {file}: the file must hold one credential on one line"),
        ));
    }
    Ok(secret.to_owned())
}

impl Gateway {
    /// The gateway of `options` (or the environment), checked before any call.
    pub(crate) fn new(options: &GatewayOptions) -> Result<Self, Failure> {
        let usage = |m: String| Failure::new(crate::USAGE, m);
        let base = options
            .gateway
            .clone()
            .or_else(|| env("NHI_GUARD_GATEWAY"))
            .ok_or_else(|| usage("give --gateway URL (or set NHI_GUARD_GATEWAY)".into()))?;
        let uri: Uri = base
            .parse()
            .map_err(|_| usage(format!("--gateway {base:?}: not a URL")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(usage(format!(
                "--gateway {base:?}: give an http:// or https:// URL with a host"
            )));
        }
        let credential = match (&options.token_file, &options.api_key_file) {
            (Some(_), Some(_)) => return Err(usage("give --token-file or --api-key-file, not both".into())),
            (Some(f), None) => Credential::Bearer(secret_file("--token-file", f)?),
            (None, Some(f)) => Credential::ApiKey(secret_file("--api-key-file", f)?),
            (None, None) => match (env("NHI_GUARD_TOKEN"), env("NHI_GUARD_API_KEY")) {
                (Some(t), _) => Credential::Bearer(t.trim().to_owned()),
                (None, Some(k)) => Credential::ApiKey(k.trim().to_owned()),
                (None, None) => {
                    return Err(usage(
                        "the admin endpoints need a credential: --token-file FILE or NHI_GUARD_TOKEN, \
                         or --api-key-file FILE or NHI_GUARD_API_KEY"
                            .into(),
                    ));
                }
            },
        };
        let ca_file = options.ca_file.clone().or_else(|| env("NHI_GUARD_CA_FILE"));
        let client = https_client(ca_file.as_deref())?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            credential,
            client,
        })
    }

    /// `method path` with an optional JSON body: the status and the answer. A
    /// 4xx or 5xx answer is a [`Failure`] naming the endpoint and, for an RFC 9457
    /// problem, its detail.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let url = format!("{}{path}", self.base);
        let endpoint = format!("{method} {url}");
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("nhi-guard/", env!("CARGO_PKG_VERSION")),
            );
        req = match &self.credential {
            Credential::Bearer(t) => req.header(header::AUTHORIZATION, format!("Bearer {t}")),
            Credential::ApiKey(k) => req.header("x-api-key", k.as_str()),
        };
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        // The only way to fail here is a header value the credential cannot be.
        let req = req.body(body).map_err(|_| {
            Failure::new(
                1,
                format!("{endpoint}: the credential is not a valid header value"),
            )
        })?;
        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                Failure::new(UNREACHABLE, format!("{endpoint}: {why}"))
            })?;
            let status = res.status();
            let bytes = http_body_util::Limited::new(res.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| Failure::new(UNREACHABLE, format!("{endpoint}: reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, Failure>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| Failure::new(UNREACHABLE, format!("{endpoint}: no answer within {TIMEOUT:?}")))??;
        if status.is_client_error() || status.is_server_error() {
            let detail = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|p| {
                    let reason = p.get("reason").and_then(Value::as_str).map(str::to_owned);
                    let detail = p.get("detail").and_then(Value::as_str).map(str::to_owned);
                    match (reason, detail) {
                        (Some(r), Some(d)) => Some(format!("{r}: {d}")),
                        (r, d) => r.or(d),
                    }
                })
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            let code = if status.is_client_error() {
                REFUSED
            } else {
                UNREACHABLE
            };
            let mut failure = Failure::new(code, format!("{endpoint}: {status}{detail}"));
            failure.answer = Some(status);
            return Err(failure);
        }
        Ok((status, bytes))
    }

    /// `GET path` as JSON; `None` on 404 when `optional`.
    pub(crate) async fn get_json(&self, path: &str, optional: bool) -> Result<Option<Value>, Failure> {
        match self.call(Method::GET, path, None).await {
            Ok((_, bytes)) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Failure::new(
                    UNREACHABLE,
                    format!("GET {}{path}: the answer is not JSON: {e}", self.base),
                )
            }),
            Err(f) if optional && f.answer == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// The gateway's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }
}

/// An `http`/`https` client trusting the platform's anchors and those of
/// `ca_file`.
fn https_client(ca_file: Option<&str>) -> Result<HttpsClient, Failure> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(file) = ca_file {
        let pem =
            std::fs::read(file).map_err(|e| Failure::new(UNREADABLE, format!("--ca-file {file}: {e}")))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| Failure::new(1, format!("--ca-file {file}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Failure::new(1, format!("--ca-file {file}: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(Failure::new(
                1,
                format!("--ca-file {file}: no BEGIN CERTIFICATE section"),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::new(1, format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(TIMEOUT));
    http.enforce_http(false);
    let connector = HttpsConnector::from((http, Arc::new(tls)));
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
