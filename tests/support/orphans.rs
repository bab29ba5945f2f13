//! The routes and checks of the stable-flags orphan task tests (`orphan_tasks_on_stable*.rs`):
//! plain `tokio::spawn` in handlers, seen by the `TrackingAllocator` through the task's cell,
//! through a real hyper server and client on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use leakwatch::{LeakDetector, LeakKind, LeakReport};

/// What the leaky handlers park, so that the test can let every task go at its end.
#[derive(Clone, Default)]
struct Parked {
    wakers: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>,
    blocking: Arc<Mutex<Vec<std::sync::mpsc::Sender<()>>>>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Parked {
    /// Ends every parked task.
    fn release(&self) {
        self.wakers.lock().unwrap().clear();
        self.blocking.lock().unwrap().clear();
        self.stop.send_replace(true);
    }
}

const PARK_LINE: u32 = line!() + 4;
async fn park(State(p): State<Parked>, Path(_id): Path<u64>) -> &'static str {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    p.wakers.lock().unwrap().push(tx);
    tokio::spawn(async move { rx.await.ok() });
    "parked"
}

const TICKER_LINE: u32 = line!() + 3;
async fn ticker(State(p): State<Parked>, Path(_id): Path<u64>) -> &'static str {
    let stop = p.stop.subscribe();
    tokio::spawn(async move { tick(stop).await });
    "ticking"
}

async fn tick(mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

const BLOCKING_LINE: u32 = line!() + 4;
async fn blocking(State(p): State<Parked>, Path(_id): Path<u64>) -> &'static str {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    p.blocking.lock().unwrap().push(tx);
    tokio::task::spawn_blocking(move || rx.recv().ok());
    "blocked"
}

/// A task tracked by `leakwatch::spawn`: one report, not a second one for its cell.
const WRAPPED_LINE: u32 = line!() + 4;
async fn wrapped(State(p): State<Parked>, Path(_id): Path<u64>) -> &'static str {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    p.wakers.lock().unwrap().push(tx);
    leakwatch::spawn(async move { rx.await.ok() });
    "wrapped"
}

/// A `leakwatch::scoped` future spawned by plain `tokio::spawn`: one report, at `scoped`'s line.
const SCOPED_LINE: u32 = line!() + 4;
async fn scoped(State(p): State<Parked>, Path(_id): Path<u64>) -> &'static str {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    p.wakers.lock().unwrap().push(tx);
    tokio::spawn(leakwatch::scoped(async move { rx.await.ok() }));
    "scoped"
}

/// Clean: a task that ends at once, never awaited.
async fn short(Path(id): Path<u64>) -> &'static str {
    tokio::spawn(async move { id * 2 });
    "short"
}

/// Clean: a `JoinSet` drained before the response.
async fn joined(Path(id): Path<u64>) -> String {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..3 {
        set.spawn(async move { id + i });
    }
    let mut sum = 0;
    while let Some(done) = set.join_next().await {
        sum += done.unwrap();
    }
    sum.to_string()
}

/// Clean: `spawn_blocking` awaited, and a channel (a block of the task cell's alignment that is
/// no task) made and dropped per request.
async fn awaited(Path(id): Path<u64>) -> String {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(4);
    let doubled = tokio::task::spawn_blocking(move || id * 2).await.unwrap();
    tx.send(doubled).await.unwrap();
    rx.recv().await.unwrap().to_string()
}

fn app(detector: &LeakDetector, parked: Parked) -> Router {
    Router::new()
        .route("/park/{id}", get(park))
        .route("/ticker/{id}", get(ticker))
        .route("/blocking/{id}", get(blocking))
        .route("/wrapped/{id}", get(wrapped))
        .route("/scoped/{id}", get(scoped))
        .route("/short/{id}", get(short))
        .route("/joined/{id}", get(joined))
        .route("/awaited/{id}", get(awaited))
        .with_state(parked)
        .layer(detector.layer())
}

/// Sends `n` requests to each of `routes` (a real client, one connection at a time).
async fn drive(addr: std::net::SocketAddr, routes: &[&str], n: u64) {
    let client = super::client();
    for route in routes {
        for i in 0..n {
            let uri: http::Uri = format!("http://{addr}/{route}/{i}").parse().unwrap();
            let response = client
                .request(
                    http::Request::get(uri)
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert!(response.status().is_success());
            super::read_body(response).await;
        }
    }
}

/// Sweeps until no report changes: a task that ends just after its response is not reported.
async fn settle(detector: &LeakDetector) -> Vec<LeakReport> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    detector.sweep_now();
    detector.leaks()
}

fn orphans_of(reports: &[LeakReport], route: &str) -> Vec<LeakReport> {
    reports
        .iter()
        .filter(|r| r.kind == LeakKind::OrphanTask && r.route == route)
        .cloned()
        .collect()
}

pub async fn leaks_are_reported_at_their_spawn_lines() {
    let (detector, _) = super::detector();
    let parked = Parked::default();
    let (addr, server) = super::serve(app(&detector, parked.clone())).await;
    drive(
        addr,
        &["park", "ticker", "blocking", "wrapped", "scoped"],
        3,
    )
    .await;
    let reports = settle(&detector).await;
    // Seen through its cell, or tracked by leakwatch's wrapper (which says it is running).
    for (route, line, cell) in [
        ("/park/{id}", PARK_LINE, true),
        ("/ticker/{id}", TICKER_LINE, true),
        ("/blocking/{id}", BLOCKING_LINE, true),
        ("/wrapped/{id}", WRAPPED_LINE, false),
        ("/scoped/{id}", SCOPED_LINE, false),
    ] {
        let orphans = orphans_of(&reports, route);
        assert_eq!(orphans.len(), 3, "{route}: {reports:#?}");
        for orphan in &orphans {
            let location = orphan.location.expect("a spawn line");
            assert_eq!(
                (location.file, location.line),
                ("tests/support/orphans.rs", line),
                "{route}: {orphan:#?}"
            );
            assert_eq!(
                orphan.detail.contains("JoinHandle"),
                cell,
                "{}",
                orphan.detail
            );
            assert!(!orphan.request_id.is_empty());
        }
    }
    assert!(
        !reports.iter().any(|r| r.kind != LeakKind::OrphanTask),
        "one cause, one report: {reports:#?}"
    );
    // Once the tasks end, their reports are released.
    parked.release();
    super::wait_until("the tasks end", || {
        detector.sweep_now();
        detector.leaks().is_empty()
    })
    .await;
    server.abort();
}

pub async fn tasks_that_end_or_are_awaited_are_not_reported() {
    let (detector, sink) = super::detector();
    let (addr, server) = super::serve(app(&detector, Parked::default())).await;
    drive(addr, &["short", "joined", "awaited"], 50).await;
    let reports = settle(&detector).await;
    let again = settle(&detector).await;
    assert!(reports.is_empty() && again.is_empty(), "{reports:#?}");
    assert!(
        sink.reports()
            .iter()
            .all(|r| r.kind != LeakKind::OrphanTask),
        "{:#?}",
        sink.reports()
    );
    assert!(
        detector.stats().tracked_tasks <= 1,
        "{:?}",
        detector.stats()
    );
    server.abort();
}
