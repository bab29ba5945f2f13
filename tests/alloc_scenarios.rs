//! Retained memory with the `TrackingAllocator` installed: L3 (a global map), L6 (a captured
//! closure), L8 (a reference cycle), `mem::forget` and memory kept by a task spawned after the
//! response are reported per route with their bytes; C3 (a bounded cache), C5 (a one-time
//! `OnceLock`) and a 1 MiB temporary never are. Each on a current-thread and a multi-thread
//! runtime, with requests in a burst (one sweep after all of them) and spread (a sweep after
//! every few).
#![cfg(feature = "axum")]

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const REQUESTS: u64 = 400;
const WINDOW: u64 = 200;
const CACHE_CAPACITY: usize = 100;

/// Node of an `Arc` cycle (L8).
struct Node {
    _payload: Vec<u8>,
    next: Mutex<Option<Arc<Node>>>,
}

type Callback = Box<dyn Fn() -> usize + Send>;

/// What the handlers keep: each test has its own.
#[derive(Clone, Default)]
struct Globals {
    map: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
    callbacks: Arc<Mutex<Vec<Callback>>>,
    cache: Arc<Mutex<VecDeque<Vec<u8>>>>,
    once: Arc<OnceLock<Vec<u8>>>,
    late: Arc<Mutex<Vec<Vec<u8>>>>,
    go: Arc<tokio::sync::watch::Sender<bool>>,
    done: Arc<std::sync::atomic::AtomicU64>,
}

fn app(detector: &LeakDetector, globals: Globals) -> Router {
    Router::new()
        .route("/leak/map/{id}", get(leak_map))
        .route("/leak/closure/{id}", get(leak_closure))
        .route("/leak/cycle/{id}", get(leak_cycle))
        .route("/leak/forget/{id}", get(leak_forget))
        .route("/leak/late/{id}", get(leak_late))
        .route("/ok/cache/{id}", get(ok_cache))
        .route("/ok/once/{id}", get(ok_once))
        .route("/ok/temporary/{id}", get(ok_temporary))
        .with_state(globals)
        .layer(detector.layer())
}

/// L3: 4 KiB of request data kept in a global map.
async fn leak_map(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    g.map.lock().unwrap().insert(id, vec![id as u8; 4096]);
    "kept"
}

/// L6: a closure capturing 16 KiB, pushed to a global list of callbacks.
async fn leak_closure(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    let data = Arc::new(vec![id as u8; 16 * 1024]);
    g.callbacks
        .lock()
        .unwrap()
        .push(Box::new(move || data.len()));
    "captured"
}

/// L8: two nodes of 4 KiB each pointing at each other.
async fn leak_cycle(Path(id): Path<u64>) -> &'static str {
    let a = Arc::new(Node {
        _payload: vec![id as u8; 4096],
        next: Mutex::new(None),
    });
    let b = Arc::new(Node {
        _payload: vec![id as u8; 4096],
        next: Mutex::new(Some(a.clone())),
    });
    *a.next.lock().unwrap() = Some(b);
    "cycled"
}

/// 4 KiB leaked with `mem::forget`.
async fn leak_forget(Path(id): Path<u64>) -> &'static str {
    std::mem::forget(vec![id as u8; 4096]);
    "forgotten"
}

