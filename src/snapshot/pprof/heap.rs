//! The heap profile: what requests allocated and is still live, by allocation site and route,
//! and whether finished requests (what leaks) or requests in flight hold it.
//!
//! One sample per site and route (and holder), with the values `inuse_objects` (count) and
//! `inuse_space` (bytes) — the sample types of Go's heap profile that mean "live now". In
//! exact mode they are exact; sampled, they are estimates, each sampled block scaled by its
//! sampling weight (as Go's and jemalloc's profiles are), and a comment says so.
//!
//! The allocator keeps a site's bytes by route, not by request: which requests hold them is
//! told per route. When all of a route's live bytes are held by finished requests (or all by
//! requests in flight), its samples are labelled so exactly; when both hold some, each site's
//! figures are split in proportion to what the two hold, and a comment says that too.

use std::collections::HashMap;

use super::{Builder, Filter, HeldBy};
use crate::alloc::symbolize::Symbolizer;
use crate::engine::Engine;
use crate::stats::MemoryAccounting;

/// Why there is no heap profile to give.
pub(crate) const UNTRACKED: &str = "no heap profile: memory is not tracked (install \
    leakwatch::TrackingAllocator as the global allocator) or allocation sites are off (turn \
    them on with TrackingAllocator::set_allocation_sites)\n";

/// The heap profile of `engine`'s routes that `filter` keeps, gzipped; `Err` with the reason
/// when memory or allocation sites are not tracked.
pub(crate) fn heap(engine: &Engine, filter: &Filter) -> Result<Vec<u8>, &'static str> {
    let accounting = engine.sites_accounting();
    if !accounting.is_tracked() {
        return Err(UNTRACKED);
    }
    // What finished requests hold of each route's live bytes.
    let finished_share: HashMap<String, Share> = engine
        .routes()
        .into_iter()
        .map(|r| {
            let share = Share::of(r.live_bytes.unwrap_or(0), r.retained_bytes.unwrap_or(0));
            (r.route, share)
        })
        .collect();

    let mut builder = Builder::new(&[("inuse_objects", "count"), ("inuse_space", "bytes")]);
    let period = engine.sites_period();
    builder.period("space", "bytes", i64::try_from(period).unwrap_or(i64::MAX));
    builder.comment(match accounting {
        MemoryAccounting::Exact => "leakwatch heap profile: exact (every allocation of a request counted)",
        _ => "leakwatch heap profile: estimated from sampled allocations, each scaled by its sampling weight",
    });
    let mut split = false;
    let mut symbols = Symbolizer::default();
    let mut sites = engine.live_sites();
    sites.sort_by_key(|(_, site)| std::cmp::Reverse(site.bytes));
    for (route, site) in sites {
        if filter
            .route
            .as_deref()
            .is_some_and(|wanted| wanted != &*route)
        {
            continue;
        }
        let share = finished_share
            .get(&*route)
            .copied()
            .unwrap_or(Share::ALL_IN_FLIGHT);
        split |= share.is_split();
        let parts = share.divide(site.bytes, site.blocks);
        let wanted: Vec<_> = parts
            .into_iter()
            .filter(|&(held_by, _, bytes)| {
                bytes > 0 && filter.held_by.is_none_or(|wanted| wanted == held_by)
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let stack: Vec<u64> = symbols
            .stack(&site.frames)
            .iter()
            .map(|location| builder.location(location))
            .collect();
        for (held_by, blocks, bytes) in wanted {
            builder.sample(
                stack.clone(),
                vec![saturating(blocks), saturating(bytes)],
                &[
                    (engine.name_label(&route), &route),
                    ("held_by", held_by.as_str()),
                ],
            );
        }
    }
    if split {
        builder.comment(
            "held_by: where both finished requests and requests in flight of a route hold \
             memory, each site's figures are split in proportion to what the two hold",
        );
    }
    Ok(builder.finish())
}

fn saturating(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The part of a route's live bytes that finished requests hold.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Share {
    retained: u64,
    live: u64,
}

impl Share {
    const ALL_IN_FLIGHT: Share = Share {
        retained: 0,
        live: 0,
    };

    fn of(live: u64, retained: u64) -> Share {
        Share {
            retained: retained.min(live),
            live,
        }
    }

    /// Whether both finished requests and requests in flight hold some.
    fn is_split(self) -> bool {
        self.retained > 0 && self.retained < self.live
    }

    /// `bytes` and `blocks` of a site, divided between the holders: `(held_by, blocks, bytes)`.
    fn divide(self, bytes: u64, blocks: u64) -> [(HeldBy, u64, u64); 2] {
        let part = |value: u64| {
            if self.live == 0 {
                0
            } else {
                (u128::from(value) * u128::from(self.retained) / u128::from(self.live)) as u64
            }
        };
        let (finished_bytes, finished_blocks) = (part(bytes), part(blocks));
        [
            (HeldBy::Finished, finished_blocks, finished_bytes),
            (
                HeldBy::InFlight,
                blocks - finished_blocks,
                bytes - finished_bytes,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_is_divided_as_its_route_is_held() {
        let all_finished = Share::of(1000, 1000);
        assert!(!all_finished.is_split());
        assert_eq!(
            all_finished.divide(300, 3),
            [(HeldBy::Finished, 3, 300), (HeldBy::InFlight, 0, 0)]
        );
        assert_eq!(
            Share::ALL_IN_FLIGHT.divide(300, 3),
            [(HeldBy::Finished, 0, 0), (HeldBy::InFlight, 3, 300)]
        );
        let quarter = Share::of(1000, 250);
        assert!(quarter.is_split());
        assert_eq!(
            quarter.divide(400, 8),
            [(HeldBy::Finished, 2, 100), (HeldBy::InFlight, 6, 300)]
        );
        // Figures read at slightly different moments never make more retained than live.
        assert_eq!(Share::of(10, 20), Share::of(10, 10));
    }
}
