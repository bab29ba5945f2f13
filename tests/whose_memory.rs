//! Whose memory a route holds decides how it is judged. With every allocation's site recorded
//! (`AllocationSites::Exact`), memory the user's code allocated keeps the two-window promise,
//! while memory a dependency's code allocated must grow window after window for
//! `dependency_growth_span` too: a Prometheus recorder's histogram buckets, freed at its
//! upkeep, are never reported; child `CancellationToken`s the user keeps in a global list
//! (allocated by tokio-util, kept by the user) and unread `reqwest::Response`s are found,
//! later. On both runtime flavours,
//! steady traffic (a sweep after every 4 requests), through `tower::ServiceExt::oneshot`.
//! Each run prints how many requests it took (`--nocapture`).
#![cfg(feature = "axum")]

mod support;

use std::time::Duration;

use leakwatch::{AllocationSites, LeakDetectorBuilder, LeakKind};
use support::whose::until_reported;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();

const WINDOW: u64 = 64;
const HOUR: Duration = Duration::from_secs(3600);
const SITES: AllocationSites = AllocationSites::Exact;

/// The user's own bytes: within two windows, whatever the span.
async fn user_memory_keeps_the_two_window_promise() {
    let (took, reports) = until_reported(SITES, WINDOW, HOUR, "/bytes/{i}", 8 * WINDOW).await;
    let took = took.unwrap_or_else(|| panic!("not reported: {reports:#?}"));
    println!("2 KiB per request, the user's: confirmed after {took} requests (window {WINDOW})");
    assert!(took <= 2 * WINDOW, "reported after {took} requests");
}

/// A dependency's bytes the user keeps: not before they grew for the span — found once it
/// passed (zero here: judged by requests alone), after `DEPENDENCY_WINDOWS` (8) windows of
/// growth past the warm-up.
async fn dependency_memory_the_user_keeps_is_found_later() {
    let (took, reports) = until_reported(SITES, WINDOW, HOUR, "/tokens/{i}", 16 * WINDOW).await;
    assert_eq!(took, None, "{reports:#?}");
    assert!(reports.is_empty(), "not even suspected: {reports:#?}");
    let span = Duration::ZERO;
    let (took, reports) = until_reported(SITES, WINDOW, span, "/tokens/{i}", 16 * WINDOW).await;
    let took = took.unwrap_or_else(|| panic!("not reported: {reports:#?}"));
    println!(
        "a child token per request, tokio-util's: confirmed after {took} requests (window \
         {WINDOW}, span 0)"
    );
    assert!(took <= 10 * WINDOW, "reported after {took} requests");
    let report = reports
        .iter()
        .find(|r| r.kind == LeakKind::RetainedMemory)
        .unwrap();
    let site = report.sites.first().expect("the sites that hold it");
    let file = site.file.as_deref().unwrap_or_default();
    assert!(file.contains("tokio-util-"), "{report}");
}

/// An upstream's `reqwest::Response` kept unread per request (its buffers are reqwest's and
/// hyper's): not before the span; found once it passed (zero here) after 8 windows of growth
/// past the warm-up. Windows of 24 requests: each kept response holds a connection open.
async fn responses_the_user_keeps_are_found_later() {
    const WINDOW: u64 = 24;
    let limit = 12 * WINDOW;
    let (took, reports) = until_reported(SITES, WINDOW, HOUR, "/responses/{i}", limit).await;
    assert_eq!(took, None, "{reports:#?}");
    let span = Duration::ZERO;
    let (took, reports) = until_reported(SITES, WINDOW, span, "/responses/{i}", limit).await;
    let took = took.unwrap_or_else(|| panic!("not reported: {reports:#?}"));
    println!(
        "a kept reqwest::Response per request: confirmed after {took} requests (window \
         {WINDOW}, span 0)"
    );
    assert!(took <= 10 * WINDOW, "reported after {took} requests");
}

/// A Prometheus recorder's buckets: never reported at the default span.
async fn a_metrics_recorders_buckets_are_not_reported() {
    let limit = 3000;
    let span = LeakDetectorBuilder::DEFAULT_DEPENDENCY_GROWTH_SPAN;
    let (took, reports) = until_reported(SITES, WINDOW, span, "/metered/{i}", limit).await;
    assert_eq!(took, None, "{reports:#?}");
    assert!(reports.is_empty(), "not even suspected: {reports:#?}");
    // What it would be taken for, judged by requests alone: growth, window after window.
    let (took, _) = until_reported(SITES, WINDOW, Duration::ZERO, "/metered/{i}", limit).await;
    println!("a metrics recorder's buckets, judged by requests alone: confirmed after {took:?}");
}

on_both_runtimes! {
    user_memory_keeps_the_two_window_promise => super::user_memory_keeps_the_two_window_promise;
    dependency_memory_the_user_keeps_is_found_later => super::dependency_memory_the_user_keeps_is_found_later;
    a_metrics_recorders_buckets_are_not_reported => super::a_metrics_recorders_buckets_are_not_reported;
    responses_the_user_keeps_are_found_later => super::responses_the_user_keeps_are_found_later;
}
