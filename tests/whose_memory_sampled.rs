//! Whose memory, in sampled mode (a 16 KiB mean between samples, sites recorded at the
//! samples): a route's owner is read from 3 samples on, the evidence its old witnesses give.
//! The user's own 2 KiB per request is found within the sampled-mode bound of
//! `tests/alloc_sampled_leak_timing.rs`; a dependency's allocation the user keeps (child
//! `CancellationToken`s in a global list) waits out `dependency_growth_span`, then is found
//! after 8 windows of growth; a Prometheus recorder's buckets are never reported. Both runtime
//! flavours, steady traffic; each run prints how many requests it took (`--nocapture`).
#![cfg(feature = "axum")]

mod support;

use std::num::NonZeroU64;
use std::time::Duration;

use leakwatch::{AllocationSites, LeakDetectorBuilder};
use support::whose::until_reported;

const MEAN: u64 = 16 * 1024;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::sampled(MEAN);

const WINDOW: u64 = 64;
const SITES: AllocationSites = AllocationSites::Sampled {
    mean_bytes: NonZeroU64::new(MEAN).unwrap(),
};
const SPAN: Duration = LeakDetectorBuilder::DEFAULT_DEPENDENCY_GROWTH_SPAN;

/// The sampled-mode bound for `bytes` per request: three times the sampling part, three more
/// windows.
fn bound(bytes: u64) -> u64 {
    3 * (3 * MEAN / bytes) + 3 * WINDOW
}

async fn the_users_memory_is_found() {
    let limit = 2 * bound(2048);
    let (took, reports) = until_reported(SITES, WINDOW, SPAN, "/bytes/{i}", limit).await;
    let took = took.unwrap_or_else(|| panic!("not reported: {reports:#?}"));
    println!("sampled, 2 KiB per request, the user's: confirmed after {took} requests");
    assert!(took <= bound(2048), "reported after {took} requests");
}

/// A child token is about 150 bytes: growth a window must show past the swings of samples
/// coming and going (each stands for 16 KiB) takes windows of 512 requests. Most runs find it
/// after 9 windows (the warm-up and 8 of growth); a window that does not grow past the
/// samples' swings starts the 8 again (15 windows at most in 20 runs here).
async fn a_dependencys_allocation_the_user_keeps_is_found_later() {
    const WINDOW: u64 = 512;
    let limit = 24 * WINDOW;
    let (took, reports) = until_reported(SITES, WINDOW, SPAN, "/tokens/{i}", limit).await;
    assert_eq!(took, None, "{reports:#?}");
    let zero = Duration::ZERO;
    let (took, reports) = until_reported(SITES, WINDOW, zero, "/tokens/{i}", limit).await;
    let took = took.unwrap_or_else(|| panic!("not reported: {reports:#?}"));
    println!(
        "sampled, a child token per request, tokio-util's: confirmed after {took} requests \
         (window {WINDOW}, span 0)"
    );
    assert!(took <= 18 * WINDOW, "reported after {took} requests");
}

async fn a_metrics_recorders_buckets_are_not_reported() {
    let (took, reports) = until_reported(SITES, WINDOW, SPAN, "/metered/{i}", 3000).await;
    assert_eq!(took, None, "{reports:#?}");
    assert!(reports.is_empty(), "not even suspected: {reports:#?}");
}

on_both_runtimes! {
    the_users_memory_is_found => super::the_users_memory_is_found;
    a_dependencys_allocation_the_user_keeps_is_found_later => super::a_dependencys_allocation_the_user_keeps_is_found_later;
    a_metrics_recorders_buckets_are_not_reported => super::a_metrics_recorders_buckets_are_not_reported;
}
