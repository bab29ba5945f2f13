//! [`Stats`]: the detector's own counters and gauges, as [`LeakDetector::stats`](crate::LeakDetector::stats)
//! returns them.

use std::fmt;

use crate::report::LeakKind;

/// Counts of reports by [`LeakKind`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts([u64; LeakKind::COUNT]);

impl KindCounts {
    /// The count for one kind.
    pub fn get(&self, kind: LeakKind) -> u64 {
        self.0[kind.index()]
    }

    /// The sum over all kinds.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Adds `n` to the count of `kind`.
    pub(crate) fn add(&mut self, kind: LeakKind, n: u64) {
        self.0[kind.index()] += n;
    }
}

impl fmt::Debug for KindCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(LeakKind::ALL.iter().map(|k| (k.as_str(), self.get(*k))))
            .finish()
    }
}

/// Serialised as a map from kind name to count.
#[cfg(feature = "serde")]
impl serde::Serialize for KindCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(LeakKind::COUNT))?;
        for kind in LeakKind::ALL {
            map.serialize_entry(kind.as_str(), &self.get(*kind))?;
        }
        map.end()
    }
}

/// A snapshot of the detector's own state, from [`LeakDetector::stats`](crate::LeakDetector::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Requests whose scope is open now (their response has not finished).
    pub open_scopes: usize,
    /// Entries held by the registry: scopes (open, or closed and not yet swept) and objects.
    pub registry_entries: usize,
    /// The configured [`registry_capacity`](crate::LeakDetectorBuilder::registry_capacity).
    pub registry_capacity: usize,
    /// Tasks tracked now (spawned through [`crate::spawn`] / [`crate::scoped`] in a request).
    pub tracked_tasks: usize,
    /// Request bodies tracked now.
    pub tracked_bodies: usize,
    /// Objects passed to [`crate::watch`] and tracked now.
    pub watched_objects: usize,
    /// Scopes and objects not tracked because the registry was full, since the detector was
    /// built.
    pub skipped: u64,
    /// Sweeps run, by the background sweeper or [`LeakDetector::sweep_now`](crate::LeakDetector::sweep_now).
    pub sweeps: u64,
    /// Active reports by kind, as [`LeakDetector::leaks`](crate::LeakDetector::leaks) returns them.
    pub active: KindCounts,
    /// Reports that reached `Confirmed`, by kind, since the detector was built.
    pub confirmed_total: KindCounts,
    /// Reports that reached `Released` since the detector was built.
    pub released_total: u64,
    /// Sink calls that panicked (the panic is caught; the report is lost for that sink).
    pub sink_panics: u64,
    /// Whether heap memory is counted: the [`TrackingAllocator`](crate::TrackingAllocator) is
    /// the global allocator.
    pub memory_tracked: bool,
    /// Whether the byte figures are estimates: the allocator is in
    /// [sampled mode](crate::TrackingAllocator::sampled).
    pub memory_estimated: bool,
    /// Live heap bytes of the whole process, from the allocator; `None` when memory is not
    /// tracked.
    pub live_heap_bytes: Option<u64>,
    /// Requests whose memory went uncounted because every scope slot of the allocator was taken
    /// (process-wide, since start-up).
    pub untracked_scopes: u64,
    /// Memory per route, for routes with judged requests.
    pub routes: Vec<RouteMemoryStats>,
    /// Alive tasks of the tokio runtime the detector was built in, at the last trend sample;
    /// `None` when built outside a runtime or before the first sample.
    pub alive_tasks: Option<u64>,
    /// Allocation-site samples not recorded because the site table was full (process-wide).
    pub sites_dropped: u64,
    /// In sampled mode: samples that could not be served from the sampled blocks' address
    /// range (it could not be reserved, or is used up), so that their blocks went uncounted
    /// and the estimates are low (process-wide). 0 in exact mode.
    pub samples_unserved: u64,
    /// In sampled mode: bytes of the sampled blocks' address range handed out so far, free runs
    /// included — at most this much of it is resident (process-wide). 0 in exact mode.
    pub sampled_region_bytes: u64,
}

/// Per-route memory numbers, in [`Stats::routes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RouteMemoryStats {
    /// The route template.
    pub route: String,
    /// Bytes allocated by the route's requests (and the tasks they spawned) and still live.
    pub live_bytes: u64,
    /// Blocks allocated by the route's requests and still live.
    pub live_blocks: u64,
    /// Requests of the route whose retained memory has been judged.
    pub judged_requests: u64,
    /// Judged requests kept as witnesses because they still hold memory.
    pub witnesses: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_counts_sum() {
        let mut counts = KindCounts::default();
        counts.add(LeakKind::OrphanTask, 2);
        counts.add(LeakKind::StuckRequest, 1);
        assert_eq!(counts.get(LeakKind::OrphanTask), 2);
        assert_eq!(counts.total(), 3);
        assert!(format!("{counts:?}").contains("\"OrphanTask\": 2"));
    }
}
