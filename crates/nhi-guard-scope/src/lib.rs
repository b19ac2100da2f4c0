//! Per-route least privilege for machine-to-machine APIs.
//!
//! [`ScopeLayer`] checks the verified [`Principal`](nhi_guard_core::Principal) of
//! every request against the scopes its route requires:
//!
//! - a [`Policy`] table maps methods and path patterns (literal segments,
//!   `{param}` captures, a trailing `*` / `{*rest}`) to a [`Require`]ment:
//!   `all_of` / `any_of` scopes, authenticated-only, or public; the most specific
//!   rule wins, and two equally specific overlapping rules fail the build naming
//!   both (see [`policy`]);
//! - routes outside the policy are denied by default ([`Fallback`]);
//! - per-route requirements for axum's `route_layer` and for tonic services
//!   ([`ScopeLayer::require`], [`ScopeLayer::for_route`]); gRPC methods are
//!   plain paths (`/package.Service/Method`, see [`PolicyBuilder::grpc`]);
//! - refusals: 401 with a bare `Bearer` challenge without a principal; 403 with
//!   `WWW-Authenticate: Bearer realm="...", error="insufficient_scope", ...,
//!   scope="<required>"` and a problem+json body naming the missing scopes; gRPC
//!   `UNAUTHENTICATED` / `PERMISSION_DENIED`;
//! - request paths a server could read differently from the policy (dot
//!   segments, `//`, `\`, encoded `/`, `\` or unreserved characters) are refused
//!   with 400 `request_target_ambiguous` before the policy is consulted (gRPC
//!   `INVALID_ARGUMENT`; see [`target`], [`ScopeLayer::path_check`]);
//! - shadow mode records would-be denials and lets requests through;
//! - every decision records the route template and the
//!   [`ScopeOutcome`](nhi_guard_core::context::ScopeOutcome) in the
//!   [`SecurityContext`](nhi_guard_core::SecurityContext), and scope use / refused
//!   scopes in a [`ScopeUsageStore`], from
//!   which [`report`] builds the least-privilege report (granted scopes never
//!   used, refused attempts).
//!
//! ```
//! use std::sync::Arc;
//! use http::{Method, Request, Response, StatusCode};
//! use nhi_guard_core::registry::{ClientRecord, Tier};
//! use nhi_guard_scope::usage::InMemoryUsageStore;
//! use nhi_guard_core::{CredentialInfo, GuardBody, Principal, ScopeSet};
//! use nhi_guard_scope::{Policy, Require, ScopeLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio_test_block_on(async {
//! let policy = Policy::builder()
//!     .get("/orders/{id}", Require::all_of("orders:read"))
//!     .post("/orders", Require::all_of("orders:write"))
//!     .public(Method::GET, "/health")
//!     .build()?;
//! let usage = Arc::new(InMemoryUsageStore::new());
//! let svc = ServiceBuilder::new()
//!     .layer(ScopeLayer::new(policy).realm("orders-api").usage_store(usage.clone()))
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(()))
//!     }));
//!
//! // The identity layer puts the verified principal into the request.
//! let record = ClientRecord::builder("inventory-sync", "ops@example.com", "Stock sync",
//!         std::time::SystemTime::now() + std::time::Duration::from_secs(86_400))
//!     .scopes(ScopeSet::parse("orders:read")?)
//!     .build()?;
//! let principal = Principal::new(
//!     Arc::new(record),
//!     CredentialInfo::ApiKey { prefix: "sk_live".into() },
//!     ScopeSet::parse("orders:read")?,
//!     Tier::BUILT_IN_DEFAULT,
//! );
//! let request = |method: Method, path: &str| {
//!     let mut req = Request::builder().method(method).uri(path).body(()).unwrap();
//!     req.extensions_mut().insert(principal.clone());
//!     req
//! };
//!
//! let res = svc.clone().oneshot(request(Method::GET, "/orders/42")).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//!
//! let res = svc.clone().oneshot(request(Method::POST, "/orders")).await?;
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! assert_eq!(
//!     res.headers()["www-authenticate"],
//!     r#"Bearer realm="orders-api", error="insufficient_scope", error_description="The access token lacks a required scope", scope="orders:write""#
//! );
//!
//! // Not in the policy: denied by default.
//! let res = svc.clone().oneshot(request(Method::GET, "/customers")).await?;
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! A customised setup: shadow mode while rolling a policy out, authenticated-only
//! fallback, and one route protected on its own:
//!
//! ```
//! use nhi_guard_scope::{Fallback, Policy, Require, ScopeLayer};
//!
//! let layer = ScopeLayer::new(
//!     Policy::builder()
//!         .grpc_service("inventory.v1.Stock", Require::any_of("inventory:read inventory:admin"))
//!         .fallback(Fallback::Authenticated)
//!         .build()
//!         .unwrap(),
//! )
//! .shadow(true);
//! let admin_only = layer.for_route(Require::all_of("admin")).unwrap();
//! # let _ = admin_only;
//! ```

pub mod layer;
pub mod policy;
pub mod report;
pub mod service;
pub mod target;
pub mod usage;

pub use crate::layer::ScopeLayer;
pub use crate::policy::{
    Access, Fallback, Methods, Policy, PolicyBuilder, PolicyError, PolicyErrorKind, Require, Rule,
};
pub use crate::service::Scope;
pub use crate::target::PathCheck;
pub use crate::usage::{InMemoryUsageStore, ScopeUsageStore, SharedUsageStore};
