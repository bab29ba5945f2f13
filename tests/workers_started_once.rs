//! A worker started once is not a leak: the first orphan task from a spawn line whose route
//! shows no second one — a refresher a `OnceCell` initialiser starts, a lazily started worker —
//! stays `Suspected`, never `Confirmed`, however many requests and sweeps follow; a second
//! orphan from the same line, in another request, confirms both. `assert_no_leaks` still
//! fails on the suspected one, and says that `leakwatch::detach` marks a worker started on
//! purpose. Real axum service on 127.0.0.1, real client, both runtime flavours, no hooks.
#![cfg(feature = "axum")]

mod support;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::FutureExt;
use http::Request;
use http_body_util::Full;
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};
use tokio::sync::OnceCell;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// The service's token, fetched once.
type Token = Arc<OnceCell<String>>;

async fn refresh() {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// A token refresher, started by the first request that needs the token (`leakwatch::spawn`).
async fn with_refresher(token: Token) -> String {
    let init = || async {
        leakwatch::spawn(refresh());
        String::from("token")
    };
    token.get_or_init(init).await.clone()
}

/// The same with plain `tokio::spawn`, seen through the task's cell.
async fn with_plain_refresher(token: Token) -> String {
    let init = || async {
        tokio::spawn(refresh());
        String::from("token")
    };
    token.get_or_init(init).await.clone()
}

/// A task per request that never ends: a leak from its second request on.
async fn per_request(n: Arc<AtomicU64>) -> &'static str {
    n.fetch_add(1, Ordering::Relaxed);
    leakwatch::spawn(std::future::pending::<()>());
    "spawned"
}

/// The same with plain `tokio::spawn`.
async fn plain_per_request() -> &'static str {
    tokio::spawn(std::future::pending::<()>());
    "spawned"
}

fn app(detector: &LeakDetector, spawned: Arc<AtomicU64>) -> Router {
    let (token, plain_token) = (Token::default(), Token::default());
    Router::new()
        .route("/token", get(move || with_refresher(token.clone())))
        .route(
            "/token/plain",
            get(move || with_plain_refresher(plain_token.clone())),
        )
        .route("/jobs", get(move || per_request(spawned.clone())))
        .route("/jobs/plain", get(plain_per_request))
        .layer(detector.layer())
}

/// Sends `n` requests to `path` through a real server, sweeping after each; returns every
/// report made.
async fn drive(detector: &LeakDetector, app: &Router, path: &str, n: u64) -> Vec<LeakReport> {
    let (addr, server) = support::serve(app.clone()).await;
    let client = support::client();
    let mut reports = Vec::new();
    for _ in 0..n {
        let request = Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        support::read_body(client.request(request).await.unwrap()).await;
        reports.extend(detector.sweep_now());
    }
    server.abort();
    for _ in 0..3 {
        reports.extend(detector.sweep_now());
    }
    reports
}

/// Runs `check` and returns its panic message, if it panicked.
async fn panic_of(check: impl Future<Output = ()>) -> Option<String> {
    let panic = AssertUnwindSafe(check).catch_unwind().await.err()?;
    let text = panic.downcast_ref::<String>().cloned();
    Some(text.unwrap_or_else(|| panic.downcast_ref::<&str>().unwrap().to_string()))
}

async fn a_refresher_started_once_stays_suspected() {
    for path in ["/token", "/token/plain"] {
        refresher_stays_suspected(path).await;
    }
}

async fn refresher_stays_suspected(path: &str) {
    let (detector, _) = support::detector();
    let app = app(&detector, Arc::default());
    let reports = drive(&detector, &app, path, 20).await;
    let orphans = support::of_kind(&reports, LeakKind::OrphanTask);
    assert_eq!(orphans.len(), 1, "{path}: {reports:#?}");
    assert_eq!(orphans[0].state, LeakState::Suspected);
    assert!(
        orphans[0].detail.contains("leakwatch::detach"),
        "{}",
        orphans[0]
    );
    assert!(orphans[0]
        .location
        .unwrap()
        .file
        .ends_with("workers_started_once.rs"));
    let leaks = detector.leaks();
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].state, LeakState::Suspected, "never confirmed");
    // Tests want every task: the assertion fails on it, and says what marks it on purpose.
    let message = panic_of(detector.assert_no_leaks_within(Duration::from_millis(10))).await;
    let message = message.expect("assert_no_leaks fails on a suspected orphan");
    assert!(message.contains("leakwatch::detach"), "{message}");
}

async fn a_second_orphan_from_the_line_confirms_both() {
    for path in ["/jobs", "/jobs/plain"] {
        second_orphan_confirms_both(path).await;
    }
}

async fn second_orphan_confirms_both(path: &str) {
    let (detector, _) = support::detector();
    let app = app(&detector, Arc::default());
    let reports = drive(&detector, &app, path, 1).await;
    let first = support::of_kind(&reports, LeakKind::OrphanTask);
    assert_eq!(first.len(), 1, "{reports:#?}");
    assert_eq!(first[0].state, LeakState::Suspected, "alone so far");
    let reports = drive(&detector, &app, path, 1).await;
    let confirmed: Vec<&LeakReport> = reports
        .iter()
        .filter(|r| r.kind == LeakKind::OrphanTask && r.state == LeakState::Confirmed)
        .collect();
    assert_eq!(confirmed.len(), 2, "both confirmed: {reports:#?}");
    assert!(confirmed.iter().any(|r| r.id == first[0].id));
    assert!(confirmed
        .iter()
        .all(|r| !r.detail.contains("leakwatch::detach")));
}

on_both_runtimes! {
    a_refresher_started_once_stays_suspected => super::a_refresher_started_once_stays_suspected;
    a_second_orphan_from_the_line_confirms_both => super::a_second_orphan_from_the_line_confirms_both;
}
