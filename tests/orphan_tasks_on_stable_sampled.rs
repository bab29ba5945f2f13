//! Plain `tokio::spawn` on stable flags — no `tokio_unstable`, no hooks, runtimes as
//! `#[tokio::main]` builds them — with the `TrackingAllocator` in sampled mode (512 KiB mean: task cells are recorded whatever the sampling says): a task still alive
//! past the grace after its request is an `OrphanTask` at its spawn line, and tasks that end,
//! are awaited or drained are not reported (see `support/orphans.rs`), on both runtime flavours.
#![cfg(all(feature = "axum", not(tokio_unstable)))]

mod support;

#[global_allocator]
static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::sampled(512 * 1024);

on_both_runtimes! {
    leaks => super::support::orphans::leaks_are_reported_at_their_spawn_lines;
    clean => super::support::orphans::tasks_that_end_or_are_awaited_are_not_reported;
}
