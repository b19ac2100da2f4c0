//! axum extractors for what the guard layers recorded (feature `axum`).
//!
//! ```
//! use axum::{Router, routing::get};
//! use nhi_guard_core::{Principal, SecurityContext};
//!
//! async fn whoami(principal: Principal) -> String {
//!     format!("{} (owned by {})", principal.client_id(), principal.owner())
//! }
//!
//! async fn maybe(principal: Option<Principal>, ctx: SecurityContext) -> String {
//!     format!("{:?} {}", principal.map(|p| p.client_id().clone()), ctx.request_id())
//! }
//!
//! let app: Router = Router::new().route("/whoami", get(whoami)).route("/maybe", get(maybe));
//! ```

use std::convert::Infallible;
use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::context::{Control, SecurityContext};
use crate::denial::{DefaultRenderer, Denial, Protocol, RenderDenial};
use crate::principal::Principal;

/// The principal of a request, from the identity layer: the `Principal` request
/// extension, else the security context.
fn principal_of(parts: &Parts) -> Option<Principal> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .or_else(|| SecurityContext::from_extensions(&parts.extensions).and_then(SecurityContext::principal))
}

/// Rejection of the [`Principal`] extractor: the request is not authenticated.
/// Renders as a 401 `Bearer` challenge (or gRPC UNAUTHENTICATED).
#[derive(Debug)]
pub struct MissingPrincipal {
    protocol: Protocol,
}

impl fmt::Display for MissingPrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request has no verified principal")
    }
}

impl std::error::Error for MissingPrincipal {}

impl IntoResponse for MissingPrincipal {
    fn into_response(self) -> Response {
        DefaultRenderer::new()
            .render(&Denial::missing_credential(Control::Identity), self.protocol)
            .map(axum::body::Body::from)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = MissingPrincipal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        principal_of(parts).ok_or_else(|| MissingPrincipal {
            protocol: Protocol::of(&parts.headers),
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(principal_of(parts))
    }
}

/// Rejection of the [`SecurityContext`] extractor: no guard layer ran on this
/// route. This is a server misconfiguration, so it renders as a 500 without details.
#[derive(Debug)]
pub struct MissingContext;

impl fmt::Display for MissingContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no nhi-guard layer ran on this route")
    }
}

impl std::error::Error for MissingContext {}

impl IntoResponse for MissingContext {
    fn into_response(self) -> Response {
        tracing::error!(target: "nhi_guard", "SecurityContext extracted on a route without a guard layer");
        http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SecurityContext {
    type Rejection = MissingContext;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        SecurityContext::from_extensions(&parts.extensions)
            .cloned()
            .ok_or(MissingContext)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for SecurityContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(SecurityContext::from_extensions(&parts.extensions).cloned())
    }
}
