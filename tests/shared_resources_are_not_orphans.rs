//! What a library keeps on purpose is never blamed on the request that happened to create it,
//! and every seeded leak is still found.
//!
//! A real axum service on 127.0.0.1, built from the crates services use — a shared `reqwest`
//! client proxying to a local upstream, a token refresher started by the first request inside
//! a `OnceCell` initialiser, a `tower::buffer::Buffer` built inside a request — with
//! the exact `TrackingAllocator` — which sees every plain `tokio::spawn` of a request through the
//! task's cell on stable flags — and, built with `--cfg tokio_unstable`, `instrument_runtime`
//! too, driven by a real client under steady traffic (batches, a sweep after each), on a
//! current-thread and on a 4-worker runtime. The clean routes get no report of any kind; a
//! plain `tokio::spawn` awaiting a `oneshot` whose sender is parked in a global map, and a task
//! a dependency's helper spawns per request and never ends, are reported as `OrphanTask`s of
//! their routes; the refresher nothing declares stays suspected (a worker started once).
#![cfg(feature = "axum")]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::rt::Executor;
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState, TrackingAllocator};
use tokio::sync::{oneshot, OnceCell};
use tower::{Service, ServiceExt};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::system();

/// Requests per batch, and batches per route: a sweep after each batch.
const BATCH: usize = 16;
const BATCHES: usize = 16;
/// `memory_window`: growth is judged window by window of this many requests.
const WINDOW: u64 = 32;

/// A `Buffer` in front of a service.
type Buffered = tower::buffer::Buffer<Request<()>, <Echo as Service<Request<()>>>::Future>;

#[derive(Clone, Copy)]
struct Echo;

impl Service<Request<()>> for Echo {
    type Response = String;
    type Error = Infallible;
    type Future = std::future::Ready<Result<String, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(String::from("echo")))
    }
}

/// A refresher: wakes every 10 ms for ever, as a real one would every few minutes.
async fn refresher() {
    let mut every = tokio::time::interval(Duration::from_millis(10));
    loop {
        every.tick().await;
    }
}

/// The service's shared state: what a real service keeps in statics, made anew for each
/// runtime of the test (a runtime's tasks end with it).
#[derive(Clone)]
struct App {
    client: reqwest::Client,
    upstream: String,
    /// A token refreshed in the background, started by the first request that needs it.
    token: Arc<OnceCell<String>>,
    /// The same, without saying in code that the refresher is the process's.
    token_undeclared: Arc<OnceCell<String>>,
    /// A `Buffer` in front of a service, built by the first request that needs it.
    buffer: Arc<OnceLock<Buffered>>,
    /// Senders parked by the leaking route: their receivers' tasks wait for ever.
    parked: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
}

async fn proxy(State(app): State<App>) -> Result<String, StatusCode> {
    let response = app.client.get(&app.upstream).send().await;
    let response = response.map_err(|_| StatusCode::BAD_GATEWAY)?;
    response.text().await.map_err(|_| StatusCode::BAD_GATEWAY)
}

async fn token(State(app): State<App>) -> String {
    // The refresher belongs to the process: its initialiser runs detached from the request.
    let init = || {
        leakwatch::detach(async {
            tokio::spawn(refresher());
            String::from("token")
        })
    };
    app.token.get_or_init(init).await.clone()
}

async fn token_undeclared(State(app): State<App>) -> String {
    let init = || async {
        // Nothing says this task is the process's: the request that started it is blamed.
        tokio::spawn(refresher()); // undeclared
        String::from("token")
    };
    app.token_undeclared.get_or_init(init).await.clone()
}

async fn buffered(State(app): State<App>) -> String {
    // `Buffer::new` spawns its worker (inside tower) while this request is current.
    let buffer = app
        .buffer
        .get_or_init(|| tower::buffer::Buffer::new(Echo, 16));
    buffer.clone().oneshot(Request::new(())).await.unwrap()
}

async fn user_leak(State(app): State<App>, Path(id): Path<u64>) -> &'static str {
    let (sender, receiver) = oneshot::channel::<()>();
    app.parked.lock().unwrap().insert(id, sender);
    // Waits for a sender that is kept for ever: a goroutine-style leak.
    tokio::spawn(async move { receiver.await.ok() });
    "waiting"
}

async fn dependency_leak() -> &'static str {
    // A dependency's helper that spawns a task per call and never ends it: its spawn location
    // is in hyper-util, so it is judged by growth, and it grows.
    hyper_util::rt::TokioExecutor::new().execute(std::future::pending::<()>());
    "spawned"
}

fn app(detector: &LeakDetector, state: App) -> Router {
    Router::new()
        .route("/proxy", get(proxy))
        .route("/token", get(token))
        .route("/token-undeclared", get(token_undeclared))
        .route("/buffered", get(buffered))
        .route("/leak/user/{id}", get(user_leak))
        .route("/leak/dependency/{id}", get(dependency_leak))
        .with_state(state)
        .layer(detector.layer())
}

