//! One cause, one report: a request that leaves a task, a body or a watched object behind is
//! reported for that leftover, not again as `RetainedMemory` for the leftover's own bytes (a
//! task's cell, a kept body's buffers, the watched object). Memory a request keeps beyond its
//! leftover is still found: once the leftover is gone, and on the route's requests that left
//! none.
#![cfg(feature = "axum")]

mod support;

/// The scenario service: the one the demo serves.
#[path = "../examples/scenarios/mod.rs"]
mod scenarios;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use leakwatch::sink::CollectingSink;
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};
use scenarios::{app, start_upstream, Kept};

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

/// Six windows of requests: enough for any memory finding to be made (the growth rule reads
/// four windows past the first).
const REQUESTS: u64 = 600;
const WINDOW: u64 = 100;

fn detector() -> LeakDetector {
    support::builder(&CollectingSink::new())
        .memory_window(WINDOW)
        .memory_threshold(32)
        .build()
        .unwrap()
}

/// Sends `n` requests to `path` (`{i}` replaced; 1 KiB of body on a POST) through a real
/// hyper server and client, sweeping every 7 requests (steady traffic) and once more at the
/// end; returns every report made.
async fn drive(
    detector: &LeakDetector,
    app: &Router,
    method: &str,
    path: &str,
    n: u64,
) -> Vec<LeakReport> {
    let (addr, server) = support::serve(app.clone()).await;
    let client = support::client();
    let mut reports = Vec::new();
    for i in 0..n {
        let body = match method {
            "POST" => Bytes::from(vec![1u8; 1024]),
            _ => Bytes::new(),
        };
        let uri = format!("http://{addr}{}", path.replace("{i}", &i.to_string()));
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert!(response.status().is_success(), "{path}: {response:?}");
        support::read_body(response).await;
        if (i + 1) % 7 == 0 {
            reports.extend(detector.sweep_now());
        }
    }
    server.abort();
    reports.extend(detector.sweep_now());
    reports
}

/// Every leaky route of the demo whose leftover is a task, a body or a watched object gets
/// reports of that one kind, never a `RetainedMemory` one.
async fn one_kind_per_route(method: &str, path: &str, kind: LeakKind) {
    let detector = detector();
    let kept = Kept::with_upstream(&detector, start_upstream().await);
    let app = app(&detector, kept.clone());
    let reports = drive(&detector, &app, method, path, REQUESTS).await;
    let kinds: std::collections::BTreeSet<LeakKind> = reports.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [kind].into(), "{path}: {reports:#?}");
    let confirmed = reports
        .iter()
        .filter(|r| r.state == LeakState::Confirmed)
        .count();
    assert_eq!(confirmed as u64, REQUESTS, "{path}: one report per request");
    assert!(detector.stats().memory.is_tracked());
}

macro_rules! leftovers {
    ($($name:ident => $method:literal $path:literal $kind:ident;)*) => {
        mod current_thread {
            use super::*;
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    one_kind_per_route($method, $path, LeakKind::$kind).await;
                }
            )*
        }
        mod multi_thread {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    one_kind_per_route($method, $path, LeakKind::$kind).await;
                }
            )*
        }
    };
}

leftovers! {
    l1_task => "GET" "/leak/task/{i}" OrphanTask;
    l2_task_on_a_channel => "GET" "/leak/channel/{i}" OrphanTask;
    l5_body_kept => "POST" "/leak/body" RetainedBody;
    l7_watched_session => "GET" "/leak/session/{i}" WatchedObject;
    l9_upstream_body_kept => "GET" "/leak/upstream" RetainedBody;
    l10_ticker => "GET" "/leak/ticker" OrphanTask;
}

/// A route whose requests each keep 4 KiB in a global list and, while `park` is set, park a
/// task beside it until told to stop.
#[derive(Clone, Default)]
struct Both {
    park: Arc<AtomicBool>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn task_and_memory(State(both): State<Both>, Path(id): Path<u64>) -> &'static str {
    both.kept.lock().unwrap().push(vec![id as u8; 4096]);
    if both.park.load(Ordering::Relaxed) {
        let mut stop = both.stop.subscribe();
        leakwatch::spawn(async move { stop.wait_for(|&stop| stop).await.map(drop) });
    }
    "kept 4 KiB\n"
}

/// While the tasks are reported, they stand for their requests' memory; once they end, those
/// requests count with the route's others, and the 4 KiB each keeps beyond its task is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_kept_beside_a_leftover_is_still_found() {
    let detector = detector();
    let both = Both::default();
    both.park.store(true, Ordering::Relaxed);
    let app = Router::new()
        .route("/both/{id}", get(task_and_memory))
        .with_state(both.clone())
        .layer(detector.layer());
    let reports = drive(&detector, &app, "GET", "/both/{i}", REQUESTS).await;
    assert!(
        reports.iter().all(|r| r.kind == LeakKind::OrphanTask),
        "{reports:#?}"
    );
    let orphans = support::of_kind(&reports, LeakKind::OrphanTask);
    assert_eq!(orphans.len() as u64, REQUESTS);

    // The bug behind the tasks is fixed; the one behind the memory is not.
    both.park.store(false, Ordering::Relaxed);
    both.stop.send_replace(true);
    support::wait_until("every task ended", || {
        detector.stats().routes.iter().all(|r| r.tracked_tasks == 0)
    })
    .await;
    let after = drive(&detector, &app, "GET", "/both/{i}", REQUESTS).await;
    let released = after
        .iter()
        .filter(|r| r.kind == LeakKind::OrphanTask && r.state == LeakState::Released)
        .count();
    assert_eq!(released as u64, REQUESTS, "{after:#?}");
    let leaks = detector.leaks();
    let memory = support::of_kind(&leaks, LeakKind::RetainedMemory);
    assert_eq!(memory.len(), 1, "{after:#?}");
    let report = &memory[0];
    assert_eq!(report.route, "/both/{id}");
    assert_eq!(report.state, LeakState::Confirmed);
    let each = report.bytes_per_request.unwrap();
    assert!((4096..4096 + 410).contains(&each), "{report}");
    // Both batches' 4 KiB, the parked requests' among them.
    let total = report.bytes.unwrap();
    assert!(total >= 2 * REQUESTS * 4096, "{report}");
}
