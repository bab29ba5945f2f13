//! Allocation sites: a `RetainedMemory` report lists where the retained memory was allocated,
//! and the handler's own line is among the sites — in exact mode and when sampling by bytes.
//! One test (the sampling mode is process-wide).
#![cfg(feature = "axum")]

mod support;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::Request;
use leakwatch::snapshot::Snapshot;
use leakwatch::stats::MemoryAccounting;
use leakwatch::{AllocationSites, LeakKind, LeakReport};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

type Map = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

/// The line of the allocation in `leak_map`.
const MAP_LINE: u32 = line!() + 4;

/// L3: 4 KiB of request data kept in a global map.
async fn leak_map(State(map): State<Map>, Path(id): Path<u64>) -> &'static str {
    let data = vec![id as u8; 4096];
    map.lock().unwrap().insert(id, data);
    "kept"
}

async fn run(sites: AllocationSites) -> (LeakReport, Snapshot) {
    ALLOC.set_allocation_sites(sites);
    let detector = support::builder(&leakwatch::sink::CollectingSink::new())
        .memory_window(100)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/leak/map/{id}", get(leak_map))
        .with_state(Map::default())
        .layer(detector.layer());
    for i in 0..300 {
        let request = Request::get(format!("/leak/map/{i}"))
            .body(Body::empty())
            .unwrap();
        support::read_body(app.clone().oneshot(request).await.unwrap()).await;
    }
    detector.sweep_now();
    let leaks = detector.leaks();
    assert_eq!(leaks.len(), 1, "{leaks:#?}");
    assert_eq!(leaks[0].kind, LeakKind::RetainedMemory);
    (leaks[0].clone(), detector.snapshot())
}

#[tokio::test]
async fn retained_memory_reports_list_the_handlers_allocation_site() {
    for mode in [
        AllocationSites::Exact,
        AllocationSites::Sampled {
            mean_bytes: NonZeroU64::new(16 * 1024).unwrap(),
        },
    ] {
        let (report, snapshot) = run(mode).await;
        assert!(!report.sites.is_empty(), "{mode:?}: {report:#?}");
        assert!(report.sites.len() <= leakwatch::LeakReport::MAX_SITES);
        let handler = report
            .sites
            .iter()
            .find(|s| {
                s.line == Some(MAP_LINE)
                    && s.file
                        .as_deref()
                        .is_some_and(|f| f.ends_with("alloc_sites.rs"))
            })
            .unwrap_or_else(|| {
                panic!(
                    "{mode:?}: the handler's line {MAP_LINE} is not among {:#?}",
                    report.sites
                )
            });
        assert!(handler.function.contains("leak_map"), "{handler:?}");
        // 300 × 4 KiB were kept there: exactly in exact mode, roughly when sampling.
        let expected = 300.0 * 4096.0;
        let tolerance = if mode == AllocationSites::Exact {
            0.01
        } else {
            0.5
        };
        assert!(
            (handler.bytes as f64 - expected).abs() <= expected * tolerance,
            "{mode:?}: {} bytes at the handler's line, expected about {expected}",
            handler.bytes
        );
        assert!(report.to_string().contains("allocated at"), "{report}");

        // The snapshot shows the same sites, and the route's memory.
        assert_eq!(snapshot.stats.memory, MemoryAccounting::Exact);
        assert_eq!(snapshot.reports, vec![report.clone()]);
        let sites = &snapshot.sites;
        assert_eq!(sites.len(), 1, "{sites:#?}");
        assert_eq!(sites[0].route, "/leak/map/{id}");
        assert!(sites[0].sites.iter().any(|s| s.line == Some(MAP_LINE)));
        let route = &snapshot.stats.routes[0];
        assert_eq!(
            (route.route.as_str(), route.requests_in_flight),
            ("/leak/map/{id}", 0)
        );
        assert_eq!(route.finished_requests, 300);
        assert!(route.live_bytes.unwrap() >= 300 * 4096, "{route:?}");
        assert_eq!(route.retained_bytes, route.live_bytes, "nothing in flight");
        let text = snapshot.to_string();
        let (accounting, heading) = if mode == AllocationSites::Exact {
            (MemoryAccounting::Exact, "allocation sites (exact bytes)")
        } else {
            (
                MemoryAccounting::Estimated,
                "allocation sites (estimated bytes)",
            )
        };
        assert_eq!(snapshot.sites_accounting, accounting);
        assert!(text.contains(heading), "{text}");
        assert!(
            text.contains(&format!("alloc_sites.rs:{MAP_LINE}")),
            "{text}"
        );
    }
    ALLOC.set_allocation_sites(AllocationSites::Off);
}
