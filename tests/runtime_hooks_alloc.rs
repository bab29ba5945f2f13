//! With `leakwatch::instrument_runtime`, a task spawned by plain `tokio::spawn` in a request
//! polls with the request's scope current: memory it allocates after the response was sent, and
//! keeps, counts for the request's route — and memory a task spawned outside requests keeps does
//! not — on a current-thread and on a multi-thread runtime. One test (the allocator is
//! process-wide). Needs `RUSTFLAGS="--cfg tokio_unstable"`.
#![cfg(all(tokio_unstable, feature = "axum"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::LeakKind;
use tokio::sync::watch;
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const REQUESTS: usize = 300;
const KEPT: usize = 4096;

#[derive(Clone)]
struct Globals {
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
    go: watch::Sender<bool>,
    done: Arc<AtomicUsize>,
}

/// Spawns (plain `tokio::spawn`) a task that waits until told, then keeps 4 KiB for good.
async fn late(State(g): State<Globals>, Path(id): Path<u64>) -> &'static str {
    let mut go = g.go.subscribe();
    tokio::spawn(async move {
        let _ = go.wait_for(|go| *go).await;
        g.kept.lock().unwrap().push(vec![id as u8; KEPT]);
        g.done.fetch_add(1, Ordering::SeqCst);
    });
    "spawned"
}

#[test]
fn memory_a_plainly_spawned_task_keeps_counts_for_its_request() {
    support::on_both_hooked_runtimes(check);
}

/// One run: its own detector (so its own route slot) and its own kept memory.
async fn check() {
    let (detector, _) = support::detector();
    let globals = Globals {
        kept: Arc::default(),
        go: watch::channel(false).0,
        done: Arc::default(),
    };
    let app = Router::new()
        .route("/late/{id}", get(late))
        .with_state(globals.clone())
        .layer(detector.layer());
    for i in 0..REQUESTS {
        let request = Request::get(format!("/late/{i}"))
            .body(Body::empty())
            .unwrap();
        support::read_body(app.clone().oneshot(request).await.unwrap()).await;
    }
    // A task outside any request keeps as much: it must count for no route.
    let outside = globals.clone();
    let mut go = outside.go.subscribe();
    let background = tokio::spawn(async move {
        let _ = go.wait_for(|go| *go).await;
        outside
            .kept
            .lock()
            .unwrap()
            .push(vec![0u8; REQUESTS * KEPT]);
    });
    // Every response has been sent; only now do the tasks allocate.
    globals.go.send_replace(true);
    background.await.unwrap();
    support::wait_until("every task kept its memory", || {
        globals.done.load(Ordering::SeqCst) == REQUESTS
    })
    .await;
    detector.sweep_now();
    let live = detector
        .stats()
        .routes
        .into_iter()
        .find(|r| r.route == "/late/{id}")
        .and_then(|r| r.live_bytes)
        .expect("the route's memory is counted");
    let expected = (REQUESTS * KEPT) as u64;
    assert!(
        live >= expected && live < expected + expected / 10,
        "{live} live bytes on the route, expected about {expected}"
    );
    let memory = support::of_kind(&detector.leaks(), LeakKind::RetainedMemory);
    assert_eq!(memory.len(), 1, "{memory:#?}");
    assert_eq!(memory[0].route, "/late/{id}");
    assert_eq!(
        memory[0].bytes_per_request,
        Some(KEPT as u64),
        "{}",
        memory[0]
    );
}
