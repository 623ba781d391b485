//! Trailers chosen by a handler. tonic sends a successful unary answer's
//! trailers itself (`grpc-status: 0`) and offers no way to add to them; a
//! handler that must say something in the trailers (offers' fallback marker)
//! puts [`ExtraTrailers`] in its response's extensions, and
//! [`with_extra_trailers`] adds them to the trailers frame on the way out.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};

/// Headers to add to the response's trailers.
#[derive(Debug, Clone, Default)]
pub struct ExtraTrailers(pub HeaderMap);

/// Moves the trailers a handler asked for from the response's extensions
/// into its body, which adds them to the trailers frame. A plain response
/// map (`ServiceBuilder::map_response`): nothing to do before the call.
pub fn with_extra_trailers<B>(mut response: Response<B>) -> Response<WithTrailers<B>> {
    let extra = response.extensions_mut().remove::<ExtraTrailers>().map(|t| t.0);
    response.map(|inner| WithTrailers { inner, extra })
}

pin_project_lite::pin_project! {
    pub struct WithTrailers<B> {
        #[pin]
        inner: B,
        extra: Option<HeaderMap>,
    }
}

impl<B: Default> Default for WithTrailers<B> {
    fn default() -> Self {
        Self { inner: B::default(), extra: None }
    }
}

impl<B: Body> Body for WithTrailers<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) if frame.is_trailers() => match (frame.into_trailers(), this.extra.take()) {
                (Ok(mut trailers), Some(extra)) => {
                    trailers.extend(extra);
                    Some(Ok(Frame::trailers(trailers)))
                }
                (Ok(trailers), None) => Some(Ok(Frame::trailers(trailers))),
                (Err(frame), _) => Some(Ok(frame)),
            },
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
