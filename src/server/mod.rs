//! Middleware that reports objects and allocations that outlive their request.
//!
//! [`LeakLayer`] (from [`LeakDetector::layer`](crate::LeakDetector::layer)) opens a *scope* for
//! every request: an id, the request id, the method and the route template. While the request's
//! future, its response body, and the tasks it spawns through [`crate::spawn`] are polled, that
//! scope is current, so whatever they [`spawn`](crate::spawn), [`watch`](crate::watch) or receive
//! as a body is registered under it. After the scope closes and the grace period passes, the
//! sweeper reports whatever is still alive.
//!
//! # Example
//!
//! A handler that keeps an `Arc` past its response is reported once:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! static KEPT: Mutex<Vec<Arc<String>>> = Mutex::new(Vec::new());
//!
//! let detector = leakwatch::LeakDetector::builder()
//!     .grace(Duration::ZERO)
//!     .confirm_sweeps(0)
//!     .route_fn(|_, _| Some("/session"))
//!     .build()
//!     .unwrap();
//! let service = ServiceBuilder::new()
//!     .layer(detector.layer())
//!     .service_fn(|_req: http::Request<leakwatch::server::RequestBody<String>>| async {
//!         let session = Arc::new(String::from("per-request state"));
//!         leakwatch::watch(&session);
//!         KEPT.lock().unwrap().push(session); // outlives the request
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//!
//! let response = service.oneshot(http::Request::new(String::new())).await.unwrap();
//! drop(response);
//!
//! let reports = detector.sweep_now();
//! assert_eq!(reports.len(), 1);
//! assert_eq!(reports[0].kind, leakwatch::LeakKind::WatchedObject);
//! assert_eq!(reports[0].route, "/session");
//! assert_eq!(reports[0].type_name, Some("alloc::string::String"));
//! # }
//! ```
//!
//! With axum, add the layer with `Router::layer` so that it runs after routing and sees the
//! route template (`MatchedPath`); handlers keep receiving `axum::body::Body`:
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # fn build() {
//! use axum::{routing::get, Router};
//!
//! let detector = leakwatch::LeakDetector::builder().build().unwrap();
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "hello" }))
//!     .layer(detector.layer());
//! # }
//! ```
//!
//! # When a scope ends
//!
//! A scope closes when the response body reaches its end or is dropped — not when the handler's
//! future returns, so a streaming response keeps its request open — or when the response future
//! fails, panics or is dropped (a client that disconnects). Closing takes one uncontended lock:
//! a request that left nothing behind is forgotten there and then (its scope goes back to a
//! pool, and the clock is not even read), and the sweeper does all the reporting on the others.
//!
//! # Cost when disabled
//!
//! A request to an [ignored route](crate::LeakDetectorBuilder::ignore_route), or one arriving
//! while the registry is full, takes a path that allocates nothing and wraps bodies without
//! tracking them. On a tracked request the layer costs a scope (reused from a pool when one is
//! free, else one small allocation) kept in its thread's shard of the registry while the
//! request is in flight, and for a request body that is not empty one more small allocation and
//! registry insert.

mod body;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;
pub use self::layer::LeakLayer;
pub use self::service::LeakService;
pub use crate::request::body::TrackedBody as RequestBody;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::{assert_send, assert_sync};

    #[test]
    fn public_types_are_send_and_sync() {
        type Fut = std::future::Ready<Result<http::Response<String>, ()>>;
        assert_send::<LeakLayer>();
        assert_sync::<LeakLayer>();
        assert_send::<LeakService<()>>();
        assert_sync::<LeakService<()>>();
        assert_send::<ResponseFuture<Fut>>();
        assert_sync::<ResponseFuture<Fut>>();
        assert_send::<ResponseBody<String>>();
        assert_sync::<ResponseBody<String>>();
        assert_send::<RequestBody<String>>();
        assert_sync::<RequestBody<String>>();
        assert_send::<crate::LeakDetector>();
        assert_sync::<crate::LeakDetector>();
        assert_send::<crate::Scoped<Fut>>();
        assert_sync::<crate::Scoped<Fut>>();
    }
}
