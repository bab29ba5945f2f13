//! [`ReqwestMiddleware`]: the client side for `reqwest`, through `reqwest-middleware`.

use std::fmt;
use std::sync::Arc;

use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};

use super::{ResponseBody, ResponseFuture};
use crate::engine::Engine;
use crate::request::current::ScopeGuard;

/// A `reqwest-middleware` middleware that tracks each call's response body, the way
/// [`ClientLeakLayer`](super::ClientLeakLayer) does for a tower client; from
/// [`LeakDetector::reqwest_middleware`](crate::LeakDetector::reqwest_middleware) (feature
/// `reqwest`).
///
/// A `reqwest::Response` kept unread past the server request that made the call is a
/// [`RetainedBody`](crate::LeakKind::RetainedBody); one dropped with its body unread is an
/// [`UnconsumedBody`](crate::LeakKind::UnconsumedBody). Both name the upstream by method and
/// host, never its path or query. The call runs in a scope of its own, so the connection tasks
/// and buffers of reqwest's pool are not the request's. The response keeps its status, headers,
/// extensions and URL; its body is forwarded frame by frame, never buffered.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let detector = leakwatch::LeakDetector::builder().build().unwrap();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(detector.reqwest_middleware())
///     .build();
/// // in a handler: `client.get(url).send().await?.text().await?`
/// # drop(client);
/// # }
/// ```
#[derive(Clone)]
pub struct ReqwestMiddleware {
    engine: Arc<Engine>,
}

impl ReqwestMiddleware {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        ReqwestMiddleware { engine }
    }
}

impl fmt::Debug for ReqwestMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestMiddleware").finish_non_exhaustive()
    }
}

/// The URL of a response, carried through the tracked `http::Response` and put back.
#[derive(Clone)]
struct CallUrl(reqwest::Url);

#[async_trait::async_trait]
impl Middleware for ReqwestMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        // The scope is opened from the call's method and URI alone (nothing else is kept).
        let head = http::Request::builder()
            .method(request.method().clone())
            .uri(request.url().as_str())
            .body(());
        let guard = head
            .ok()
            .and_then(|head| self.engine.open_call_scope(&head))
            .map(ScopeGuard::new);
        let call = async move {
            let response = next.run(request, extensions).await?;
            let url = CallUrl(response.url().clone());
            let mut response = http::Response::<reqwest::Body>::from(response);
            response.extensions_mut().insert(url);
            Ok::<_, reqwest_middleware::Error>(response)
        };
        // Polled in the call's scope; on an error the scope closes with the future.
        let response: http::Response<ResponseBody<reqwest::Body>> =
            ResponseFuture::new(call, guard).await?;
        Ok(into_reqwest(response))
    }
}

/// A tracked response as a `reqwest::Response`, with its URL.
fn into_reqwest(response: http::Response<ResponseBody<reqwest::Body>>) -> reqwest::Response {
    let (mut parts, body) = response.into_parts();
    if let Some(CallUrl(url)) = parts.extensions.remove::<CallUrl>() {
        // `reqwest` keeps a response's URL in an extension only its builder can set.
        if let Ok(carrier) = http::Response::builder().url(url).body(()) {
            parts.extensions.extend(carrier.into_parts().0.extensions);
        }
    }
    reqwest::Response::from(http::Response::from_parts(
        parts,
        reqwest::Body::wrap(body),
    ))
}
