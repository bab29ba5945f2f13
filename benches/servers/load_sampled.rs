//! Load-benchmark server with leakwatch's allocator in sampled mode (one sample per 512 KiB on
//! average) and the layer; with `LEAKWATCH_LAYER=off`, the sampled allocator without the layer.
//! See `benches/load.sh`.

#[path = "load/common.rs"]
mod common;

use leakwatch::{LeakDetector, TrackingAllocator};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::sampled(512 * 1024);

fn main() {
    let detector = LeakDetector::builder()
        .registry_capacity(1 << 20)
        .build()
        .expect("valid configuration");
    assert!(
        detector.stats().memory == leakwatch::stats::MemoryAccounting::Estimated,
        "the sampled allocator is installed"
    );
    if std::env::var("LEAKWATCH_LAYER").as_deref() == Ok("off") {
        common::serve(common::routes());
    } else {
        let app = common::routes().layer(detector.layer());
        common::serve(common::with_stats(app, detector));
    }
}
