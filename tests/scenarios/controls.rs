//! C1, C2, C6, C8, C9: clean handlers report nothing. (C4 and C7 run a real hyper server:
//! `tests/real_server_controls.rs`.)

use std::time::Duration;

use axum::body::Body;
use http::Request;
use leakwatch::LeakKind;
use tower::ServiceExt;

use crate::app::{self, Kept};
use crate::on_both_runtimes;
use crate::support;

/// Nothing reported now, nothing after settling, and the registry drained.
async fn assert_clean(detector: &leakwatch::LeakDetector, sink: &leakwatch::sink::CollectingSink) {
    detector.assert_no_leaks().await;
    assert!(detector.sweep_now().is_empty());
    assert!(sink.reports().is_empty(), "{:#?}", sink.reports());
    let stats = detector.stats();
    assert_eq!(stats.registry_entries, 0, "{stats:#?}");
    assert_eq!(stats.active.total(), 0);
}

async fn c1_plain_json_handler() {
    let (detector, sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    for _ in 0..5 {
        let response = app
            .clone()
            .oneshot(Request::get("/ok/json").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = support::read_body(response).await;
        assert_eq!(&body[..], br#"{"items":[1,2,3],"status":"ok"}"#);
    }
    assert_eq!(detector.stats().sweeps, 0);
    assert_clean(&detector, &sink).await;
}

async fn c2_task_finishing_inside_the_grace_period() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .grace(Duration::from_millis(500))
        .build()
        .unwrap();
    let app = app::app(&detector, Kept::default());
    let response = app
        .oneshot(Request::get("/ok/task").body(Body::empty()).unwrap())
        .await
        .unwrap();
    support::read_body(response).await;
    // Within the grace period the running task is not judged…
    assert!(detector.sweep_now().is_empty());
    assert_eq!(detector.stats().tracked_tasks, 1);
    // …and once it has ended it is forgotten without a report.
    assert_clean(&detector, &sink).await;
}

async fn c6_body_read_before_replying() {
    let (detector, sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    let request = Request::post("/ok/upload")
        .body(Body::from(vec![3u8; 64 * 1024]))
        .unwrap();
    let body = support::read_body(app.oneshot(request).await.unwrap()).await;
    assert_eq!(&body[..], b"read 65536 bytes\n");
    assert_clean(&detector, &sink).await;
}

async fn c8_background_task_spawned_outside_any_request() {
    let (detector, sink) = support::detector();
    let background = leakwatch::spawn(std::future::pending::<()>());
    let app = app::app(&detector, Kept::default());
    let response = app
        .oneshot(Request::get("/ok/json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    support::read_body(response).await;
    assert_eq!(detector.stats().tracked_tasks, 0);
    assert_clean(&detector, &sink).await;
    assert!(!background.is_finished());
    background.abort();
}

on_both_runtimes! {
    c1_plain_json_handler => super::c1_plain_json_handler;
    c2_task_finishing_inside_the_grace_period => super::c2_task_finishing_inside_the_grace_period;
    c6_body_read_before_replying => super::c6_body_read_before_replying;
    c8_background_task_spawned_outside_any_request => super::c8_background_task_spawned_outside_any_request;
}

/// C9: 10,000 concurrent requests to C1 on a multi-thread runtime leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c9_ten_thousand_concurrent_requests() {
    let (detector, sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        let app = app.clone();
        set.spawn(async move {
            let response = app
                .oneshot(Request::get("/ok/json").body(Body::empty()).unwrap())
                .await
                .unwrap();
            support::read_body(response).await.len()
        });
    }
    let mut done = 0;
    while let Some(len) = set.join_next().await {
        assert!(len.unwrap() > 0);
        done += 1;
    }
    assert_eq!(done, 10_000);
    assert_eq!(detector.stats().uncounted.registry_entries, 0);
    assert_clean(&detector, &sink).await;
}

/// Attribution never crosses requests: among 10,000 concurrent requests, exactly the 100 that
/// spawned an orphan task are reported, each with its own request id and route.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_leaks_are_attributed_to_their_own_requests() {
    let (detector, _sink) = support::detector();
    let app = app::app(&detector, Kept::default());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10_000u32 {
        let app = app.clone();
        let (path, id) = if i % 100 == 0 {
            (format!("/leak/task/{i}"), format!("leaky-{i}"))
        } else {
            ("/ok/json".to_owned(), format!("clean-{i}"))
        };
        set.spawn(async move {
            let request = Request::get(path)
                .header("x-request-id", id)
                .body(Body::empty())
                .unwrap();
            support::read_body(app.oneshot(request).await.unwrap()).await;
        });
    }
    while let Some(result) = set.join_next().await {
        result.unwrap();
    }
    let reports = detector.sweep_now();
    assert_eq!(reports.len(), 100, "{reports:#?}");
    let mut ids: Vec<String> = reports.iter().map(|r| r.request_id.clone()).collect();
    ids.sort();
    let mut expected: Vec<String> = (0..10_000)
        .step_by(100)
        .map(|i| format!("leaky-{i}"))
        .collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert!(reports
        .iter()
        .all(|r| r.kind == LeakKind::OrphanTask && r.route == "/leak/task/{id}"));
}
