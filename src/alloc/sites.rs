//! Allocation sites: sampled call stacks of requests' allocations, for `RetainedMemory` reports.
//!
//! Off by default. When on, allocations made inside a request are sampled by bytes — a Poisson
//! process with a configurable mean, so that every byte has the same chance to be sampled and a
//! sampled block stands for `size / (1 − e^(−size/mean))` bytes — or every one of them in exact
//! mode. A sampled allocation captures up to [`MAX_FRAMES`] return addresses by unwinding the
//! stack into a fixed array, and counts its weight in a statically allocated table keyed by
//! (route, stack); its header remembers the table entry, so that the free takes the weight
//! back. Nothing is allocated: symbols are resolved only when a report is built.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

use super::stacks::{self, StackTable, MAX_FRAMES};

/// Distinct (route, stack) pairs the table holds; further new stacks are not recorded. (A
/// header has 12 bits for the entry plus one.)
pub(crate) const MAX_SITES: usize = 4095;

/// How allocation sites are sampled; set with
/// [`TrackingAllocator::set_allocation_sites`](crate::TrackingAllocator::set_allocation_sites).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocationSites {
    /// No call stacks are captured (the default).
    #[default]
    Off,
    /// About one allocation per `mean_bytes` allocated bytes inside requests is sampled.
    Sampled {
        /// The mean distance, in bytes, between two samples. 512 KiB is a good start.
        mean_bytes: NonZeroU64,
    },
    /// Every allocation inside a request is sampled. Exact, and slow: for tests.
    Exact,
}

static TABLE: StackTable<MAX_SITES> = StackTable::new();
/// 0: off; 1: exact; otherwise the mean bytes between samples.
static MEAN: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// Sets the process-wide sampling mode.
pub(crate) fn configure(mode: AllocationSites) {
    let mean = match mode {
        AllocationSites::Off => 0,
        AllocationSites::Exact => EXACT,
        // 1 stands for exact mode: a mean of one byte samples (nearly) every allocation anyway.
        AllocationSites::Sampled { mean_bytes } => mean_bytes.get().max(2),
    };
    MEAN.store(mean, Ordering::Relaxed);
}

/// The sampling mode as one word (one relaxed load): 0 off, [`EXACT`] every allocation,
/// otherwise the mean bytes between samples.
#[inline(always)]
pub(crate) fn mean() -> u64 {
    MEAN.load(Ordering::Relaxed)
}

/// Whether allocation sites are sampled at all.
pub(crate) fn enabled() -> bool {
    mean() != 0
}

/// Whether every allocation is sampled (exact mode).
pub(crate) fn exact() -> bool {
    mean() == EXACT
}

/// [`mean`] in exact mode.
pub(crate) const EXACT: u64 = 1;

/// Whether a new block of `size` bytes is due for a sample, given the sampling `mean` (not 0)
/// and this thread's countdown of bytes to the next sample, which it counts down. Inline: the
/// common answer is "no" after one subtraction.
#[inline(always)]
pub(crate) fn due(mean: u64, size: u64, countdown: &mut i64) -> bool {
    *countdown = countdown.wrapping_sub(size as i64);
    *countdown <= 0 || mean == EXACT
}

/// For a block [`due`] for a sample: sets the countdown to the next sample and returns the
/// sample's weight in bytes.
pub(crate) fn draw(mean: u64, size: u64, countdown: &mut i64, rng: &mut u64) -> u64 {
    if mean == EXACT {
        return size;
    }
    *countdown = next_interval(mean, rng) as i64;
    weight(size, mean)
}

/// The bytes a sampled block of `size` stands for (exact mode: itself).
pub(crate) fn weight_of(size: u64) -> u64 {
    match MEAN.load(Ordering::Relaxed) {
        0 | EXACT => size,
        mean => weight(size, mean),
    }
}

/// The bytes a block of `size` sampled with mean `mean` stands for (sampled allocator mode).
pub(crate) fn weight_of_sample(size: u64, mean: u64) -> u64 {
    weight(size, mean)
}

fn weight(size: u64, mean: u64) -> u64 {
    let p = 1.0 - (-(size as f64) / mean as f64).exp();
    if p <= 0.0 {
        mean
    } else {
        (size as f64 / p) as u64
    }
}

/// A site counts blocks in 256ths: a sampled block stands for `weight / size` blocks, rarely a
/// whole number (2.54 for 16 KiB sampled with a mean of 32 KiB), and rounding each one would
/// bias the site's estimate by up to a block per sample.
pub(crate) const BLOCK_UNIT: u64 = 256;

/// The blocks, in [`BLOCK_UNIT`]s, that a sampled block of `size` bytes standing for `weight`
/// bytes counts for at its site: one block in exact mode, about `1 / p` blocks when sampled
/// with probability `p`.
#[inline]
pub(crate) fn site_blocks(size: usize, weight: u64) -> u64 {
    let size = size.max(1) as u64;
    if weight == size {
        // Exact mode (and blocks always sampled): no division on every free.
        return BLOCK_UNIT;
    }
    (weight.saturating_mul(BLOCK_UNIT) + size / 2) / size
}

