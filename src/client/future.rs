//! [`ResponseFuture`]: the outgoing call, polled in its own scope.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::UpstreamBody;
use crate::scope::{self, ScopeGuard};

pin_project! {
    /// Response future of [`ClientLeakService`](super::ClientLeakService).
    ///
    /// Polls the client's future with the call's scope current, so that what the client does
    /// meanwhile (spawning connection tasks, growing its pool) is not the request's. Once the
    /// response arrives, its body is tracked as an [`UpstreamBody`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // `None` for an untracked call (registry full).
        guard: Option<ScopeGuard>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, guard: Option<ScopeGuard>) -> Self {
        ResponseFuture { inner, guard }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<UpstreamBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let result = ready!(scope::enter_guarded(this.guard.as_mut(), || inner.poll(cx)));
        // On an error the guard is dropped here: the call is over.
        let guard = this.guard.take();
        Poll::Ready(result.map(|response| response.map(|body| UpstreamBody::new(body, guard))))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("scope", &self.guard)
            .finish()
    }
}
