//! What the rules cannot know, said in code: work a request starts on purpose for the whole
//! process (`spawn_detached`, `detach`, `outside`), spawn locations to ignore
//! (`ignore_spawned_at`), and a request answered `101 Switching Protocols`, whose tasks live
//! with the upgraded connection. Each is checked against the same task without it, which is
//! reported — on a current-thread and a multi-thread runtime, through the `TrackingAllocator`
//! on stable flags and with the runtime hooks too when built with `--cfg tokio_unstable`.
#![cfg(feature = "axum")]

mod support;

use std::future::pending;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use leakwatch::{LeakDetector, LeakKind, LeakReport};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

async fn plain() -> &'static str {
    tokio::spawn(pending::<()>());
    "spawned"
}

async fn detached_spawn() -> &'static str {
    leakwatch::spawn_detached(pending::<()>());
    "spawned"
}

async fn detached_future() -> &'static str {
    // A lazy initialiser that starts a background task: the whole future runs detached.
    leakwatch::detach(async {
        tokio::spawn(pending::<()>());
    })
    .await;
    "spawned"
}

async fn outside_closure() -> &'static str {
    leakwatch::outside(|| tokio::spawn(pending::<()>()));
    "spawned"
}

/// Answers `101 Switching Protocols` after starting the connection's task, as a WebSocket or
/// `hyper::upgrade::on` handler does.
async fn upgraded() -> impl IntoResponse {
    tokio::spawn(pending::<()>());
    StatusCode::SWITCHING_PROTOCOLS
}

fn app(detector: &LeakDetector) -> Router {
    Router::new()
        .route("/plain", get(plain))
        .route("/spawn-detached", get(detached_spawn))
        .route("/detach", get(detached_future))
        .route("/outside", get(outside_closure))
        .route("/upgraded", get(upgraded))
        .layer(detector.layer())
}

/// Sends one GET through the app and reads the response to its end.
async fn get_path(app: &Router, path: &str) {
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert!(
        response.status().is_success() || response.status() == StatusCode::SWITCHING_PROTOCOLS,
        "{path}: {}",
        response.status()
    );
    support::read_body(response).await;
}

/// Every report of `route`, after a sweep.
fn reports_of(detector: &LeakDetector, route: &str) -> Vec<LeakReport> {
    detector.sweep_now();
    let leaks = detector.leaks();
    leaks.into_iter().filter(|r| r.route == route).collect()
}

#[test]
fn work_said_to_be_the_processs_is_never_the_requests() {
    support::on_both_runtimes_as_built(|| async {
        let (detector, _) = support::detector();
        let app = app(&detector);
        for path in ["/plain", "/spawn-detached", "/detach", "/outside"] {
            for _ in 0..3 {
                get_path(&app, path).await;
            }
        }
        let plain = reports_of(&detector, "/plain");
        assert_eq!(plain.len(), 3, "the same task without the knob: {plain:#?}");
        assert!(plain.iter().all(|r| r.kind == LeakKind::OrphanTask));
        for route in ["/spawn-detached", "/detach", "/outside"] {
            let found = reports_of(&detector, route);
            assert!(found.is_empty(), "{route}: {found:#?}");
        }
        assert_eq!(detector.stats().routes.len(), 4);
    });
}

#[test]
fn tasks_spawned_at_an_ignored_location_are_not_tracked() {
    support::on_both_runtimes_as_built(|| async {
        let sink = leakwatch::sink::CollectingSink::new();
        let detector = support::builder(&sink)
            .ignore_spawned_at("tests/saying_so_in_code.rs")
            .build()
            .unwrap();
        let app = app(&detector);
        for _ in 0..3 {
            get_path(&app, "/plain").await;
        }
        let found = reports_of(&detector, "/plain");
        assert!(found.is_empty(), "{found:#?}");
        assert_eq!(detector.stats().tracked_tasks, 0);
    });
}

#[test]
fn an_empty_ignore_pattern_is_rejected() {
    let error = LeakDetector::builder()
        .ignore_spawned_at(" ")
        .build()
        .unwrap_err();
    assert_eq!(error.field(), "ignore_spawned_at");
}

#[test]
fn an_upgraded_requests_tasks_live_with_its_connection() {
    support::on_both_runtimes_as_built(|| async {
        let (detector, _) = support::detector();
        let app = app(&detector);
        for _ in 0..3 {
            get_path(&app, "/upgraded").await;
            get_path(&app, "/plain").await;
        }
        // The same task, spawned the same way: only the request answered 200 is blamed.
        assert_eq!(reports_of(&detector, "/plain").len(), 3);
        let found = reports_of(&detector, "/upgraded");
        assert!(found.is_empty(), "{found:#?}");
        // Still tracked: judged by growth with the route's other connections.
        let route = detector.stats().routes;
        let upgraded = route.iter().find(|r| r.route == "/upgraded").unwrap();
        assert_eq!(upgraded.tracked_tasks, 3);
    });
}
