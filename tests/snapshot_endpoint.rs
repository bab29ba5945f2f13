//! `/debug/leaks`: the snapshot service mounted in a real axum server on 127.0.0.1, read by a
//! real client — what it shows, in JSON and as text, and that hostile requests (long paths,
//! secrets in query strings and headers, malformed request ids) leave no trace in it.
#![cfg(feature = "axum")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use leakwatch::LeakDetector;
use serde_json::Value;
use tokio::sync::Notify;

/// The line of the `spawn` in `orphan`.
const SPAWN_LINE: u32 = line!() + 4;

/// Spawns a task that never ends: an orphan once the response is sent.
async fn orphan() -> &'static str {
    leakwatch::spawn(std::future::pending::<()>());
    "spawned"
}

fn app(detector: &LeakDetector, release: Arc<Notify>) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/jobs/{id}", get(orphan))
        .route(
            "/slow",
            get(move || async move {
                release.notified().await;
                "done"
            }),
        )
        .route_service("/debug/leaks", detector.snapshot_service())
        .layer(detector.layer())
}

async fn start(detector: &LeakDetector) -> (SocketAddr, Arc<Notify>) {
    let release = Arc::new(Notify::new());
    let (addr, _server) = support::serve(app(detector, release.clone())).await;
    (addr, release)
}

