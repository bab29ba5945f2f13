//! `TrackingAllocator` against `System`: one allocation and its free, for 16 B, 256 B, 4 KiB and
//! 64 KiB, outside any request and inside one (where the block is also charged to the request's
//! scope slot and route) — in exact mode, and in sampled mode with Go's mean of 512 KiB (where
//! most blocks go straight to `System`).
//!
//! ```text
//! cargo bench --bench alloc
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use leakwatch::{server::RequestBody, LeakDetector, TrackingAllocator};
use tower::{ServiceBuilder, ServiceExt};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::system();

/// Sampled mode, called directly (the global allocator stays exact, for the requests).
static SAMPLED: TrackingAllocator = TrackingAllocator::sampled(512 * 1024);

const SIZES: [usize; 4] = [16, 256, 4096, 64 * 1024];

/// `iters` allocations and frees of `layout` through `alloc`, timed.
///
/// A block is allocated and freed first with another one kept after it, so that the timed
/// blocks reuse a freed chunk rather than merging into and splitting off the top of the heap,
/// which for blocks too large for glibc's per-thread cache depends on whatever the process
/// allocated before (and made the 4 KiB and 64 KiB figures swing by ±50 % between runs).
fn churn<A: GlobalAlloc>(alloc: &A, layout: Layout, iters: u64) -> Duration {
    // SAFETY: `layout` has a non-zero size; both blocks are freed with it.
    let fence = unsafe {
        let first = alloc.alloc(layout);
        let fence = alloc.alloc(layout);
        alloc.dealloc(first, layout);
        fence
    };
    let start = Instant::now();
    for _ in 0..iters {
        // SAFETY: `layout` has a non-zero size; the block is freed at once with it.
        unsafe {
            let ptr = alloc.alloc(layout);
            black_box(ptr);
            alloc.dealloc(ptr, layout);
        }
    }
    let elapsed = start.elapsed();
    // SAFETY: allocated above with `layout`, not freed yet.
    unsafe { alloc.dealloc(fence, layout) };
    elapsed
}

fn alloc_free(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let detector = LeakDetector::builder()
        .route_fn(|_, _| Some("/bench"))
        .build()
        .unwrap();
    assert!(detector.stats().memory.is_tracked());

    let mut group = c.benchmark_group("alloc+free");
    for size in SIZES {
        let layout = Layout::from_size_align(size, 8).unwrap();
        group.bench_with_input(BenchmarkId::new("System", size), &layout, |b, &layout| {
            b.iter_custom(|iters| churn(&System, layout, iters))
        });
        group.bench_with_input(
            BenchmarkId::new("Tracking, outside a request", size),
            &layout,
            |b, &layout| b.iter_custom(|iters| churn(&ALLOC, layout, iters)),
        );
        group.bench_with_input(
            BenchmarkId::new("Tracking sampled", size),
            &layout,
            |b, &layout| b.iter_custom(|iters| churn(&SAMPLED, layout, iters)),
        );
        group.bench_with_input(
            BenchmarkId::new("Tracking, inside a request", size),
            &layout,
            |b, &layout| {
                b.iter_custom(|iters| {
                    // The loop runs in a handler, so the request's scope is current.
                    let elapsed = Arc::new(Mutex::new(Duration::ZERO));
                    let out = elapsed.clone();
                    let service = ServiceBuilder::new().layer(detector.layer()).service_fn(
                        move |_: Request<RequestBody<Full<Bytes>>>| {
                            let out = out.clone();
                            async move {
                                *out.lock().unwrap() = churn(&ALLOC, layout, iters);
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let request = Request::get("/bench")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    drop(rt.block_on(service.oneshot(request)).unwrap());
                    let elapsed = *elapsed.lock().unwrap();
                    elapsed
                })
            },
        );
    }
    group.finish();
    detector.sweep_now();
}

criterion_group!(benches, alloc_free);
criterion_main!(benches);
