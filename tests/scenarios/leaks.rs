//! L1, L2, L4, L5, L7, L10: each is reported with the right kind, route template, request id and
//! (for tasks and watched objects) the `file:line` of the call.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::body::Body;
use axum::Router;
use http::Request;
use leakwatch::{LeakKind, LeakReport, LeakState};
use tower::ServiceExt;

use crate::app::{self, Kept};
use crate::on_both_runtimes;
use crate::support;

const REQUESTS: usize = 3;
// `assert_no_leaks_panics_listing_every_leak` expects this many leaks in its message.

/// Sends `REQUESTS` requests with ids `{tag}-{i}`, reads every response to its end, and returns
/// the ids.
async fn send(
    app: &Router,
    method: &str,
    path: &str,
    body: impl Fn() -> Body,
    tag: &str,
) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..REQUESTS {
        let id = format!("{tag}-{i}");
        let request = Request::builder()
            .method(method)
            .uri(path.replace("{i}", &i.to_string()))
            .header("x-request-id", &id)
            .body(body())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        support::read_body(response).await;
        ids.insert(id);
    }
    ids
}

/// Checks one scenario's reports: `REQUESTS` of `kind`, confirmed, on `route`, for the ids sent,
/// at `line` of the scenario app when given — and never the raw path.
fn check(
    reports: &[LeakReport],
    kind: LeakKind,
    route: &str,
    ids: &BTreeSet<String>,
    line: Option<&AtomicU32>,
    raw: &str,
) {
    let found = support::of_kind(reports, kind);
    assert_eq!(
        found.len(),
        REQUESTS,
        "expected {REQUESTS} {kind} reports, got: {reports:#?}"
    );
    let found_ids: BTreeSet<String> = found.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(&found_ids, ids);
    for report in &found {
        assert_eq!(report.state, LeakState::Confirmed);
        assert_eq!(report.route, route);
        assert!(report.closed_at.is_some());
        let text = format!("{report} {report:?}");
        assert!(!text.contains(raw), "the raw path {raw} leaked into {text}");
        if let Some(line) = line {
            let location = report.location.expect("a location");
            assert_eq!(location.file, app::FILE);
            assert_eq!(location.line, line.load(Ordering::Relaxed));
        }
    }
    assert_eq!(
        reports.len(),
        found.len(),
        "unexpected other reports: {reports:#?}"
    );
}

