//! The leak guard for CI: a clean axum service passes (bounded caches, one-time init and all);
//! a route that keeps memory per request, a small key per request or a task fails with a table
//! saying why; a baseline file is written, compared against, and a regression past it fails
//! with the difference; a malformed file is an error naming its line.
#![cfg(feature = "axum")]

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::guard::{GuardError, GuardOutcome, LeakGuard};
use leakwatch::{LeakDetector, LeakKind};

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

#[derive(Clone, Default)]
struct Globals {
    lru: Arc<Mutex<VecDeque<Vec<u8>>>>,
    map: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
    keys: Arc<Mutex<HashSet<String>>>,
    /// Bytes `/grows/{id}` keeps per request.
    grows_by: Arc<AtomicUsize>,
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn app(globals: Globals) -> impl Fn(&LeakDetector) -> Router {
    move |detector| {
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route(
                "/lru/{id}",
                get(|State(g): State<Globals>, Path(id): Path<u64>| async move {
                    let mut lru = g.lru.lock().unwrap();
                    lru.push_back(vec![id as u8; 1024]);
                    if lru.len() > 16 {
                        lru.pop_front();
                    }
                    "cached"
                }),
            )
            .route(
                "/config",
                get(|| async {
                    static CONFIG: OnceLock<Vec<u8>> = OnceLock::new();
                    CONFIG.get_or_init(|| vec![0; 64 * 1024]).len().to_string()
                }),
            )
            .route(
                "/leak/map/{id}",
                get(|State(g): State<Globals>, Path(id): Path<u64>| async move {
                    g.map.lock().unwrap().insert(id, vec![id as u8; 4096]);
                    "kept 4 KiB"
                }),
            )
            .route(
                "/leak/key/{id}",
                get(|State(g): State<Globals>, Path(id): Path<u64>| async move {
                    // A 48-byte key per request, added to a global set for good.
                    g.keys.lock().unwrap().insert(format!("{id:048}"));
                    "kept a key"
                }),
            )
            .route(
                "/leak/task",
                get(|| async {
                    leakwatch::spawn(std::future::pending::<()>());
                    "spawned"
                }),
            )
            .route(
                "/grows/{id}",
                get(|State(g): State<Globals>| async move {
                    let n = g.grows_by.load(Ordering::Relaxed);
                    if n > 0 {
                        g.kept.lock().unwrap().push(vec![1; n]);
                    }
                    "maybe kept"
                }),
            )
            .with_state(globals.clone())
            .layer(detector.layer())
    }
}

fn get_request(path: String) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn guard() -> LeakGuard<Body> {
    LeakGuard::new().without_baseline()
}

fn route<'a>(report: &'a GuardOutcome, name: &str) -> &'a leakwatch::guard::RouteVerdict {
    report.routes.iter().find(|r| r.route == name).unwrap()
}

