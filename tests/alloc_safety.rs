//! The `unsafe` code of `TrackingAllocator` in exact mode, exercised as the global allocator:
//! every power-of-two alignment up to 4096 with many sizes, `realloc` growing and shrinking
//! (data kept), `alloc_zeroed`, zero-sized types, blocks freed on another thread, and threads
//! that exit while their blocks live on.

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

include!("support/alloc_cases.rs");
