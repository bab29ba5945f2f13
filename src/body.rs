//! Tracked request bodies.
//!
//! [`RequestBody`] wraps the body a request arrives with. It forwards every frame as it comes —
//! nothing is buffered — and records, in the detector's own small state, how many bytes were read,
//! whether the end of the stream was reached and when the body was dropped. From that the sweeper
//! tells:
//!
//! - [`UnconsumedBody`](crate::LeakKind::UnconsumedBody): dropped before its end with data left;
//! - [`RetainedBody`](crate::LeakKind::RetainedBody): still alive after the request finished.
//!
//! Bodies that are empty from the start (a `GET` without content) are not tracked at all.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What the detector knows about one request body.
#[derive(Debug)]
pub(crate) struct BodyState {
    alive: AtomicBool,
    unconsumed: AtomicBool,
    bytes_read: AtomicU64,
    /// The exact length announced when the body was wrapped, if any.
    expected: Option<u64>,
}

impl BodyState {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// `true` once the body was dropped before its end.
    pub(crate) fn was_unconsumed(&self) -> bool {
        self.unconsumed.load(Ordering::Acquire)
    }

    /// A sentence on how much of the body was read, for reports.
    pub(crate) fn describe(&self) -> String {
        let read = self.bytes_read.load(Ordering::Relaxed);
        match self.expected {
            Some(expected) => format!("{read} of {expected} body bytes read"),
            None => format!("{read} body bytes read, length unknown"),
        }
    }
}

/// Updates the shared state from the body's own thread; marks it dropped on drop.
struct BodyTracker {
    state: Arc<BodyState>,
    bytes_read: u64,
    finished: bool,
}

impl Drop for BodyTracker {
    fn drop(&mut self) {
        if !self.finished {
            self.state.unconsumed.store(true, Ordering::Relaxed);
        }
        self.state.alive.store(false, Ordering::Release);
    }
}

pin_project! {
    /// Request body handed to the inner service by [`LeakService`](crate::LeakService).
    ///
    /// It forwards frames unchanged and unbuffered, along with `is_end_stream` and `size_hint`.
    /// Under axum, the router boxes it into `axum::body::Body`, so handlers see the usual type.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        tracker: Option<BodyTracker>,
    }
}

impl<B: Body> RequestBody<B> {
    /// Wraps a body without tracking it.
    pub(crate) fn untracked(inner: B) -> Self {
        RequestBody {
            inner,
            tracker: None,
        }
    }

    /// Wraps a body and returns the state to register, or `None` when the body is already at
    /// its end (nothing to consume, nothing worth tracking).
    pub(crate) fn tracked(inner: B) -> (Self, Option<Arc<BodyState>>) {
        if inner.is_end_stream() {
            return (Self::untracked(inner), None);
        }
        let state = Arc::new(BodyState {
            alive: AtomicBool::new(true),
            unconsumed: AtomicBool::new(false),
            bytes_read: AtomicU64::new(0),
            expected: inner.size_hint().exact(),
        });
        let body = RequestBody {
            inner,
            tracker: Some(BodyTracker {
                state: state.clone(),
                bytes_read: 0,
                finished: false,
            }),
        };
        (body, Some(state))
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(tracker) = this.tracker.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        tracker.bytes_read += data.remaining() as u64;
                        tracker
                            .state
                            .bytes_read
                            .store(tracker.bytes_read, Ordering::Relaxed);
                    }
                    if this.inner.is_end_stream() {
                        tracker.finished = true;
                    }
                }
                // The end, or an error (the client went away): nothing is left to consume.
                None | Some(Err(_)) => tracker.finished = true,
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

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("tracked", &self.tracker.is_some())
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
        let (body, state) = RequestBody::tracked(Full::new(Bytes::from_static(b"hello")));
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
        let (body, state) = RequestBody::tracked(Full::new(Bytes::from(vec![1u8; 64])));
        let state = state.unwrap();
        assert!(state.is_alive());
        drop(body);
        assert!(!state.is_alive());
        assert!(state.was_unconsumed());
        assert_eq!(state.describe(), "0 of 64 body bytes read");
    }

    #[test]
    fn empty_bodies_are_not_tracked() {
        let (body, state) = RequestBody::tracked(Empty::<Bytes>::new());
        assert!(state.is_none());
        assert!(body.is_end_stream());
    }
}