/// A file under cargo's temporary directory for integration tests.
fn temp_file(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_service_passes() {
    let report = guard()
        .route("/hello", |_| get_request("/hello".into()))
        .route("/lru/{id}", |i| get_request(format!("/lru/{i}")))
        .route("/config", |_| get_request("/config".into()))
        .run(app(Globals::default()))
        .await
        .unwrap();
    assert!(report.passed(), "{report}");
    assert!(report.memory.is_tracked());
    for verdict in &report.routes {
        assert_eq!(verdict.finished_requests, 250, "{report}");
        let bytes = verdict.bytes_per_request.unwrap();
        assert!(
            bytes <= 8,
            "{}: {bytes} bytes per request\n{report}",
            verdict.route
        );
    }
    println!("{report}");
    // `check` is the same run, panicking on failure.
    guard()
        .route("/hello", |_| get_request("/hello".into()))
        .check(app(Globals::default()))
        .await;
}

#[tokio::test]
async fn leaky_routes_fail_with_the_reason_in_a_table() {
    // Orphan tasks never settle: wait for them a little only.
    let detector = LeakDetector::builder().settle_timeout(Duration::from_millis(100));
    let report = LeakGuard::with_detector(detector)
        .without_baseline()
        .route("/hello", |_| get_request("/hello".into()))
        .route("/leak/map/{id}", |i| get_request(format!("/leak/map/{i}")))
        .route("/leak/key/{id}", |i| get_request(format!("/leak/key/{i}")))
        .route("/leak/task", |_| get_request("/leak/task".into()))
        .run(app(Globals::default()))
        .await
        .unwrap();
    assert!(!report.passed());
    println!("{report}");
    assert!(route(&report, "/hello").passed(), "{report}");

    let map = route(&report, "/leak/map/{id}");
    let bytes = map.bytes_per_request.unwrap();
    assert!((4096..4096 + 512).contains(&bytes), "{report}");
    assert!(
        map.leaks.iter().any(|l| l.kind == LeakKind::RetainedMemory),
        "{report}"
    );
    assert!(map
        .problems
        .iter()
        .any(|p| p.contains("over the budget of 64")));

    // 48 bytes of key and the set's own growth: small, over the budget, and a leak whatever
    // its size.
    let key = route(&report, "/leak/key/{id}");
    let bytes = key.bytes_per_request.unwrap();
    assert!((48 + 16..48 + 128).contains(&bytes), "{report}");
    assert!(!key.passed());
    assert!(
        key.leaks.iter().any(|l| l.kind == LeakKind::RetainedMemory),
        "{report}"
    );

    // Every task is an orphan, and what the tasks hold is the route's retained memory.
    let task = route(&report, "/leak/task");
    let orphans = task.leaks.iter().filter(|l| l.kind == LeakKind::OrphanTask);
    assert_eq!(orphans.count(), 250, "{report}");
    let mut others = task.leaks.iter().filter(|l| l.kind != LeakKind::OrphanTask);
    assert!(
        others.all(|l| l.kind == LeakKind::RetainedMemory),
        "{report}"
    );

    let text = report.to_string();
    assert!(
        text.contains("\n/leak/map/{id}:\n  - 1 leak report\n"),
        "{text}"
    );
    let task_reports = task.leaks.len();
    assert!(
        text.contains(&format!("\n/leak/task:\n  - {task_reports} leak reports\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("  … and {} more\n", task_reports - 5)),
        "{text}"
    );
    assert!(
        text.contains("RetainedMemory [Confirmed] GET /leak/map/{id}"),
        "{text}"
    );
    let failing = text.lines().filter(|l| l.ends_with("FAIL")).count();
    assert_eq!(failing, 3, "{text}");
}

#[tokio::test]
async fn a_baseline_is_written_then_a_regression_past_it_fails() {
    let path = temp_file("leak-guard-baseline.txt");
    let globals = Globals::default();
    let routes = |guard: LeakGuard<Body>| {
        guard
            .budget(4096)
            .route("/hello", |_| get_request("/hello".into()))
            .route("/grows/{id}", |i| get_request(format!("/grows/{i}")))
    };
    // Record: nothing kept.
    let recorded = routes(LeakGuard::new().update_baseline(&path))
        .run(app(globals.clone()))
        .await
        .unwrap();
    assert!(recorded.passed(), "{recorded}");
    let text = std::fs::read_to_string(&path).unwrap();
    let figures: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(figures.len(), 2, "{text}");
    assert!(
        figures.iter().any(|l| l.ends_with(" /grows/{id}")),
        "{text}"
    );

    // Unchanged: passes.
    let same = routes(LeakGuard::new().baseline(&path))
        .run(app(globals.clone()))
        .await
        .unwrap();
    assert!(same.passed(), "{same}");

    // 256 bytes kept per request: within the budget, past the baseline.
    globals.grows_by.store(256, Ordering::Relaxed);
    let grown = routes(LeakGuard::new().baseline(&path))
        .run(app(globals.clone()))
        .await
        .unwrap();
    println!("{grown}");
    assert!(!grown.passed());
    let verdict = route(&grown, "/grows/{id}");
    // However small, memory kept by every request is a leak too.
    assert!(
        verdict
            .leaks
            .iter()
            .all(|l| l.kind == LeakKind::RetainedMemory),
        "{grown}"
    );
    assert_eq!(verdict.allowed, Some(verdict.baseline.unwrap() + 16));
    let text = grown.to_string();
    assert!(text.contains("up from"), "{text}");
    let row = text.lines().find(|l| l.contains("/grows/{id}")).unwrap();
    assert!(row.contains("+2") && row.ends_with("FAIL"), "{row}");
}

#[tokio::test]
async fn a_malformed_baseline_is_an_error_naming_the_file_and_line() {
    let path = temp_file("leak-guard-malformed.txt");
    std::fs::write(&path, "# baseline\n0 /hello\nforty-eight /users/{id}\n").unwrap();
    let error = guard()
        .baseline(&path)
        .route("/hello", |_| get_request("/hello".into()))
        .run(app(Globals::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, GuardError::Baseline { line: Some(3), .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.starts_with(&format!("baseline file {}, line 3:", path.display())),
        "{text}"
    );
    assert!(text.contains("`forty-eight` is not a number"), "{text}");

    let missing = temp_file("leak-guard-missing.txt");
    let error = guard()
        .baseline(&missing)
        .route("/hello", |_| get_request("/hello".into()))
        .run(app(Globals::default()))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("LEAKWATCH_BASELINE_UPDATE=1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_template_the_service_does_not_use_fails() {
    let report = guard()
        .requests(10)
        .warmup(0)
        .route("/users/:id", |i| get_request(format!("/hello?{i}")))
        .run(app(Globals::default()))
        .await
        .unwrap();
    let verdict = &report.routes[0];
    assert_eq!(verdict.finished_requests, 0);
    assert!(
        verdict.problems[0].contains("saw 0 of the 10 requests"),
        "{report}"
    );
}
