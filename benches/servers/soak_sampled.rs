//! `benches/soak.sh` with the allocator in sampled mode (512 KiB).

#[path = "soak/common.rs"]
mod common;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::sampled(512 * 1024);

fn main() {
    common::run("sampled");
}