/// A task spawned by the request keeps 4 KiB after the response was sent.
async fn leak_late(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    leakwatch::spawn(async move {
        let _ = g.go.subscribe().wait_for(|&go| go).await;
        g.late.lock().unwrap().push(vec![id as u8; 4096]);
        g.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    "later"
}

/// C3: a bounded cache, evicting its oldest entry.
async fn ok_cache(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    let mut cache = g.cache.lock().unwrap();
    if cache.len() == CACHE_CAPACITY {
        cache.pop_front();
    }
    cache.push_back(vec![id as u8; 4096]);
    "cached"
}

/// C5: the first request initialises 1 MiB, later ones reuse it.
async fn ok_once(State(g): State<Globals>) -> String {
    g.once.get_or_init(|| vec![1u8; 1 << 20]).len().to_string()
}

/// A 1 MiB temporary buffer, freed before the response.
async fn ok_temporary(Path(id): Path<u64>) -> String {
    let buffer = std::hint::black_box(vec![id as u8; 1 << 20]);
    buffer.len().to_string()
}

fn detector() -> LeakDetector {
    support::builder(&leakwatch::sink::CollectingSink::new())
        .memory_window(WINDOW)
        .build()
        .unwrap()
}

/// Sends `REQUESTS` requests to `path` (`{i}` replaced), sweeping every `sweep_every`
/// requests, then once more; returns every report made.
async fn drive(
    detector: &LeakDetector,
    app: &Router,
    path: &str,
    sweep_every: u64,
) -> Vec<LeakReport> {
    let mut reports = Vec::new();
    for i in 0..REQUESTS {
        let request = Request::get(path.replace("{i}", &i.to_string()))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_success());
        support::read_body(response).await;
        if (i + 1) % sweep_every == 0 {
            reports.extend(detector.sweep_now());
        }
    }
    reports.extend(detector.sweep_now());
    reports
}

/// Asserts one confirmed `RetainedMemory` report for `route`, about `per_request` bytes per
/// request and `REQUESTS × per_request` in all, each within 10 %.
fn assert_retained(reports: &[LeakReport], route: &str, per_request: u64) {
    let found: Vec<&LeakReport> = reports
        .iter()
        .filter(|r| r.kind == LeakKind::RetainedMemory && r.state == LeakState::Confirmed)
        .collect();
    assert_eq!(found.len(), 1, "{reports:#?}");
    let report = found[0];
    assert_eq!(report.route, route);
    let each = report.bytes_per_request.unwrap();
    assert!(
        within_10_percent(each, per_request),
        "{each} bytes per request, expected {per_request}: {report}"
    );
    let total = report.bytes.unwrap();
    assert!(
        within_10_percent(total, per_request * REQUESTS),
        "{total} bytes in all: {report}"
    );
    assert!(report.allocations.unwrap() >= REQUESTS);
    assert_eq!(reports.len(), 1, "{reports:#?}");
}

fn within_10_percent(actual: u64, expected: u64) -> bool {
    actual.abs_diff(expected) * 10 <= expected
}

async fn check_leak(path: &str, route: &str, per_request: u64, sweep_every: u64) {
    let detector = detector();
    let app = app(&detector, Globals::default());
    let reports = drive(&detector, &app, path, sweep_every).await;
    // Confirmed once, while the requests came in; the active report has the final figures.
    let confirmed = reports
        .iter()
        .filter(|r| r.state == LeakState::Confirmed)
        .count();
    assert_eq!(confirmed, 1, "{reports:#?}");
    assert!(reports
        .iter()
        .all(|r| r.kind == LeakKind::RetainedMemory && r.route == route));
    assert_retained(&detector.leaks(), route, per_request);
    assert!(detector.stats().memory.is_tracked());
}

async fn check_clean(path: &str, sweep_every: u64) {
    let detector = detector();
    let globals = Globals::default();
    let app = app(&detector, globals.clone());
    let reports = drive(&detector, &app, path, sweep_every).await;
    assert!(reports.is_empty(), "{reports:#?}");
    assert!(detector.leaks().is_empty());
    let stats = detector.stats();
    let route = stats
        .routes
        .iter()
        .find(|r| path.starts_with(r.route.trim_end_matches("{id}")))
        .unwrap();
    assert_eq!(route.finished_requests, REQUESTS, "{stats:#?}");
    // Every one of them had its memory counted and judged.
    assert_eq!(stats.untracked_requests, 0, "{stats:#?}");
}

macro_rules! scenarios {
    ($($name:ident => $check:expr;)*) => {
        mod current_thread {
            use super::*;
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    let check = $check;
                    check(1).await; // spread: a sweep after every request
                    check(REQUESTS).await; // burst: one sweep after all of them
                }
            )*
        }
        mod multi_thread {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let check = $check;
                    check(7).await;
                    check(REQUESTS).await;
                }
            )*
        }
    };
}

scenarios! {
    l3_request_data_kept_in_a_global_map => |every| check_leak("/leak/map/{i}", "/leak/map/{id}", 4096, every);
    l6_closure_capturing_request_data => |every| check_leak("/leak/closure/{i}", "/leak/closure/{id}", 16 * 1024, every);
    l8_reference_cycle => |every| check_leak("/leak/cycle/{i}", "/leak/cycle/{id}", 8192, every);
    memory_leaked_with_mem_forget => |every| check_leak("/leak/forget/{i}", "/leak/forget/{id}", 4096, every);
    c3_bounded_cache_plateaus => |every| check_clean("/ok/cache/{i}", every);
    c5_one_time_once_lock_init => |every| check_clean("/ok/once/{i}", every);
    temporary_megabyte_is_freed => |every| check_clean("/ok/temporary/{i}", every);
}

/// Memory kept by a task the request spawned, allocated after the response was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_kept_by_a_task_spawned_after_the_response() {
    let detector = detector();
    let globals = Globals::default();
    let app = app(&detector, globals.clone());
    for i in 0..REQUESTS {
        let request = Request::get(format!("/leak/late/{i}"))
            .body(Body::empty())
            .unwrap();
        support::read_body(app.clone().oneshot(request).await.unwrap()).await;
    }
    // Every response has been sent; only now do the tasks allocate.
    globals.go.send_replace(true);
    support::wait_until("every task kept its memory", || {
        globals.done.load(std::sync::atomic::Ordering::SeqCst) == REQUESTS
    })
    .await;
    // A task may still be finishing (grace is zero): only the memory reports matter here.
    let memory = |reports: Vec<LeakReport>| -> Vec<LeakReport> {
        reports
            .into_iter()
            .filter(|r| r.kind == LeakKind::RetainedMemory)
            .collect()
    };
    assert_retained(&memory(detector.sweep_now()), "/leak/late/{id}", 4096);
    assert_retained(&memory(detector.leaks()), "/leak/late/{id}", 4096);
}
