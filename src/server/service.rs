use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::RequestBody;
use super::{ResponseBody, ResponseFuture};
use crate::engine::Engine;
use crate::request::current::ScopeGuard;
use crate::request::liveness::Liveness;

/// Middleware that opens a request scope for every request, tracks the request body and what the
/// handler spawns or watches, and closes the scope when the response body ends or is dropped.
///
/// It never changes a request, a response, an error or a status: the inner service sees the
/// same request with its body wrapped in a [`RequestBody`] that forwards every frame unbuffered,
/// and the response body is wrapped in a [`ResponseBody`] that does the same.
///
/// Made by [`LeakLayer`](super::LeakLayer) (from [`LeakDetector::layer`](crate::LeakDetector::layer)). See the
/// [module docs](crate::server) for an example.
#[derive(Clone)]
pub struct LeakService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> LeakService<S> {
    pub(crate) fn new(inner: S, engine: Arc<Engine>) -> Self {
        LeakService { inner, engine }
    }

    define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LeakService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(scope) = self.engine.open_scope(&request) else {
            let request = request.map(RequestBody::untracked);
            return ResponseFuture::new(self.inner.call(request), None);
        };
        let (parts, body) = request.into_parts();
        let (body, state) = RequestBody::tracked(body);
        if let Some(state) = state {
            scope.track(Liveness::Body(state), None, None);
        }
        let request = Request::from_parts(parts, body);
        let mut guard = ScopeGuard::new(scope);
        let inner = &mut self.inner;
        let future = guard.enter(|| inner.call(request));
        ResponseFuture::new(future, Some(guard))
    }
}

impl<S: fmt::Debug> fmt::Debug for LeakService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
