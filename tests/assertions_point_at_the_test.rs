//! A failing `assert_no_leaks` (and `LeakGuard::check`) panics at the test's own `.await`, not
//! inside leakwatch, and says how long it really waited and what it could see.
//!
//! One test per binary: it replaces the panic hook to read the panic's location.
#![cfg(feature = "axum")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::guard::LeakGuard;
use tower::ServiceExt;

async fn orphan() -> &'static str {
    leakwatch::spawn(std::future::pending::<()>());
    "left a task"
}

/// Runs `test` on a runtime of its own; returns the location and message of the panic it ended
/// with.
fn panic_of(test: impl std::future::Future<Output = ()>) -> (String, u32, String) {
    let seen: Arc<Mutex<Option<(String, u32)>>> = Arc::default();
    let hook_seen = seen.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(location) = info.location() {
            *hook_seen.lock().unwrap() = Some((location.file().to_owned(), location.line()));
        }
    }));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test)));
    std::panic::set_hook(previous);
    let payload = result.expect_err("the assertion should have failed");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    let (file, line) = seen.lock().unwrap().clone().expect("a panic location");
    (file, line, message)
}

#[test]
fn failing_assertions_point_at_the_awaiting_line() {
    let settle = Duration::from_millis(500);
    let expected = line!() + 8;
    let (file, line, message) = panic_of(async move {
        let (detector, _sink) = support::detector();
        let app = Router::new()
            .route("/jobs/{id}", get(orphan))
            .layer(detector.layer());
        let request = Request::get("/jobs/1").body(Body::empty()).unwrap();
        support::read_body(app.oneshot(request).await.unwrap()).await;
        detector.assert_no_leaks_within(settle).await;
    });
    assert_eq!((file.as_str(), line), (file!(), expected), "{message}");
    assert!(
        message.contains("1 leak(s) outlived their requests"),
        "{message}"
    );
    // It waited the whole settle timeout (the task never ends), and says so.
    assert!(message.contains("of up to 500 ms"), "{message}");
    assert!(
        message.contains("checked: tasks spawned in requests"),
        "{message}"
    );
    assert!(
        message.contains("memory not tracked (install leakwatch::TrackingAllocator"),
        "{message}"
    );

    // The guard's assertion, too.
    let jobs = |detector: &leakwatch::LeakDetector| {
        Router::new()
            .route("/jobs/{id}", get(orphan))
            .layer(detector.layer())
    };
    let request = |i: usize| {
        Request::get(format!("/jobs/{i}"))
            .body(Body::empty())
            .unwrap()
    };
    let guard = LeakGuard::new().without_baseline().requests(2).warmup(0);
    let guard = guard.route("/jobs/{id}", request);
    let expected = line!() + 1;
    let (file, line, message) = panic_of(async { guard.check(jobs).await });
    assert_eq!((file.as_str(), line), (file!(), expected), "{message}");
    assert!(message.contains("leakwatch guard failed"), "{message}");
}
