//! [`Audit`]: the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use nhi_guard_core::SecurityContext;
use tower_service::Service;

use crate::event::RequestInfo;
use crate::future::{Guard, ResponseFuture};
use crate::layer::LayerConfig;

/// The service of [`crate::AuditLayer`].
///
/// The audit layer never answers by itself, so the response body is the inner
/// one, unchanged.
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    cfg: Arc<LayerConfig>,
}

impl<S: fmt::Debug> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Audit<S> {
    pub(crate) fn new(inner: S, cfg: Arc<LayerConfig>) -> Self {
        Self { inner, cfg }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Audit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let ctx = SecurityContext::get_or_insert(&mut req, &self.cfg.resolver, &*self.cfg.clock);
        let info = RequestInfo::capture(&req, &self.cfg);
        // Armed before the inner call: a panic in `call` itself is recorded too.
        let mut guard = Guard::new(ctx, info, self.cfg.clone());
        let future = self.inner.call(req);
        guard.set_polling(false);
        ResponseFuture::new(future, guard)
    }
}
