//! Load-benchmark server without the tracking allocator: the system allocator, and no layer —
//! or, with `LEAKWATCH_LAYER=on`, the layer alone (memory not tracked). See `benches/load.sh`.

#[path = "load/common.rs"]
mod common;

fn main() {
    if std::env::var("LEAKWATCH_LAYER").as_deref() == Ok("on") {
        let detector = leakwatch::LeakDetector::builder()
            .build()
            .expect("valid configuration");
        common::serve(common::routes().layer(detector.layer()));
    } else {
        common::serve(common::routes());
    }
}
