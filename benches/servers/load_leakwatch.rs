//! Load-benchmark server with leakwatch: `TrackingAllocator` and the layer; with
//! `LEAKWATCH_SITES=sampled`, allocation sites sampled every 512 KiB on average; with
//! `LEAKWATCH_LAYER=off`, the allocator without the layer; with `LOAD_STATS=1`, the registry's
//! entries, skipped requests and requests whose memory went untracked printed every 2 s (to
//! check that every request was tracked). See `benches/load.sh`.

#[path = "load/common.rs"]
mod common;

use leakwatch::{AllocationSites, LeakDetector, TrackingAllocator};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::system();

fn main() {
    let sites = match std::env::var("LEAKWATCH_SITES").as_deref() {
        Ok("sampled") => AllocationSites::Sampled {
            mean_bytes: std::num::NonZeroU64::new(512 * 1024).unwrap(),
        },
        _ => AllocationSites::Off,
    };
    let sweep_ms: u64 = std::env::var("LEAKWATCH_SWEEP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    ALLOC.set_allocation_sites(sites);
    let detector = LeakDetector::builder()
        .sweep_interval(std::time::Duration::from_millis(sweep_ms))
        .registry_capacity(1 << 20)
        .build()
        .expect("valid configuration");
    if std::env::var("LOAD_STATS").is_ok() {
        let detector = detector.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(2));
            let stats = detector.stats();
            eprintln!(
                "registry entries {}, skipped {}, memory untracked {}",
                stats.registry_entries, stats.uncounted.registry_entries, stats.uncounted.requests
            );
        });
    }
    if std::env::var("LEAKWATCH_LAYER").as_deref() == Ok("off") {
        // The allocator alone, for telling its cost from the layer's.
        common::serve(common::routes());
    } else {
        let app = common::routes().layer(detector.layer());
        common::serve(common::with_stats(app, detector));
    }
}