/// An exponentially distributed distance to the next sample.
pub(crate) fn next_interval(mean: u64, rng: &mut u64) -> u64 {
    if *rng == 0 {
        *rng = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) | 1;
    }
    // xorshift64*
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let uniform = ((r >> 11) as f64 + 0.5) / (1u64 << 53) as f64; // in (0, 1)
    (-uniform.ln() * mean as f64) as u64 + 1
}

/// Captures the current stack and records a sample of `weight` bytes and `blocks` blocks (in
/// [`BLOCK_UNIT`]s: what the sampled block stands for) for `route`; returns the site index plus
/// one (0 when the table is full). Must run with the allocator marked busy.
pub(crate) fn record(route: u32, weight: u64, blocks: u64) -> u32 {
    let mut frames = [0usize; MAX_FRAMES];
    let n = stacks::capture(&mut frames);
    let site = TABLE.record(route, &frames[..n], weight as i64, blocks as i64);
    if site == 0 {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    site
}

/// Takes back a sampled block's weight and blocks (their change, for a `realloc`).
#[inline]
pub(crate) fn release(site: u32, bytes: i64, blocks: i64) {
    TABLE.charge(site, -bytes, -blocks);
}

/// A recorded stack and what it still holds.
#[derive(Clone, Debug)]
pub(crate) struct RawSite {
    pub(crate) frames: Vec<usize>,
    pub(crate) bytes: u64,
    /// Live blocks (estimated when sampling).
    pub(crate) blocks: u64,
}

/// The `n` stacks of `route` holding the most (estimated) bytes.
pub(crate) fn top(route: u32, n: usize) -> Vec<RawSite> {
    let mut sites: Vec<RawSite> = holding(move |r| r == route).map(|(_, site)| site).collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.bytes));
    sites.truncate(n);
    sites
}

/// Every recorded stack still holding bytes, with its route.
#[cfg(feature = "pprof")]
pub(crate) fn live() -> Vec<(u32, RawSite)> {
    holding(|_| true).collect()
}

/// The recorded stacks of the routes `wanted` accepts that still hold bytes.
fn holding(wanted: impl Fn(u32) -> bool + 'static) -> impl Iterator<Item = (u32, RawSite)> {
    TABLE.holding(wanted).map(|(route, frames, bytes, units)| {
        let blocks = (units + BLOCK_UNIT / 2) / BLOCK_UNIT;
        (
            route,
            RawSite {
                frames,
                bytes,
                blocks,
            },
        )
    })
}

/// Samples not recorded because the table was full.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_unbiased_estimates() {
        // A block much larger than the mean is always sampled and stands for itself.
        assert_eq!(weight(10 << 20, 1024), 10 << 20);
        // A tiny block stands for about one mean.
        let w = weight(16, 1 << 19);
        assert!((w as f64 - (1 << 19) as f64).abs() < 1024.0, "{w}");
    }

    #[test]
    fn a_site_counts_the_blocks_a_sample_stands_for_without_rounding_them() {
        assert_eq!(site_blocks(100, 100), BLOCK_UNIT, "exact: one block");
        let w = weight(16 << 10, 32 << 10);
        let units = site_blocks(16 << 10, w);
        let blocks = w as f64 / f64::from(16 << 10);
        assert!(
            (units as f64 / BLOCK_UNIT as f64 - blocks).abs() < 0.01,
            "{units} {blocks}"
        );
        assert!(blocks > 2.5 && blocks < 2.6, "{blocks}: not a whole number");
        assert_eq!(
            site_blocks(0, 3),
            3 * BLOCK_UNIT,
            "a zero size counts as one byte"
        );
    }

    #[test]
    fn intervals_average_the_mean() {
        let mut rng = 0;
        let n = 20_000;
        let total: u64 = (0..n).map(|_| next_interval(4096, &mut rng)).sum();
        let average = total as f64 / n as f64;
        assert!((average - 4096.0).abs() < 4096.0 * 0.05, "{average}");
    }

    #[test]
    fn a_block_is_due_once_the_countdown_runs_out_and_always_in_exact_mode() {
        let (mut countdown, mut rng) = (100, 0);
        assert!(!due(4096, 60, &mut countdown));
        assert!(due(4096, 60, &mut countdown));
        let weight = draw(4096, 60, &mut countdown, &mut rng);
        assert!(countdown > 0 && weight >= 60);
        // A countdown left over from sampled mode does not delay exact mode.
        let mut countdown = 1 << 20;
        assert!(due(EXACT, 8, &mut countdown));
        assert_eq!(draw(EXACT, 8, &mut countdown, &mut rng), 8);
    }
}
