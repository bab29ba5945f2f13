use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::request::current;
use crate::request::current::ScopeGuard;

pin_project! {
    /// Response body for [`LeakService`](super::LeakService).
    ///
    /// Forwards frames, `is_end_stream` and `size_hint` unchanged and unbuffered. It polls the
    /// inner body inside the request's scope (a streaming body's tasks belong to the request)
    /// and closes the scope when the body reaches its end or is dropped.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        // `None` for a request that is not tracked, and once the body has ended.
        guard: Option<ScopeGuard>,
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the body of `response`, which the request's scope now follows. A `101 Switching
    /// Protocols` response marks the request upgraded: what it started lives with the
    /// connection.
    pub(crate) fn wrap(response: Response<B>, guard: Option<ScopeGuard>) -> Response<Self> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(scope) = guard.as_ref().and_then(ScopeGuard::scope) {
                scope.mark_upgraded();
            }
        }
        response.map(|inner| ResponseBody { inner, guard })
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let inner = this.inner.as_mut();
        let frame = ready!(current::enter_guarded(this.guard.as_mut(), || inner.poll_frame(cx)));
        if frame.is_none() || this.inner.is_end_stream() {
            // The response is finished: close the scope now, not when the body is dropped.
            this.guard.take();
        }
        Poll::Ready(frame)
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
            .field("scope_open", &self.guard.is_some())
            .finish()
    }
}
