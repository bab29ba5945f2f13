use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::ResponseBody;
use crate::scope::{self, ScopeGuard};

pin_project! {
    /// Response future for [`LeakService`](super::LeakService).
    ///
    /// Polls the inner future inside the request's scope. When the response arrives, the scope
    /// moves into its [`ResponseBody`]; when the future fails, panics or is dropped (the client
    /// went away), the scope closes.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // `None` for a request that is not tracked, and once the response went out.
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
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let result = ready!(scope::enter_guarded(this.guard.as_mut(), || inner.poll(cx)));
        // On error the guard drops here and closes the scope.
        let guard = this.guard.take();
        Poll::Ready(result.map(|response| response.map(|body| ResponseBody::new(body, guard))))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("scope", &self.guard)
            .finish()
    }
}