/// Sends `request` to the server and returns the status and the body as text.
async fn send(request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let response = support::client().request(request).await.unwrap();
    let status = response.status();
    let body = support::read_body(response).await;
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn get_path(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let uri = format!("http://{addr}{path}");
    send(Request::get(uri).body(Full::new(Bytes::new())).unwrap()).await
}

fn route<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["stats"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {snapshot:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_shows_requests_tasks_and_reports_by_route() {
    let (detector, _sink) = support::detector();
    let (addr, release) = start(&detector).await;
    for _ in 0..5 {
        assert_eq!(get_path(addr, "/hello").await.0, StatusCode::OK);
    }
    for id in 0..3 {
        assert_eq!(
            get_path(addr, &format!("/jobs/{id}")).await.0,
            StatusCode::OK
        );
    }
    let slow = tokio::spawn(get_path(addr, "/slow"));
    support::wait_until("the slow request is in flight", || {
        detector.stats().requests_in_flight >= 1
    })
    .await;
    detector.sweep_now();

    let (status, json) = get_path(addr, "/debug/leaks").await;
    assert_eq!(status, StatusCode::OK);
    let snapshot: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        snapshot["stats"]["memory"], "untracked",
        "no allocator in this test"
    );
    assert!(snapshot["taken_at"].as_u64().unwrap() > 0);

    assert_eq!(route(&snapshot, "/hello")["finished_requests"], 5);
    assert_eq!(route(&snapshot, "/hello")["requests_in_flight"], 0);
    assert_eq!(route(&snapshot, "/hello")["live_bytes"], Value::Null);
    assert_eq!(route(&snapshot, "/slow")["requests_in_flight"], 1);
    assert!(route(&snapshot, "/slow")["oldest_in_flight"].is_u64());
    assert_eq!(route(&snapshot, "/jobs/{id}")["tracked_tasks"], 3);

    let tasks = snapshot["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{snapshot:#}");
    assert_eq!(tasks[0]["route"], "/jobs/{id}");
    assert_eq!(tasks[0]["alive"], 3);
    assert_eq!(tasks[0]["after_request"], 3);
    assert_eq!(tasks[0]["location"]["line"], SPAWN_LINE);
    assert!(tasks[0]["location"]["file"]
        .as_str()
        .unwrap()
        .ends_with("snapshot_endpoint.rs"));

    let reports = snapshot["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 3, "{snapshot:#}");
    for report in reports {
        assert_eq!(report["kind"], "OrphanTask");
        assert_eq!(report["state"], "Confirmed");
        assert_eq!(report["route"], "/jobs/{id}");
        assert_eq!(report["method"], "GET");
        assert_eq!(report["location"]["line"], SPAWN_LINE);
    }
    assert_eq!(snapshot["reports_omitted"], 0);
    assert_eq!(snapshot["stats"]["active"]["OrphanTask"], 3);
    assert!(snapshot["stats"]["registry_entries"].as_u64().unwrap() >= 4);
    assert_eq!(snapshot["stats"]["uncounted"]["registry_entries"], 0);
    assert!(snapshot["trend"]["samples"].as_u64().unwrap() >= 1);
    assert_eq!(snapshot["trend"]["heap_growth"], Value::Null);

    let (status, text) = get_path(addr, "/debug/leaks?format=text").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.starts_with("leakwatch snapshot at "), "{text}");
    assert!(text.contains("memory: untracked"), "{text}");
    let row = |route: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(route) || l.contains(route))
            .unwrap_or_else(|| panic!("no row for {route} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // ROUTE, IN FLIGHT, OLDEST, FINISHED, LIVE BYTES, RETAINED, BLOCKS, WITNESSES, TASKS, REPORTS
    assert_eq!(row("/hello"), "/hello 0 - 5 - - - 0 0 0");
    assert!(row("/slow").starts_with("/slow 1 "), "{text}");
    let task_row = row("tests/snapshot_endpoint.rs");
    assert!(
        task_row.starts_with("/jobs/{id} tests/snapshot_endpoint.rs"),
        "{text}"
    );
    assert!(task_row.contains(&format!(":{SPAWN_LINE} 3 3 ")), "{text}");
    assert!(text.contains("reports (3)"), "{text}");
    assert_eq!(
        text.matches("OrphanTask [Confirmed] GET /jobs/{id}")
            .count(),
        3
    );

    let (status, _) = get_path(addr, "/debug/leaks?format=yaml").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let post = Request::post(format!("http://{addr}/debug/leaks"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(post).await.0, StatusCode::METHOD_NOT_ALLOWED);

    release.notify_one();
    assert_eq!(slow.await.unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_leave_no_trace_in_the_snapshot() {
    let (detector, _sink) = support::detector();
    let (addr, release) = start(&detector).await;
    let long_path = format!("/jobs/{}", "SECRETPATH".repeat(400));
    let paths = [
        long_path.as_str(),
        "/jobs/7?token=SECRETQUERY&password=SECRETQUERY",
        "/nowhere/SECRETUNMATCHED?SECRETQUERY=1",
        "/debug/leaks?format=json&api_key=SECRETQUERY",
    ];
    for path in paths {
        let request = Request::get(format!("http://{addr}{path}"))
            .header("authorization", "Bearer SECRETHEADER")
            .header("cookie", "session=SECRETHEADER")
            .header("x-request-id", "SECRETID <script>alert(1)</script>")
            .header("x-odd-SECRETNAME", "SECRETHEADER")
            .header("traceparent", "SECRETTRACE")
            .body(Full::new(Bytes::from_static(b"SECRETBODY")))
            .unwrap();
        send(request).await;
    }
    // One more request left in flight, so that open scopes are shown too.
    let slow = tokio::spawn(get_path(addr, "/slow?SECRETQUERY=1"));
    support::wait_until("the slow request is in flight", || {
        detector.stats().requests_in_flight >= 1
    })
    .await;
    detector.sweep_now();

    let (_, json) = get_path(addr, "/debug/leaks").await;
    let (_, text) = get_path(addr, "/debug/leaks?format=text").await;
    for shown in [&json, &text] {
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("<script>"), "{shown}");
    }
    let snapshot: Value = serde_json::from_str(&json).unwrap();
    let reports = snapshot["reports"].as_array().unwrap();
    let orphans = reports.iter().filter(|r| r["kind"] == "OrphanTask");
    assert_eq!(
        orphans.count(),
        2,
        "both /jobs requests left a task: {snapshot:#}"
    );
    for report in reports {
        // The bodies sent were never read: UnconsumedBody, named by template too.
        let templates = ["/jobs/{id}", "<unmatched>", "/debug/leaks"];
        assert!(
            templates.contains(&report["route"].as_str().unwrap()),
            "{report:#}"
        );
        assert!(report["request_id"].as_str().unwrap().starts_with("lw-"));
    }
    assert_eq!(route(&snapshot, "/slow")["requests_in_flight"], 1);
    assert!(json.len() < 64 * 1024, "the snapshot stays small");

    release.notify_one();
    slow.await.unwrap();
}
