//! Load-benchmark server without the tracking allocator: the system allocator, and no layer —
//! or, with `LEAKWATCH_LAYER=on`, the layer alone (memory not tracked), or with
//! `LEAKWATCH_LAYER=identity` a layer that does nothing (what `Router::layer` itself costs), or
//! with `LEAKWATCH_LAYER=ignored` the layer with every route ignored (bodies wrapped, no scope).
//! See `benches/load.sh`.
//!
//! With `LOAD_BUSY_NS=<ns>` (and no leakwatch) every request first busy-waits that long in a
//! layer of its own: a known cost per request, for seeing how much a given per-request cost
//! lowers the requests per second on the machine at hand.

#[path = "load/common.rs"]
mod common;

use std::time::{Duration, Instant};

fn main() {
    if std::env::var("LEAKWATCH_LAYER").as_deref() == Ok("on") {
        let detector = leakwatch::LeakDetector::builder()
            .build()
            .expect("valid configuration");
        let app = common::routes().layer(detector.layer());
        common::serve(common::with_stats(app, detector));
    } else if std::env::var("LEAKWATCH_LAYER").as_deref() == Ok("ignored") {
        // The layer with both routes ignored: bodies wrapped, no scope — the floor of a layer
        // that watches bodies.
        let detector = leakwatch::LeakDetector::builder()
            .ignore_route("/hello")
            .ignore_route("/alloc")
            .ignore_route("/json")
            .ignore_route("/upstream")
            .build()
            .expect("valid configuration");
        common::serve(common::routes().layer(detector.layer()));
    } else if std::env::var("LEAKWATCH_LAYER").as_deref() == Ok("identity") {
        // What any middleware costs under `Router::layer`, before it does anything.
        common::serve(common::routes().layer(tower::layer::util::Identity::new()));
    } else if let Some(busy) = std::env::var("LOAD_BUSY_NS")
        .ok()
        .and_then(|ns| ns.parse().ok())
    {
        let busy = Duration::from_nanos(busy);
        common::serve(common::routes().layer(tower::util::MapRequestLayer::new(
            move |request: axum::extract::Request| {
                let start = Instant::now();
                while start.elapsed() < busy {
                    std::hint::spin_loop();
                }
                request
            },
        )));
    } else {
        common::serve(common::routes());
    }
}
