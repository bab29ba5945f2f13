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
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Enabled {
            #[pin]
            future: F,
            guard: Option<ScopeGuard>,
        },
        Disabled {
            #[pin]
            future: F,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn enabled(future: F, guard: ScopeGuard) -> Self {
        ResponseFuture {
            kind: Kind::Enabled {
                future,
                guard: Some(guard),
            },
        }
    }

    pub(crate) fn disabled(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Disabled { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Enabled { future, guard } => {
                let result = match guard.as_mut() {
                    Some(g) => ready!(scope::enter(g.slot(), || future.poll(cx))),
                    None => ready!(future.poll(cx)),
                };
                // On error the guard drops here and closes the scope.
                let guard = guard.take();
                Poll::Ready(result.map(|response| response.map(|b| ResponseBody::new(b, guard))))
            }
            KindProj::Disabled { future } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(result.map(|response| response.map(|b| ResponseBody::new(b, None))))
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let enabled = matches!(self.kind, Kind::Enabled { .. });
        f.debug_struct("ResponseFuture")
            .field("enabled", &enabled)
            .finish()
    }
}
