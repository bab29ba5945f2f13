//! Sampled attribution: with the allocator in sampled mode, a route that keeps 4 KiB per request
//! is estimated within a few per cent and reported as `RetainedMemory`, marked estimated; a
//! route whose requests free what they allocate is estimated near zero and never reported.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use leakwatch::server::RequestBody;
use leakwatch::stats::MemoryAccounting;
use leakwatch::LeakKind;
use tower::{ServiceBuilder, ServiceExt};

/// One sample per 64 KiB allocated: a test's worth of requests gives a few hundred samples.
const MEAN: u64 = 64 * 1024;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::sampled(MEAN);

const REQUESTS: usize = 4000;
const KEPT: usize = 4096;

#[tokio::test]
async fn estimates_follow_what_routes_keep() {
    let sink = leakwatch::sink::CollectingSink::new();
    let detector = support::builder(&sink)
        .route_fn(|_, uri| match uri.path() {
            "/keep" => Some("/keep"),
            "/temporary" => Some("/temporary"),
            _ => None,
        })
        .build()
        .unwrap();
    let stats = detector.stats();
    assert!(
        stats.memory == leakwatch::stats::MemoryAccounting::Estimated,
        "{stats:?}"
    );
    // Reserved outside any request, so that keeping a block never grows the vector inside one.
    let kept: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::with_capacity(REQUESTS)));
    let service = {
        let kept = kept.clone();
        ServiceBuilder::new().layer(detector.layer()).service_fn(
            move |req: Request<RequestBody<Full<Bytes>>>| {
                let kept = kept.clone();
                async move {
                    let block = vec![7u8; KEPT];
                    let scratch = vec![1u8; 16 * 1024];
                    std::hint::black_box(&scratch);
                    if req.uri().path() == "/keep" {
                        kept.lock().unwrap().push(block);
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            },
        )
    };
    for path in ["/keep", "/temporary"] {
        for _ in 0..REQUESTS {
            let request = Request::get(path).body(Full::new(Bytes::new())).unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            support::read_body(response).await;
            detector.sweep_now();
        }
    }
    detector.sweep_now();

    let stats = detector.stats();
    let live = |route: &str| {
        let found = stats.routes.iter().find(|r| r.route == route);
        found.and_then(|r| r.live_bytes).unwrap_or(0)
    };
    let expected = (REQUESTS * KEPT) as f64;
    let estimate = live("/keep") as f64;
    assert!(
        (estimate - expected).abs() < 0.3 * expected,
        "/keep: estimated {estimate} bytes, kept {expected}"
    );
    assert!(
        live("/temporary") < 3 * MEAN,
        "/temporary: estimated {} bytes",
        live("/temporary")
    );
    assert_eq!(stats.uncounted.samples, 0);

    let leaks = detector.leaks();
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    let report = &leaks[0];
    assert_eq!(
        (report.kind, report.route.as_str()),
        (LeakKind::RetainedMemory, "/keep")
    );
    assert!(report.bytes_estimated);
    assert!(report.to_string().contains("retained=~"), "{report}");
    let snapshot = detector.snapshot();
    assert_eq!(snapshot.stats.memory, MemoryAccounting::Estimated);
    drop(kept);
}
