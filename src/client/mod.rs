//! Middleware for outgoing calls: upstream response bodies kept or dropped unread.
//!
//! [`ClientLeakLayer`] (from [`LeakDetector::client_layer`](crate::LeakDetector::client_layer))
//! goes in front of an HTTP client — hyper-util's legacy `Client`, or any
//! `Service<http::Request<B>>` answering `http::Response`s. It opens one scope per call, tracks
//! the upstream's response body, and reports:
//!
//! - [`RetainedBody`](crate::LeakKind::RetainedBody): the body is still alive after the server
//!   request that made the call finished (and the grace period passed) — moved into a task or a
//!   global, it holds the upstream connection;
//! - [`UnconsumedBody`](crate::LeakKind::UnconsumedBody): the body was dropped with data left
//!   unread, so its connection cannot go back to the client's pool.
//!
//! Reports name the upstream ([`LeakReport::upstream`](crate::LeakReport::upstream)) by method
//! and host only — never its path or query — and carry the route, method, request id and trace
//! of the server request that made the call. A call made outside any request is reported under
//! the route [`route::CLIENT`](crate::route::CLIENT); only `UnconsumedBody` applies to it (it has
//! no request to outlive).
//!
//! For `reqwest`, the client most services use, the same comes as a `reqwest-middleware`
//! middleware (feature `reqwest`): `ReqwestMiddleware`, from
//! `LeakDetector::reqwest_middleware`.
//!
//! The call's future runs in its own scope, not in the request's: the client's own work — the
//! connection tasks it spawns, the buffers of its pool — belongs to the client, so it is neither
//! tracked as the request's tasks (with the runtime's hooks) nor counted as the request's memory.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//!
//! let detector = leakwatch::LeakDetector::builder().build().unwrap();
//! let client = ServiceBuilder::new()
//!     .layer(detector.client_layer())
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
//! // `client.oneshot(request)` answers `http::Response<leakwatch::client::ResponseBody<Incoming>>`.
//! # drop(client);
//! # }
//! ```

mod body;
mod future;
mod layer;
mod service;

cfg_feature! {
    "reqwest",
    mod reqwest;
    pub use self::reqwest::ReqwestMiddleware;
}

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;
pub use self::layer::ClientLeakLayer;
pub use self::service::ClientLeakService;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::{assert_send, assert_sync};

    #[test]
    fn public_types_are_send_and_sync() {
        type Fut = std::future::Ready<Result<http::Response<String>, ()>>;
        assert_send::<ClientLeakLayer>();
        assert_sync::<ClientLeakLayer>();
        assert_send::<ClientLeakService<()>>();
        assert_sync::<ClientLeakService<()>>();
        assert_send::<ResponseFuture<Fut>>();
        assert_sync::<ResponseFuture<Fut>>();
        assert_send::<ResponseBody<String>>();
        assert_sync::<ResponseBody<String>>();
    }
}
