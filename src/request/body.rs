//! The byte-counting body wrapper both sides use: [`TrackedBody`] (public as the server's
//! `RequestBody`, and inside the client's upstream response body).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::request::liveness::{BodyProgress, BodyState};

pin_project! {
    /// Request body handed to the inner service by [`LeakService`](crate::server::LeakService).
    ///
    /// It forwards frames unchanged and unbuffered, along with `is_end_stream` and `size_hint`,
    /// and records how much was read, whether the end was reached and when it was dropped. From
    /// that the sweeper tells an [`UnconsumedBody`](crate::LeakKind::UnconsumedBody) (dropped
    /// before its end with data left) and a [`RetainedBody`](crate::LeakKind::RetainedBody)
    /// (still alive after the request finished). A body empty from the start (a `GET` without
    /// content) is not tracked.
    ///
    /// Under axum, the router boxes it into `axum::body::Body`, so handlers see the usual type.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        progress: Option<BodyProgress>,
    }
}

impl<B: Body> TrackedBody<B> {
    /// Wraps a body without tracking it.
    pub(crate) fn untracked(inner: B) -> Self {
        TrackedBody {
            inner,
            progress: None,
        }
    }

    /// Wraps a body and returns the state to register, or `None` when the body is already at
    /// its end (nothing to consume, nothing worth tracking).
    pub(crate) fn tracked(inner: B) -> (Self, Option<Arc<BodyState>>) {
        if inner.is_end_stream() {
            return (Self::untracked(inner), None);
        }
        let (progress, state) = BodyProgress::new(inner.size_hint().exact());
        let body = TrackedBody {
            inner,
            progress: Some(progress),
        };
        (body, Some(state))
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(progress) = this.progress.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        progress.read(data.remaining() as u64);
                    }
                    if this.inner.is_end_stream() {
                        progress.finish();
                    }
                }
                // The end, or an error (the client went away): nothing is left to consume.
                None | Some(Err(_)) => progress.finish(),
            }
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

impl<B> fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedBody")
            .field("tracked", &self.progress.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};

    #[tokio::test]
    async fn forwards_frames_and_counts_bytes() {
        let (body, state) = TrackedBody::tracked(Full::new(Bytes::from_static(b"hello")));
        let state = state.unwrap();
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert!(!state.is_alive());
        assert!(!state.was_unconsumed());
        assert_eq!(state.describe(), "5 of 5 body bytes read");
    }

    #[test]
    fn dropping_unread_marks_unconsumed() {
        let (body, state) = TrackedBody::tracked(Full::new(Bytes::from(vec![1u8; 64])));
        let state = state.unwrap();
        assert!(state.is_alive());
        drop(body);
        assert!(!state.is_alive());
        assert!(state.was_unconsumed());
        assert_eq!(state.describe(), "0 of 64 body bytes read");
    }

    #[test]
    fn empty_bodies_are_not_tracked() {
        let (body, state) = TrackedBody::tracked(Empty::<Bytes>::new());
        assert!(state.is_none());
        assert!(body.is_end_stream());
    }
}
