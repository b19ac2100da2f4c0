//! The response future and its drop guard.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Response, StatusCode};
use nhi_guard_core::context::DenialSummary;
use nhi_guard_core::{Denial, SecurityContext};
use pin_project_lite::pin_project;

use crate::event::{AuditEvent, Completion, RequestInfo, sampled_in};
use crate::layer::LayerConfig;
use crate::writer::{Offer, ReserveFuture};

enum State {
    /// The inner service is working.
    Running { ctx: SecurityContext, info: RequestInfo },
    /// The inner service is done; the record waits for room in the queue.
    Waiting {
        // Boxed: the rare path, and the state is moved with the future.
        event: Box<AuditEvent>,
        reserve: ReserveFuture,
    },
    /// The record is in the queue (or deliberately not written).
    Done,
}

/// Writes the record whatever happens: when the response future is dropped
/// before it finished (cancelled), or unwound by a panic of the inner service.
pub(crate) struct Guard {
    state: State,
    /// Set while the inner service runs (`call`, `poll`): still set when the
    /// guard drops means the inner service panicked.
    polling: bool,
    cfg: Arc<LayerConfig>,
}

impl Guard {
    pub(crate) fn new(ctx: SecurityContext, info: RequestInfo, cfg: Arc<LayerConfig>) -> Self {
        Self {
            state: State::Running { ctx, info },
            polling: true,
            cfg,
        }
    }

    pub(crate) fn set_polling(&mut self, on: bool) {
        self.polling = on;
    }

    /// Builds the record; `None` when sampling leaves it out.
    fn complete(
        &mut self,
        completion: Completion,
        status: Option<StatusCode>,
        denial: Option<DenialSummary>,
    ) -> Option<AuditEvent> {
        let State::Running { ctx, info } = std::mem::replace(&mut self.state, State::Done) else {
            return None;
        };
        let event = AuditEvent::build(ctx, info, completion, status, denial, &self.cfg);
        if let Some(ppm) = self.cfg.sample_ppm
            && event.is_sampleable()
            && !sampled_in(event.request_id, ppm)
        {
            self.cfg.writer.count_sampled_out();
            return None;
        }
        Some(event)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let event = match std::mem::replace(&mut self.state, State::Done) {
            State::Done => return,
            State::Waiting { event, .. } => *event,
            running @ State::Running { .. } => {
                self.state = running;
                let completion = if self.polling || std::thread::panicking() {
                    Completion::Panicked
                } else {
                    Completion::Cancelled
                };
                match self.complete(completion, None, None) {
                    Some(ev) => ev,
                    None => return,
                }
            }
        };
        self.cfg.writer.detach(event);
    }
}

pin_project! {
    /// Response future of [`crate::Audit`]: the inner future, then (only when the
    /// queue is full under backpressure) the wait for room in the queue.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        inner: F,
        guard: Guard,
        // Boxed: held only while waiting for room in a full queue.
        output: Option<Box<Result<Response<B>, E>>>,
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.guard.state {
            State::Running { .. } => "running",
            State::Waiting { .. } => "waiting_for_queue",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn new(inner: F, guard: Guard) -> Self {
        Self {
            inner,
            guard,
            output: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let guard = this.guard;
        if let State::Running { .. } = guard.state {
            guard.polling = true;
            let polled = this.inner.poll(cx);
            guard.polling = false;
            let out = match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(out) => out,
            };
            let (completion, status, denial) = match &out {
                Ok(res) => (
                    Completion::Response,
                    Some(res.status()),
                    res.extensions().get::<Denial>().map(Denial::summary),
                ),
                Err(_) => (Completion::HandlerError, None, None),
            };
            let Some(event) = guard.complete(completion, status, denial) else {
                return Poll::Ready(out);
            };
            match guard.cfg.writer.offer(event) {
                Offer::Done => return Poll::Ready(out),
                Offer::Wait(event) => {
                    guard.state = State::Waiting {
                        event: Box::new(event),
                        reserve: guard.cfg.writer.reserve(),
                    };
                    *this.output = Some(Box::new(out));
                }
            }
        }
        if let State::Waiting { reserve, .. } = &mut guard.state {
            let permit = match reserve.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(p) => p,
            };
            if let State::Waiting { event, .. } = std::mem::replace(&mut guard.state, State::Done) {
                guard.cfg.writer.finish_wait(permit, *event);
            }
        }
        match this.output.take() {
            Some(out) => Poll::Ready(*out),
            // Polled again after completion: the record is written; there is no
            // response left to give.
            None => Poll::Pending,
        }
    }
}
