//! `benches/alloc_instructions.sh`: `N` allocations and frees of one `SIZE`-byte block through
//! `System`, `TrackingAllocator` in exact mode, or in sampled mode (512 KiB), called directly,
//! outside any request — for counting instructions per allocation and free under callgrind.
//!
//! ```text
//! cargo run --release --example alloc_churn -- sampled 256 1000000
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use leakwatch::TrackingAllocator;

static EXACT: TrackingAllocator = TrackingAllocator::system();
static SAMPLED: TrackingAllocator = TrackingAllocator::sampled(512 * 1024);

fn churn(alloc: &impl GlobalAlloc, layout: Layout, n: u64) {
    for _ in 0..n {
        // SAFETY: a non-zero size; the block is freed at once with the same layout.
        unsafe {
            let ptr = alloc.alloc(layout);
            black_box(ptr);
            alloc.dealloc(ptr, layout);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: alloc_churn system|exact|sampled SIZE N";
    let (mode, size, n) = match &args[1..] {
        [mode, size, n] => (
            mode.as_str(),
            size.parse().expect(usage),
            n.parse().expect(usage),
        ),
        _ => panic!("{usage}"),
    };
    let layout = Layout::from_size_align(size, 8).expect("a valid size");
    match mode {
        "system" => churn(&System, layout, n),
        "exact" => churn(&EXACT, layout, n),
        "sampled" => churn(&SAMPLED, layout, n),
        _ => panic!("{usage}"),
    }
}
