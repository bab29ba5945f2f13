//! Small leaks are leaks: a route whose every request keeps a few bytes for good — a 48-byte key
//! added to a global set, a small struct pushed onto a global list, an 800-byte buffer leaked
//! with `mem::forget` — is reported as `RetainedMemory` within a few `memory_window`s of
//! requests, though no request keeps the threshold's kilobyte. A bounded cache, a one-time
//! initialisation, a pool that reaches its plateau, thread-local buffers and what hyper and
//! tokio grow as a real server serves never are. Each on a current-thread and a multi-thread
//! runtime, with a sweep after every request and after every fifty.
//!
//! Every allocation's site is recorded (`AllocationSites::Exact`), so that the detector knows
//! the memory is the user's code's: a leak only the growth rule sees (the list's buffer, held
//! by the one request that allocated it) is judged by requests alone, without waiting out
//! `dependency_growth_span` as memory of unknown owner does.
#![cfg(feature = "axum")]

mod support;

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
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

const WINDOW: u64 = 100;
/// The first window is a warm-up, then four windows must grow (500 requests) — or, for a list
/// whose buffer doubles, the spans between 100, 200, 400 and 800 requests; a few more.
const REQUESTS: u64 = 1000;

/// A small struct, pushed onto a global list per request.
#[allow(dead_code)]
struct Visit {
    user: u64,
    at: u64,
    flags: u32,
}

#[derive(Clone, Default)]
struct Globals {
    keys: Arc<Mutex<HashSet<String>>>,
    visits: Arc<Mutex<Vec<Visit>>>,
    cache: Arc<Mutex<VecDeque<Vec<u8>>>>,
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn app(detector: &LeakDetector, globals: Globals) -> Router {
    Router::new()
        .route("/leak/key/{id}", get(leak_key))
        .route("/leak/visit/{id}", get(leak_visit))
        .route("/leak/forget/{id}", get(leak_forget))
        .route("/ok/cache/{id}", get(ok_cache))
        .route("/ok/once/{id}", get(ok_once))
        .route("/ok/pool/{id}", get(ok_pool))
        .route("/ok/thread-local/{id}", get(ok_thread_local))
        .with_state(globals)
        .layer(detector.layer())
}

async fn leak_key(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    g.keys.lock().unwrap().insert(format!("{id:048}"));
    "kept a 48-byte key"
}

async fn leak_visit(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    let visit = Visit {
        user: id,
        at: id * 3,
        flags: 1,
    };
    g.visits.lock().unwrap().push(visit);
    "kept a visit"
}

async fn leak_forget(Path(id): Path<u64>) -> &'static str {
    std::mem::forget(vec![id as u8; 800]);
    "forgot 800 bytes"
}

/// A cache of the 64 newest entries of 100 bytes.
async fn ok_cache(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    let mut cache = g.cache.lock().unwrap();
    cache.push_back(vec![id as u8; 100]);
    if cache.len() > 64 {
        cache.pop_front();
    }
    "cached"
}

async fn ok_once() -> String {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| vec![1; 64 * 1024]).len().to_string()
}

/// Takes three 1 KiB buffers from a pool (made when the pool has none) and gives them back.
async fn ok_pool(State(g): State<Globals>) -> &'static str {
    let taken: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            g.pool
                .lock()
                .unwrap()
                .pop()
                .unwrap_or_else(|| vec![0; 1024])
        })
        .collect();
    g.pool.lock().unwrap().extend(taken);
    "pooled"
}

/// A scratch buffer per thread, grown to 4 KiB by the first request on the thread.
async fn ok_thread_local(Path(id): Path<u64>) -> String {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.clear();
        scratch.resize(4096, id as u8);
        scratch.len().to_string()
    })
}

fn detector() -> LeakDetector {
    ALLOC.set_allocation_sites(leakwatch::AllocationSites::Exact);
    support::builder(&leakwatch::sink::CollectingSink::new())
        .memory_window(WINDOW)
        .build()
        .unwrap()
}

