//! [`ClientLeakService`]: one scope per outgoing call.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::{ResponseBody, ResponseFuture};
use crate::engine::Engine;
use crate::request::current::ScopeGuard;

/// Wraps an HTTP client: opens a scope per call and tracks the upstream's response body. Made by
/// [`ClientLeakLayer`](super::ClientLeakLayer); see [`crate::client`].
#[derive(Clone)]
pub struct ClientLeakService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> ClientLeakService<S> {
    pub(crate) fn new(inner: S, engine: Arc<Engine>) -> Self {
        ClientLeakService { inner, engine }
    }

    define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientLeakService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(scope) = self.engine.open_call_scope(&request) else {
            return ResponseFuture::new(self.inner.call(request), None);
        };
        let mut guard = ScopeGuard::new(scope);
        let inner = &mut self.inner;
        let future = guard.enter(|| inner.call(request));
        ResponseFuture::new(future, Some(guard))
    }
}

impl<S: fmt::Debug> fmt::Debug for ClientLeakService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLeakService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
