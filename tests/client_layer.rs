//! The client side: an axum service on 127.0.0.1 calls a real hyper upstream on 127.0.0.1
//! through hyper-util's legacy `Client` wrapped in `client_layer()`. An upstream body kept past
//! the request is a `RetainedBody` (L9), one dropped unread an `UnconsumedBody`, one read is
//! nothing; reports name the upstream's method and host and the server request that made the
//! call, never the upstream's path or query; what the client does during a call (its
//! connection tasks and buffers) is not counted as the request's memory. On both runtime
//! flavours.
#![cfg(feature = "axum")]

mod support;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use leakwatch::client::{ClientLeakService, ResponseBody};
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};
use tower::{ServiceBuilder, ServiceExt};

type Upstream = ClientLeakService<Client<HttpConnector, Full<Bytes>>>;

#[derive(Clone)]
struct App {
    upstream: Upstream,
    upstream_addr: SocketAddr,
    kept: Arc<Mutex<Vec<ResponseBody<Incoming>>>>,
}

impl App {
    /// Calls the upstream, with a secret in the path and the query that must never be reported.
    async fn call(&self) -> Response<ResponseBody<Incoming>> {
        let uri = format!(
            "http://{}/private/SECRETPATH?token=SECRETQUERY",
            self.upstream_addr
        );
        let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
        self.upstream.clone().oneshot(request).await.unwrap()
    }
}

/// The upstream: 64 KiB for every request.
async fn start_upstream() -> SocketAddr {
    let service = tower::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![7u8; 64 * 1024]))))
    });
    support::serve(service).await.0
}

async fn keep(State(app): State<App>) -> &'static str {
    let response = app.call().await;
    app.kept.lock().unwrap().push(response.into_body());
    "kept the upstream's body"
}

async fn drop_unread(State(app): State<App>) -> &'static str {
    drop(app.call().await);
    "dropped the upstream's body unread"
}

async fn read(State(app): State<App>) -> String {
    let body = app.call().await.into_body().collect().await.unwrap();
    format!("read {} bytes", body.to_bytes().len())
}

async fn start(detector: &LeakDetector) -> (SocketAddr, App) {
    let upstream_addr = start_upstream().await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let app = App {
        upstream: ServiceBuilder::new()
            .layer(detector.client_layer())
            .service(client),
        upstream_addr,
        kept: Arc::default(),
    };
    let router = Router::new()
        .route("/proxy/keep", get(keep))
        .route("/proxy/drop", get(drop_unread))
        .route("/proxy/read", get(read))
        .with_state(app.clone())
        .layer(detector.layer());
    (support::serve(router).await.0, app)
}

/// Sends `GET path` with the request id `id` and reads the answer.
async fn get_path(addr: SocketAddr, path: &str, id: &str) -> StatusCode {
    let request = Request::get(format!("http://{addr}{path}"))
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = support::client().request(request).await.unwrap();
    let status = response.status();
    support::read_body(response).await;
    status
}

