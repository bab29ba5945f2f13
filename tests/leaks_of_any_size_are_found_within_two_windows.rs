//! No byte floor decides whether a leak is found or how fast: with the exact allocator, a
//! steady `mem::forget` leak of 48 bytes, 1 000 bytes or 4 KiB per request is reported as
//! `RetainedMemory` of its route within two `memory_window`s of requests (64 at a window of
//! 32), under steady traffic (a sweep every few requests), on both runtime flavours; a route
//! that frees the same bytes, driven the same way, is not.
#![cfg(feature = "axum")]

mod support;

use support::timing::requests_until_reported;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const WINDOW: u64 = 32;

async fn each_size_within_two_windows() {
    for bytes in [48, 1000, 4096] {
        let took = requests_until_reported(WINDOW, bytes, true, 4 * WINDOW).await;
        let took = took.unwrap_or_else(|| panic!("{bytes} bytes per request: not reported"));
        assert!(
            took <= 2 * WINDOW,
            "{bytes} bytes per request: reported after {took} requests"
        );
    }
    for bytes in [48, 1000, 4096] {
        let took = requests_until_reported(WINDOW, bytes, false, 4 * WINDOW).await;
        assert_eq!(took, None, "{bytes} bytes freed by every request");
    }
}

on_both_runtimes! {
    a_leak_of_any_size_is_found_within_two_windows => super::each_size_within_two_windows;
}
