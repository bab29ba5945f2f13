//! [`ResponseBody`]: an upstream's response body, tracked.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::request::body::TrackedBody;
use crate::request::current::ScopeGuard;
use crate::request::liveness::Liveness;

pin_project! {
    /// The response body of a call made through
    /// [`ClientLeakService`](super::ClientLeakService).
    ///
    /// Forwards frames, `is_end_stream` and `size_hint` unchanged and unbuffered, and records
    /// how much was read, whether the end was reached and when it was dropped: still alive
    /// after the server request that made the call finished, it is a
    /// [`RetainedBody`](crate::LeakKind::RetainedBody); dropped before its end with data left,
    /// an [`UnconsumedBody`](crate::LeakKind::UnconsumedBody). A body empty from the start is
    /// not tracked.
    pub struct ResponseBody<B> {
        #[pin]
        inner: TrackedBody<B>,
        // Closes the scope of a call made outside any request when the body is dropped.
        guard: Option<ScopeGuard>,
    }
}

impl<B: Body> ResponseBody<B> {
    /// Wraps the body of the response to a call whose scope `guard` holds (`None`: untracked),
    /// and tracks it.
    pub(crate) fn wrap(
        response: http::Response<B>,
        guard: Option<ScopeGuard>,
    ) -> http::Response<Self> {
        response.map(|inner| Self::new(inner, guard))
    }

    fn new(inner: B, guard: Option<ScopeGuard>) -> Self {
        let Some(guard) = guard else {
            return ResponseBody {
                inner: TrackedBody::untracked(inner),
                guard: None,
            };
        };
        let (inner, state) = TrackedBody::tracked(inner);
        if let (Some(state), Some(scope)) = (state, guard.scope()) {
            scope.track(Liveness::Body(state), None, None);
        }
        ResponseBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