fn assert_names_only_the_upstream_host(report: &LeakReport, upstream: SocketAddr) {
    let upstream_info = report.upstream.as_ref().expect("an upstream");
    assert_eq!(upstream_info.method, "GET");
    assert_eq!(upstream_info.host, upstream.to_string());
    let shown = format!("{report} {report:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
    assert!(!shown.contains("/private"), "{shown}");
    assert!(
        shown.contains(&format!("upstream=GET {upstream}")),
        "{shown}"
    );
}

/// L9: the caller keeps the upstream's response and never reads its body.
async fn l9_an_upstream_body_kept_after_its_request_is_retained() {
    let (detector, _sink) = support::detector();
    let (addr, app) = start(&detector).await;
    assert_eq!(
        get_path(addr, "/proxy/keep", "req-keep-1").await,
        StatusCode::OK
    );
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert_eq!(report.kind, LeakKind::RetainedBody);
    assert_eq!(report.state, LeakState::Confirmed);
    // The server request that made the call.
    assert_eq!(report.route, "/proxy/keep");
    assert_eq!(report.method, "GET");
    assert_eq!(report.request_id, "req-keep-1");
    assert!(report.closed_at.is_some());
    assert!(
        report.detail.contains("upstream response body still alive"),
        "{report}"
    );
    assert_names_only_the_upstream_host(report, app.upstream_addr);

    // Read and dropped at last: released.
    let kept = app.kept.lock().unwrap().pop().unwrap();
    kept.collect().await.unwrap();
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_eq!(reports[0].state, LeakState::Released);
    assert!(detector.leaks().is_empty());
}

async fn an_upstream_body_dropped_unread_is_unconsumed() {
    let (detector, _sink) = support::detector();
    let (addr, app) = start(&detector).await;
    assert_eq!(
        get_path(addr, "/proxy/drop", "req-drop-1").await,
        StatusCode::OK
    );
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert_eq!(report.kind, LeakKind::UnconsumedBody);
    assert_eq!(report.route, "/proxy/drop");
    assert_eq!(report.request_id, "req-drop-1");
    assert!(
        report.detail.contains("cannot go back to the pool"),
        "{report}"
    );
    assert_names_only_the_upstream_host(report, app.upstream_addr);
}

async fn an_upstream_body_read_to_its_end_is_not_reported() {
    let (detector, _sink) = support::detector();
    let (addr, _app) = start(&detector).await;
    for i in 0..5 {
        let id = format!("req-read-{i}");
        assert_eq!(get_path(addr, "/proxy/read", &id).await, StatusCode::OK);
    }
    let reports = detector.sweep_now();
    assert!(reports.is_empty(), "{reports:#?}");
    detector.assert_no_leaks().await;
    // The calls are not requests: the route counts five requests, none in flight.
    let snapshot = detector.snapshot();
    let route = snapshot
        .stats
        .routes
        .iter()
        .find(|r| r.route == "/proxy/read");
    let route = route.expect("the route is in the snapshot");
    assert_eq!((route.finished_requests, route.requests_in_flight), (5, 0));
    assert_eq!(
        snapshot.stats.routes.len(),
        1,
        "{:#?}",
        snapshot.stats.routes
    );
}

/// The client's connections, their buffers and its pool are allocated while the call's own
/// scope is current: not the route's memory. (Before the call's scope cleared the request's
/// allocator tag, 50 requests here held about 28 KiB: hyper's 8 KiB read buffers, tokio's
/// channel blocks and the connection tasks.)
async fn the_clients_own_memory_is_not_the_requests() {
    let (detector, _sink) = support::detector();
    let (addr, _app) = start(&detector).await;
    for i in 0..50 {
        let id = format!("req-read-{i}");
        assert_eq!(get_path(addr, "/proxy/read", &id).await, StatusCode::OK);
    }
    detector.sweep_now();
    let stats = detector.stats();
    let route = stats.routes.iter().find(|r| r.route == "/proxy/read");
    let live = route.and_then(|r| r.live_bytes);
    let live = live.expect("the route's memory is counted");
    assert!(
        live < 4096,
        "/proxy/read holds {live} bytes after 50 requests"
    );
}

async fn calls_outside_any_request_are_reported_under_the_client_route() {
    let (detector, _sink) = support::detector();
    let (_addr, app) = start(&detector).await;
    // A body held outside any request has no request to outlive: not retained.
    let held = app.call().await;
    assert!(detector.sweep_now().is_empty());
    // Dropped unread: unconsumed.
    drop(held);
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_eq!(reports[0].kind, LeakKind::UnconsumedBody);
    assert_eq!(reports[0].route, leakwatch::route::CLIENT);
    assert!(reports[0].request_id.starts_with("lw-"));
    assert_names_only_the_upstream_host(&reports[0], app.upstream_addr);
    // Read to its end: nothing.
    app.call().await.into_body().collect().await.unwrap();
    assert!(detector.sweep_now().is_empty());
}

async fn an_upstream_body_kept_past_its_unit_is_the_units() {
    let (detector, _sink) = support::detector();
    let (_addr, app) = start(&detector).await;
    let held = detector.scope("consumer/sync", app.call()).await;
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert_eq!(
        (
            report.kind,
            report.route.as_str(),
            report.unit,
            report.method.as_str()
        ),
        (LeakKind::RetainedBody, "consumer/sync", true, "")
    );
    assert_names_only_the_upstream_host(report, app.upstream_addr);
    held.into_body().collect().await.unwrap();
}

on_both_runtimes! {
    an_upstream_body_kept_past_its_unit_is_the_units
        => super::an_upstream_body_kept_past_its_unit_is_the_units;
    l9_an_upstream_body_kept_after_its_request_is_retained
        => super::l9_an_upstream_body_kept_after_its_request_is_retained;
    an_upstream_body_dropped_unread_is_unconsumed
        => super::an_upstream_body_dropped_unread_is_unconsumed;
    an_upstream_body_read_to_its_end_is_not_reported
        => super::an_upstream_body_read_to_its_end_is_not_reported;
    calls_outside_any_request_are_reported_under_the_client_route
        => super::calls_outside_any_request_are_reported_under_the_client_route;
    the_clients_own_memory_is_not_the_requests => super::the_clients_own_memory_is_not_the_requests;
}
