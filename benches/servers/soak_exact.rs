//! `benches/soak.sh` with the allocator in exact mode.

#[path = "soak/common.rs"]
mod common;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

fn main() {
    common::run("exact");
}
