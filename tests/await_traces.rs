//! With the runtime hooks and the `taskdump` feature on Linux, an orphan task's report says
//! where the task is stuck: the handler's `async fn` and the call it awaits — in the report's
//! `await_trace`, its `Display` and the message of `assert_no_leaks` — on a current-thread and
//! on a multi-thread runtime. Needs `RUSTFLAGS="--cfg tokio_unstable"` and the feature
//! `taskdump`, on Linux (`cfg(leakwatch_taskdump)`, set by the build script).
#![cfg(all(leakwatch_taskdump, feature = "axum"))]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{LeakDetector, LeakKind, LeakReport};
use tokio::sync::mpsc;
use tower::ServiceExt;

type Senders = Arc<Mutex<Vec<mpsc::Sender<u64>>>>;

/// The worker a handler starts: it waits for orders that never come.
async fn wait_for_orders(mut orders: mpsc::Receiver<u64>) {
    while orders.recv().await.is_some() {}
}

async fn start_worker(State(senders): State<Senders>) -> &'static str {
    let (sender, orders) = mpsc::channel(1);
    senders.lock().unwrap().push(sender);
    tokio::spawn(wait_for_orders(orders));
    "started"
}

/// A poller that sleeps between polls, forever.
async fn poll_forever() {
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn start_poller() -> &'static str {
    leakwatch::spawn(poll_forever());
    "started"
}

/// Sends a GET for `path`, sweeps, and waits until the route's orphan has its await trace.
async fn traced_orphan(detector: &LeakDetector, app: &Router, path: &str) -> LeakReport {
    let request = Request::get(path).body(Body::empty()).unwrap();
    support::read_body(app.clone().oneshot(request).await.unwrap()).await;
    let reported = detector.sweep_now();
    assert_eq!(
        support::of_kind(&reported, LeakKind::OrphanTask).len(),
        1,
        "{reported:#?}"
    );
    let mut traced = None;
    support::wait_until("the orphan's await trace arrived", || {
        traced = detector
            .leaks()
            .into_iter()
            .find(|r| r.route == path && r.await_trace.is_some());
        traced.is_some()
    })
    .await;
    traced.unwrap()
}

#[test]
fn an_orphan_waiting_on_a_channel_names_its_function_and_the_receive() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, _) = support::detector();
        let app = Router::new()
            .route("/worker", get(start_worker))
            .with_state(Senders::default())
            .layer(detector.layer());
        let report = traced_orphan(&detector, &app, "/worker").await;
        let trace = report.await_trace.clone().unwrap();
        assert!(trace.contains("wait_for_orders"), "{trace}");
        assert!(trace.contains("Receiver<T>::recv"), "{trace}");
        assert!(trace.len() <= LeakReport::MAX_AWAIT_TRACE);
        let shown = report.to_string();
        assert!(shown.contains("waiting at:"), "{shown}");
        assert!(shown.contains("wait_for_orders"), "{shown}");

        // The assertion's message carries it too.
        let failing = detector.clone();
        let panic = tokio::spawn(async move {
            failing
                .assert_no_leaks_within(Duration::from_millis(10))
                .await
        })
        .await
        .unwrap_err()
        .into_panic();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("wait_for_orders"), "{message}");
        assert!(message.contains("Receiver<T>::recv"), "{message}");

        // The task profile shows it above the spawn line: as text and in the pprof profile.
        let text = profile(&detector, "/debug/leaks/tasks?debug=1").await;
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("1 @ /worker: 1 outlive their request"),
            "{text}"
        );
        assert!(text.contains("#\tawaiting:"), "{text}");
        assert!(
            text.contains("wait_for_orders") && text.contains("Receiver<T>::recv"),
            "{text}"
        );
        let gzipped = profile(&detector, "/debug/leaks/tasks").await;
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&gzipped[..]),
            &mut decoded,
        )
        .unwrap();
        let strings = String::from_utf8_lossy(&decoded);
        assert!(
            strings.contains("wait_for_orders"),
            "the trace's frames are in the profile"
        );
    });
}

/// The body of the snapshot service's answer to `GET path`.
async fn profile(detector: &LeakDetector, path: &str) -> Vec<u8> {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = detector.snapshot_service().oneshot(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    support::read_body(response).await.to_vec()
}

#[test]
fn an_orphan_spawned_through_leakwatch_names_its_sleep() {
    support::on_both_hooked_runtimes(|| async {
        let (detector, _) = support::detector();
        let app = Router::new()
            .route("/poller", get(start_poller))
            .layer(detector.layer());
        let report = traced_orphan(&detector, &app, "/poller").await;
        let trace = report.await_trace.unwrap();
        assert!(trace.contains("poll_forever"), "{trace}");
        assert!(trace.contains("sleep"), "{trace}");
    });
}