/// Sends `REQUESTS` requests to `path` (`{i}` replaced), sweeping every `sweep_every`
/// requests, then once more; returns every report made.
async fn drive(app: &Router, detector: &LeakDetector, path: &str, every: u64) -> Vec<LeakReport> {
    let mut reports = Vec::new();
    for i in 0..REQUESTS {
        let uri = path.replace("{i}", &i.to_string());
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert!(response.status().is_success());
        support::read_body(response).await;
        if (i + 1) % every == 0 {
            reports.extend(detector.sweep_now());
        }
    }
    reports.extend(detector.sweep_now());
    reports
}

/// Checks that `path` is reported once, on `route`, with about `per_request` bytes per request
/// (up to three times it: a set's or a list's own buffer comes on top).
async fn check_leak(path: &str, route: &str, per_request: u64, every: u64) {
    let detector = detector();
    let app = app(&detector, Globals::default());
    let reports = drive(&app, &detector, path, every).await;
    let confirmed: Vec<&LeakReport> = reports
        .iter()
        .filter(|r| r.state == LeakState::Confirmed)
        .collect();
    assert_eq!(confirmed.len(), 1, "{reports:#?}");
    let report = confirmed[0];
    assert_eq!(
        (report.kind, report.route.as_str()),
        (LeakKind::RetainedMemory, route)
    );
    // Found by its witnesses (old requests still holding memory, the route growing with
    // them) or by the route's growth alone: no byte floor decides.
    assert!(
        report.detail.contains("grows with their number")
            || report.detail.contains("still hold memory"),
        "{report}"
    );
    let each = detector.leaks()[0].bytes_per_request.unwrap();
    assert!(
        (per_request..3 * per_request).contains(&each),
        "{each} bytes per request, expected about {per_request}: {report}"
    );
}

async fn check_clean(path: &str, every: u64) {
    let detector = detector();
    let app = app(&detector, Globals::default());
    let reports = drive(&app, &detector, path, every).await;
    assert!(reports.is_empty(), "{reports:#?}");
    assert!(detector.leaks().is_empty());
    let stats = detector.stats();
    assert_eq!(stats.routes[0].finished_requests, REQUESTS, "{stats:#?}");
    // Every one of them had its memory counted and judged.
    assert_eq!(stats.uncounted.requests, 0, "{stats:#?}");
}

/// A real hyper server and client: what hyper and tokio allocate and keep while serving
/// (connection buffers, the runtime's slabs and timers) is not the route's leak.
async fn check_real_server(every: u64) {
    let detector = detector();
    let (addr, server) = support::serve(app(&detector, Globals::default())).await;
    let client = support::client();
    let mut reports = Vec::new();
    for i in 0..REQUESTS {
        let uri = format!("http://{addr}/ok/cache/{i}").parse().unwrap();
        support::read_body(client.get(uri).await.unwrap()).await;
        // The server may still be closing the request's scope after the client has read the
        // response: sweep once every scope has closed.
        support::wait_until("the request closed", || {
            detector.stats().requests_in_flight == 0
        })
        .await;
        if (i + 1) % every == 0 {
            reports.extend(detector.sweep_now());
        }
    }
    reports.extend(detector.sweep_now());
    assert!(reports.is_empty(), "{reports:#?}");
    server.abort();
}

macro_rules! scenarios {
    ($($name:ident => $check:expr;)*) => {
        mod current_thread {
            use super::*;
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    let check = $check;
                    check(1).await;
                    check(50).await;
                }
            )*
        }
        mod multi_thread {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let check = $check;
                    check(1).await;
                    check(50).await;
                }
            )*
        }
    };
}

scenarios! {
    a_48_byte_key_added_to_a_global_set => |every| check_leak("/leak/key/{i}", "/leak/key/{id}", 48, every);
    a_small_struct_pushed_onto_a_global_list => |every| check_leak("/leak/visit/{i}", "/leak/visit/{id}", 24, every);
    an_800_byte_buffer_leaked_with_mem_forget => |every| check_leak("/leak/forget/{i}", "/leak/forget/{id}", 800, every);
    a_bounded_cache_of_small_entries => |every| check_clean("/ok/cache/{i}", every);
    a_one_time_initialisation => |every| check_clean("/ok/once/{i}", every);
    a_pool_that_reaches_its_plateau => |every| check_clean("/ok/pool/{i}", every);
    thread_local_buffers => |every| check_clean("/ok/thread-local/{i}", every);
    what_hyper_and_tokio_keep_while_serving => check_real_server;
}
