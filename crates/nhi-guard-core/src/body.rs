//! The response body of every guard layer: the inner service's body, or the small
//! fixed body of a denial.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body or a denial's bytes.
    ///
    /// Guard layers answer denials themselves, so their response body is this
    /// wrapper around the inner body type. It works with axum, tonic and hyper
    /// (`Data = Bytes`, errors of the inner body).
    #[derive(Debug)]
    pub struct GuardBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner {
            #[pin]
            body: B,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> GuardBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body of `data`.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B: Default> Default for GuardBody<B> {
    fn default() -> Self {
        Self::inner(B::default())
    }
}

impl<B> Body for GuardBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn both_variants_stream_their_bytes() {
        let inner: GuardBody<Full<Bytes>> = GuardBody::inner(Full::new(Bytes::from_static(b"inner")));
        assert_eq!(inner.size_hint().exact(), Some(5));
        assert_eq!(inner.collect().await.expect("body").to_bytes(), "inner");
        let full: GuardBody<Full<Bytes>> = GuardBody::full(Bytes::from_static(b"denied"));
        assert_eq!(full.size_hint().exact(), Some(6));
        assert_eq!(full.collect().await.expect("body").to_bytes(), "denied");
        let empty: GuardBody<Full<Bytes>> = GuardBody::full(Bytes::new());
        assert!(empty.is_end_stream());
    }
}
