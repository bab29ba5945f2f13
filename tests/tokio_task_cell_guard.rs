//! The tokio version guard of the allocator's view of tasks: it fails, saying what changed, when
//! a tokio upgrade changes what leakwatch relies on to see a plain `tokio::spawn` on stable
//! flags — the alignment of the task's cell (`runtime/task/core.rs`), that the cell is allocated
//! on the spawning thread inside the call, and the frames leakwatch reads the spawn line from.
#![cfg(all(feature = "axum", not(tokio_unstable)))]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::{LeakKind, TrackingAllocator};
use tower::ServiceExt;

/// leakwatch's allocator, with a window in which the alignments of new blocks are noted.
struct Noting(TrackingAllocator);

thread_local! {
    static NOTING: Cell<bool> = const { Cell::new(false) };
}
static LARGEST_ALIGN: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged; noting reads a const thread-local and an atomic.
unsafe impl GlobalAlloc for Noting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if NOTING.try_with(Cell::get).unwrap_or(false) {
            LARGEST_ALIGN.fetch_max(layout.align(), Ordering::Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Noting = Noting(TrackingAllocator::new(System));

/// What tokio's task cell is aligned to on this architecture, as leakwatch expects it.
const EXPECTED: usize = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "powerpc64"
)) {
    128
} else if cfg!(target_arch = "s390x") {
    256
} else {
    64
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_still_allocates_the_task_cell_as_leakwatch_expects() {
    NOTING.with(|n| n.set(true));
    let handle = tokio::spawn(async { 1u8 });
    NOTING.with(|n| n.set(false));
    let largest = LARGEST_ALIGN.load(Ordering::Relaxed);
    assert_eq!(handle.await.unwrap(), 1);
    assert_eq!(
        largest, EXPECTED,
        "tokio::spawn allocated no block aligned to {EXPECTED} on the spawning thread inside \
         the call (largest alignment: {largest}): tokio's task cell (runtime/task/core.rs) \
         changed; update CELL_ALIGN in src/alloc/cells.rs and the docs that name it"
    );

    // End to end: a plain spawn inside a request, seen at its own line.
    let (detector, _) = support::detector();
    let line = line!() + 5;
    let app = Router::new()
        .route(
            "/spawn",
            get(|| async {
                tokio::spawn(std::future::pending::<()>());
                "spawned"
            }),
        )
        .layer(detector.layer());
    let request = Request::get("/spawn")
        .body(axum::body::Body::empty())
        .unwrap();
    support::read_body(app.oneshot(request).await.unwrap()).await;
    detector.sweep_now();
    let orphans = support::of_kind(&detector.leaks(), LeakKind::OrphanTask);
    let at = orphans.first().and_then(|o| o.location);
    assert!(
        at.is_some_and(|at| at.file == "tests/tokio_task_cell_guard.rs" && at.line == line),
        "a plain tokio::spawn was not reported at tests/tokio_task_cell_guard.rs:{line} \
         (found: {at:?}): the frames leakwatch reads from the cell's allocation changed — \
         TASK_CREATION (tokio's functions that create a task) or the tokio frames skipped \
         above them, in src/judge/cells.rs. Reports: {orphans:#?}"
    );
}
