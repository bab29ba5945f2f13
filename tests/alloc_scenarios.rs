//! Retained memory with the `TrackingAllocator` installed: L3 (a global map), L6 (a captured
//! closure), L8 (a reference cycle), `mem::forget` and memory kept by a task spawned after the
//! response are reported per route with their bytes; C3 (a bounded cache), C5 (a one-time
//! `OnceLock`) and a 1 MiB temporary never are. Each on a current-thread and a multi-thread
//! runtime, with requests in a burst (one sweep after all of them) and spread (a sweep after
//! every few).
#![cfg(feature = "axum")]

mod support;

/// The scenario service: the one the demo serves.
#[path = "../examples/scenarios/mod.rs"]
mod scenarios;

use axum::body::Body;
use axum::Router;
use http::Request;
use leakwatch::{LeakDetector, LeakKind, LeakReport, LeakState};
use scenarios::{app, Kept};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const REQUESTS: u64 = 400;
const WINDOW: u64 = 200;
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
    let app = app(&detector, Kept::default());
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
    let kept = Kept::default();
    let app = app(&detector, kept.clone());
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
    assert_eq!(stats.uncounted.requests, 0, "{stats:#?}");
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
    l3_request_data_kept_in_a_global_map => |every| check_leak("/leak/cache/{i}", "/leak/cache/{id}", 4096, every);
    l6_closure_capturing_request_data => |every| check_leak("/leak/callback/{i}", "/leak/callback/{id}", 16 * 1024, every);
    l8_reference_cycle => |every| check_leak("/leak/cycle/{i}", "/leak/cycle/{id}", 8192, every);
    memory_leaked_with_mem_forget => |every| check_leak("/leak/forget/{i}", "/leak/forget/{id}", 4096, every);
    c3_bounded_cache_plateaus => |every| check_clean("/ok/lru/{i}", every);
    c5_one_time_once_lock_init => |every| check_clean("/ok/config", every);
    temporary_megabyte_is_freed => |every| check_clean("/ok/temporary/{i}", every);
}

/// Memory kept by a task the request spawned, allocated after the response was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_kept_by_a_task_spawned_after_the_response() {
    let detector = detector();
    let kept = Kept::default();
    let app = app(&detector, kept.clone());
    for i in 0..REQUESTS {
        let request = Request::get(format!("/leak/late/{i}"))
            .body(Body::empty())
            .unwrap();
        support::read_body(app.clone().oneshot(request).await.unwrap()).await;
    }
    // Every response has been sent; only now do the tasks allocate.
    kept.go.send_replace(true);
    support::wait_until("every task kept its memory", || {
        kept.done.load(std::sync::atomic::Ordering::SeqCst) == REQUESTS
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