async fn l1_orphan_task_sleeping_an_hour() {
    let (detector, sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    let ids = send(&app, "GET", "/leak/task/4{i}", Body::empty, "l1").await;
    let reports = detector.sweep_now();
    check(
        &reports,
        LeakKind::OrphanTask,
        "/leak/task/{id}",
        &ids,
        Some(&app::L1_LINE),
        "/leak/task/40",
    );
    assert!(reports[0].type_name.unwrap().contains("leak_task"));
    assert_eq!(
        sink.reports(),
        reports,
        "the sink received the same reports"
    );
    assert_eq!(detector.leaks().len(), REQUESTS);
}

async fn l2_orphan_task_blocked_on_a_channel() {
    let (detector, _sink) = support::detector();
    let kept = Kept::default();
    let app = app::app(&detector, kept.clone());
    let ids = send(&app, "GET", "/leak/channel/7{i}", Body::empty, "l2").await;
    let reports = detector.sweep_now();
    check(
        &reports,
        LeakKind::OrphanTask,
        "/leak/channel/{id}",
        &ids,
        Some(&app::L2_LINE),
        "/leak/channel/70",
    );

    // Closing the channels ends the tasks: the reports are released.
    kept.senders.lock().unwrap().clear();
    let released = settle_released(&detector, REQUESTS).await;
    assert!(released
        .iter()
        .all(|r| r.kind == LeakKind::OrphanTask && r.detail == "task ended"));
    detector.assert_no_leaks().await;
}

async fn l4_unconsumed_body_of_a_64k_post() {
    let (detector, _sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    let ids = send(
        &app,
        "POST",
        "/leak/upload",
        || Body::from(vec![7u8; 64 * 1024]),
        "l4",
    )
    .await;
    let reports = detector.sweep_now();
    check(
        &reports,
        LeakKind::UnconsumedBody,
        "/leak/upload",
        &ids,
        None,
        "\u{0}",
    );
    assert!(
        reports[0].detail.contains("0 of 65536 body bytes read"),
        "{}",
        reports[0].detail
    );
    // A one-shot finding: it stays visible to leaks() after the sweep.
    assert_eq!(
        support::of_kind(&detector.leaks(), LeakKind::UnconsumedBody).len(),
        REQUESTS
    );
}

async fn l5_body_kept_after_the_response() {
    let (detector, _sink) = support::detector();
    let kept = Kept::default();
    let app = app::app(&detector, kept.clone());
    let ids = send(
        &app,
        "POST",
        "/leak/body",
        || Body::from(vec![1u8; 1024]),
        "l5",
    )
    .await;
    let reports = detector.sweep_now();
    check(
        &reports,
        LeakKind::RetainedBody,
        "/leak/body",
        &ids,
        None,
        "\u{0}",
    );
    assert!(reports[0].detail.contains("body still alive"));

    // Reading the kept bodies later consumes and frees them: released, not unconsumed.
    let bodies: Vec<Body> = kept.bodies.lock().unwrap().drain(..).collect();
    for body in bodies {
        http_body_util::BodyExt::collect(body).await.unwrap();
    }
    let released = detector.sweep_now();
    assert_eq!(released.len(), REQUESTS, "{released:#?}");
    assert!(released
        .iter()
        .all(|r| r.kind == LeakKind::RetainedBody && r.state == LeakState::Released));
    detector.assert_no_leaks().await;
}

async fn l7_watched_context_stored_globally() {
    let (detector, _sink) = support::detector();
    let kept = Kept::default();
    let app = app::app(&detector, kept.clone());
    let ids = send(&app, "GET", "/leak/session/9{i}", Body::empty, "l7").await;
    let reports = detector.sweep_now();
    check(
        &reports,
        LeakKind::WatchedObject,
        "/leak/session/{id}",
        &ids,
        Some(&app::L7_LINE),
        "/leak/session/90",
    );
    assert!(reports
        .iter()
        .all(|r| r.type_name == Some(std::any::type_name::<app::Session>())));

    kept.sessions.lock().unwrap().clear();
    let released = detector.sweep_now();
    assert_eq!(released.len(), REQUESTS);
    assert!(released.iter().all(|r| r.state == LeakState::Released));
    assert!(detector.leaks().is_empty());
}

async fn l10_ticker_never_stopped() {
    let (detector, _sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    let ids = send(&app, "GET", "/leak/ticker", Body::empty, "l10").await;
    let reports = detector.sweep_now();
    check(
        &reports,
        LeakKind::OrphanTask,
        "/leak/ticker",
        &ids,
        Some(&app::L10_LINE),
        "\u{0}",
    );
}

/// Sweeps until `n` reports were released (the tasks need a moment to observe the closed
/// channel), bounded by a generous deadline.
async fn settle_released(detector: &leakwatch::LeakDetector, n: usize) -> Vec<LeakReport> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut released = Vec::new();
    while released.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {released:#?} released"
        );
        released.extend(
            detector
                .sweep_now()
                .into_iter()
                .filter(|r| r.state == LeakState::Released),
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    released
}

async fn malformed_request_ids_are_replaced() {
    let (detector, _sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    let request = Request::get("/leak/task/1")
        .header("x-request-id", "evil id\"; drop table")
        .body(Body::empty())
        .unwrap();
    support::read_body(app.clone().oneshot(request).await.unwrap()).await;
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 1);
    assert!(
        reports[0].request_id.starts_with("lw-"),
        "{}",
        reports[0].request_id
    );
    assert!(!format!("{:?}", reports[0]).contains("evil"));
}

async fn unmatched_routes_are_named_not_copied() {
    let (detector, _sink) = support::detector();
    let app = Router::new()
        .route("/leak/task/{id}", axum::routing::get(|| async { "unused" }))
        .fallback(|| async {
            leakwatch::spawn(std::future::pending::<()>());
            http::StatusCode::NOT_FOUND
        })
        .layer(detector.layer());
    let request = Request::get("/users/alice@example.com/secret?token=x")
        .body(Body::empty())
        .unwrap();
    support::read_body(app.oneshot(request).await.unwrap()).await;
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].route, leakwatch::route::UNMATCHED);
    let text = format!("{:?} {}", reports[0], reports[0]);
    assert!(!text.contains("alice") && !text.contains("token"), "{text}");
}

on_both_runtimes! {
    l1_orphan_task_sleeping_an_hour => super::l1_orphan_task_sleeping_an_hour;
    l2_orphan_task_blocked_on_a_channel => super::l2_orphan_task_blocked_on_a_channel;
    l4_unconsumed_body_of_a_64k_post => super::l4_unconsumed_body_of_a_64k_post;
    l5_body_kept_after_the_response => super::l5_body_kept_after_the_response;
    l7_watched_context_stored_globally => super::l7_watched_context_stored_globally;
    l10_ticker_never_stopped => super::l10_ticker_never_stopped;
    malformed_request_ids_are_replaced => super::malformed_request_ids_are_replaced;
    unmatched_routes_are_named_not_copied => super::unmatched_routes_are_named_not_copied;
}

/// `assert_no_leaks` fails with every report printed, one readable line each.
#[tokio::test]
#[should_panic(expected = "3 leak(s) outlived their requests")]
async fn assert_no_leaks_panics_listing_every_leak() {
    let (detector, _sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    send(&app, "GET", "/leak/task/{i}", Body::empty, "listed").await;
    detector
        .assert_no_leaks_within(std::time::Duration::from_millis(20))
        .await;
}

/// The panic message names kind, state, method, route, request id and location.
#[tokio::test]
async fn assert_no_leaks_message_is_readable() {
    let (detector, _sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    send(&app, "GET", "/leak/task/{i}", Body::empty, "readable").await;
    let failure = tokio::spawn(async move {
        detector
            .assert_no_leaks_within(std::time::Duration::from_millis(20))
            .await
    })
    .await
    .unwrap_err()
    .into_panic();
    let message = failure.downcast_ref::<String>().unwrap();
    let line = "1. OrphanTask [Confirmed] GET /leak/task/{id} request_id=readable-0 ";
    assert!(message.contains(line), "{message}");
    assert!(
        message.contains(&format!(
            "spawned at {}:{}",
            app::FILE,
            app::L1_LINE.load(Ordering::Relaxed)
        )),
        "{message}"
    );
    assert!(message.contains("3. OrphanTask"), "{message}");
}
