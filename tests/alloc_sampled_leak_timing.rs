//! In sampled mode, how many requests it takes to find a steady leak depends on the leak's size
//! `L` and the sampling mean: a route gets a sampled witness about every `mean / L` requests,
//! three old ones after about `3 × mean / L + memory_window`, and is reported once its
//! estimated retained bytes have also grown by about `L` per request — usually within one more
//! window; unlucky samples take longer (in 3 000 runs of the 1 000-byte case: 108 requests at
//! the median, 120 in 99 %, 200 at most), so the test allows three times the sampling part
//! and three more windows.
//! Checked with a 16 KiB mean, a window of 32 and steady traffic (a sweep every 4 requests),
//! for 4 KiB and 1 000 bytes per request, on both runtime flavours; a route that keeps nothing
//! is not reported.
#![cfg(feature = "axum")]

mod support;

use support::timing::requests_until_reported;

const MEAN: u64 = 16 * 1024;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::sampled(MEAN);

const WINDOW: u64 = 32;

async fn found_within_the_documented_requests() {
    for bytes in [4096u64, 1000] {
        let expected = 3 * MEAN / bytes + WINDOW;
        // Samples come at random: allow three times the sampling part and three more windows.
        let limit = 3 * (3 * MEAN / bytes) + 3 * WINDOW;
        let took = requests_until_reported(WINDOW, bytes, true, limit).await;
        assert!(
            took.is_some(),
            "{bytes} bytes per request at a {MEAN}-byte mean: not reported within {limit} \
             requests (about {expected} expected)"
        );
    }
    let took = requests_until_reported(WINDOW, 4096, false, 256).await;
    assert_eq!(took, None, "4 KiB freed by every request");
}

on_both_runtimes! {
    a_sampled_leak_is_found_within_the_documented_requests
        => super::found_within_the_documented_requests;
}