/// Serves the app and an upstream on 127.0.0.1, sends `BATCHES` batches of `BATCH` requests to
/// every route through a real client, sweeping after each batch; returns every report.
async fn drive() -> (LeakDetector, Vec<LeakReport>) {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .memory_window(WINDOW)
        .build()
        .unwrap();
    let upstream = Router::new().route("/data", get(|| async { "upstream data" }));
    let (upstream_addr, upstream_server) = support::serve(upstream).await;
    let state = App {
        client: reqwest::Client::new(),
        upstream: format!("http://{upstream_addr}/data"),
        token: Arc::default(),
        token_undeclared: Arc::default(),
        buffer: Arc::default(),
        parked: Arc::default(),
    };
    let (addr, server) = support::serve(app(&detector, state)).await;
    let client = support::client();
    let paths = [
        "/proxy",
        "/token",
        "/token-undeclared",
        "/buffered",
        "/leak/user",
        "/leak/dependency",
    ];
    let mut next = 0u64;
    for _ in 0..BATCHES {
        for _ in 0..BATCH {
            for path in paths {
                next += 1;
                let path = if path.starts_with("/leak/") {
                    format!("{path}/{next}")
                } else {
                    path.to_owned()
                };
                let uri = format!("http://{addr}{path}");
                let request = Request::get(uri).body(Full::default()).unwrap();
                let response = client.request(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{path}");
                support::read_body(response).await;
            }
        }
        // A pause between batches: the sweeper judges them, as a timer would.
        support::wait_until("the batch's requests closed", || {
            detector.stats().requests_in_flight == 0
        })
        .await;
        detector.sweep_now();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    detector.sweep_now();
    server.abort();
    upstream_server.abort();
    let reports = sink.reports();
    (detector, reports)
}

/// The line of this file that holds `marker`.
fn line_of(marker: &str) -> u32 {
    let source = include_str!("shared_resources_are_not_orphans.rs");
    let index = source
        .lines()
        .position(|line| line.contains(marker) && !line.contains("line_of"));
    index.expect("the marker is in this file") as u32 + 1
}

fn on_route<'a>(reports: &'a [LeakReport], route: &str) -> Vec<&'a LeakReport> {
    reports.iter().filter(|r| r.route == route).collect()
}

fn run(flavor: &str) {
    #[cfg(tokio_unstable)]
    let runtime = support::hooked_runtime(flavor);
    #[cfg(not(tokio_unstable))]
    let runtime = support::runtime_builder(flavor).build().unwrap();
    let (detector, reports) = runtime.block_on(drive());
    let list = |reports: &[&LeakReport]| {
        reports
            .iter()
            .map(|r| format!("{r}"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Clean: the pool's connection tasks, the detached refresher, the buffer's worker.
    for route in ["/proxy", "/token", "/buffered"] {
        let found = on_route(&reports, route);
        assert!(
            found.is_empty(),
            "{flavor}: {route} reported:\n{}",
            list(&found)
        );
    }

    // The seeded leaks, with the right kind, route and location.
    // (What the parked channels and tasks hold is rightly `RetainedMemory` of the route too.)
    let user = on_route(&reports, "/leak/user/{id}");
    let orphans: Vec<&LeakReport> = user
        .iter()
        .copied()
        .filter(|r| r.kind == LeakKind::OrphanTask)
        .collect();
    let at_line = line_of("receiver.await.ok()");
    assert!(
        orphans
            .iter()
            .all(|r| r.location.is_some_and(|l| l.line == at_line)),
        "{flavor}: {}",
        list(&orphans)
    );
    assert_eq!(
        orphans.len(),
        BATCH * BATCHES,
        "{flavor}: {}",
        list(&orphans)
    );
    let others = user.iter().filter(|r| r.kind != LeakKind::OrphanTask);
    assert!(
        others.clone().all(|r| r.kind == LeakKind::RetainedMemory),
        "{flavor}: {}",
        list(&others.copied().collect::<Vec<_>>())
    );

    // (The tasks' own futures, allocated as the requests spawned them, are rightly
    // `RetainedMemory` of the route too.)
    let dependency: Vec<&LeakReport> = on_route(&reports, "/leak/dependency/{id}")
        .into_iter()
        .filter(|r| r.kind == LeakKind::OrphanTask)
        .collect();
    assert_eq!(
        dependency.len(),
        1,
        "{flavor}: one report for the group: {}",
        list(&dependency)
    );
    let report = dependency[0];
    assert_eq!(report.kind, LeakKind::OrphanTask);
    let location = report.location.expect("the spawn's location");
    assert!(
        location.file.contains("hyper-util"),
        "{flavor}: {location:?}"
    );
    assert!(
        report.detail.contains("grows with the route's requests"),
        "{}",
        report.detail
    );

    // Without `detach`, the refresher is suspected of the one request that started it — never
    // confirmed, since no other request leaves one: `detach` says what the rules cannot know.
    let undeclared = on_route(&reports, "/token-undeclared");
    assert_eq!(undeclared.len(), 1, "{flavor}: {}", list(&undeclared));
    assert_eq!(undeclared[0].kind, LeakKind::OrphanTask);
    assert_eq!(undeclared[0].state, LeakState::Suspected);
    let at_line = line_of("tokio::spawn(refresher()); // undeclared");
    assert_eq!(undeclared[0].location.unwrap().line, at_line);

    // Nothing else anywhere.
    let routes = [
        "/proxy",
        "/token",
        "/token-undeclared",
        "/buffered",
        "/leak/user/{id}",
        "/leak/dependency/{id}",
    ];
    let other: Vec<&LeakReport> = reports
        .iter()
        .filter(|r| !routes.contains(&r.route.as_str()))
        .collect();
    assert!(other.is_empty(), "{flavor}: {}", list(&other));
    drop(detector);
}

#[test]
fn shared_resources_are_not_blamed_and_leaks_are_found() {
    run("current_thread");
}

#[test]
fn the_same_on_four_workers() {
    run("multi_thread");
}
