//! [`Stats`] and the types it is made of: the detector's own counters and gauges, per-route
//! figures and how memory is counted, as [`LeakDetector::stats`](crate::LeakDetector::stats)
//! returns them (and the snapshot and the CI guard show them).

use std::fmt;
use std::time::Duration;

use crate::report::{LeakKind, SourceLocation};

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
    /// Requests in flight: their response has not finished.
    pub requests_in_flight: u64,
    /// Entries held by the registry: requests (in flight, or finished and not yet swept) and
    /// the objects they left behind.
    pub registry_entries: usize,
    /// The configured [`registry_capacity`](crate::LeakDetectorBuilder::registry_capacity).
    pub registry_capacity: usize,
    /// Tasks tracked now (spawned through [`crate::spawn`] / [`crate::scoped`] in a request, or
    /// by the runtime hooks).
    pub tracked_tasks: u64,
    /// Request bodies tracked now.
    pub tracked_bodies: u64,
    /// Objects passed to [`crate::watch`] and tracked now.
    pub watched_objects: u64,
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
    /// How heap memory is counted: exactly, estimated from samples, or not at all (the
    /// [`TrackingAllocator`](crate::TrackingAllocator) is not the global allocator).
    pub memory: MemoryAccounting,
    /// Live heap bytes of the whole process, from the allocator; `None` when memory is not
    /// tracked.
    pub live_heap_bytes: Option<u64>,
    /// What went uncounted since start-up, and why.
    pub uncounted: Uncounted,
    /// Requests whose memory is counted per request now (process-wide): those in flight, and
    /// those that ended still holding memory, until the sweeper has judged them (after the
    /// [`grace`](crate::LeakDetectorBuilder::grace) period). A request that frees all it
    /// allocated gives its slot back on its thread a few requests after it ends. Past 65 536,
    /// new requests go uncounted
    /// ([`Uncounted::requests`]).
    pub memory_slots_in_use: u64,
    /// Per route, by template: requests in flight and finished, memory, tasks alive.
    pub routes: Vec<RouteStats>,
    /// Alive tasks of the tokio runtime the detector was built in, at the last trend sample;
    /// `None` when built outside a runtime or before the first sample.
    pub runtime_tasks: Option<u64>,
    /// In sampled mode: bytes of the sampled blocks' address range handed out so far, free runs
    /// included — at most this much of it is resident (process-wide). 0 in exact mode.
    pub sampled_region_bytes: u64,
}

/// What went uncounted since start-up, in [`Stats::uncounted`]: each field says what was not
/// counted and why. All 0 in a healthy set-up; each cause is warned about in the logs (at most
/// once a minute) with the setting that raises its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Uncounted {
    /// Requests, tasks, bodies and watched objects not tracked because the registry was full
    /// ([`registry_capacity`](crate::LeakDetectorBuilder::registry_capacity)).
    pub registry_entries: u64,
    /// Requests whose memory was not counted per request because every request slot of the
    /// allocator was taken (process-wide).
    pub requests: u64,
    /// Allocation-site samples not recorded because the site table was full (process-wide).
    pub allocation_sites: u64,
    /// In sampled mode: samples that could not be served from the sampled blocks' address
    /// range (it could not be reserved, or is used up), so that their blocks went uncounted
    /// and the estimates are low (process-wide). 0 in exact mode.
    pub samples: u64,
    /// Tasks spawned inside requests that the allocator could not follow (its tables of task
    /// cells and spawn stacks were full, or a request spawned more than 256 tasks in one poll),
    /// process-wide: without the runtime's hooks they go untracked.
    pub task_cells: u64,
}

/// One route's figures, in [`Stats::routes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RouteStats {
    /// The route template, or one of the names in [`crate::route`]; for a unit of work, its
    /// name.
    pub route: String,
    /// Whether [`route`](Self::route) names a unit of work
    /// ([`LeakDetector::scope`](crate::LeakDetector::scope)) rather than an HTTP route: its
    /// "requests" are the unit's runs.
    pub unit: bool,
    /// Requests of the route in flight (their response has not finished).
    pub requests_in_flight: u64,
    /// How long the oldest request in flight has been open (milliseconds in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::report::ser::opt_millis")
    )]
    pub oldest_in_flight: Option<Duration>,
    /// Requests of the route that finished and that the sweeper has judged, since the detector
    /// was built. A request that left nothing behind is counted as it finishes.
    pub finished_requests: u64,
    /// Bytes allocated by the route's requests (and the tasks they spawned) and still live;
    /// `None` when memory is not tracked.
    pub live_bytes: Option<u64>,
    /// Blocks counted like [`live_bytes`](Self::live_bytes).
    pub live_blocks: Option<u64>,
    /// Of [`live_bytes`](Self::live_bytes), what requests that have finished still hold (the
    /// rest is held by requests in flight).
    pub retained_bytes: Option<u64>,
    /// Finished requests kept as witnesses because they still hold memory.
    pub witnesses: usize,
    /// Tracked tasks of the route still alive.
    pub tracked_tasks: u64,
    /// Active reports (`Suspected` or `Confirmed`) about the route's requests: every one the
    /// detector holds, however many a snapshot lists.
    pub active_reports: u64,
}

impl RouteStats {
    /// The name as tables show it: a unit's marked `unit `.
    pub(crate) fn label(&self) -> String {
        match self.unit {
            true => format!("unit {}", self.route),
            false => self.route.clone(),
        }
    }
}

/// How byte figures are counted: in [`Stats::memory`], in the snapshot and in the CI guard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
#[non_exhaustive]
pub enum MemoryAccounting {
    /// Every block is counted: the figures are exact.
    Exact,
    /// The figures are estimates from sampled blocks.
    Estimated,
    /// The [`TrackingAllocator`](crate::TrackingAllocator) is not installed: there are no byte
    /// figures.
    #[default]
    Untracked,
}

impl MemoryAccounting {
    /// `"exact"`, `"estimated"` or `"untracked"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MemoryAccounting::Exact => "exact",
            MemoryAccounting::Estimated => "estimated",
            MemoryAccounting::Untracked => "untracked",
        }
    }

    /// Whether heap memory is counted at all.
    pub const fn is_tracked(self) -> bool {
        !matches!(self, MemoryAccounting::Untracked)
    }
}

/// Tracked tasks of one route spawned at one place, in
/// [`Snapshot::tasks`](crate::snapshot::Snapshot::tasks) and the task profile.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TaskGroup {
    /// The route of the requests that spawned them.
    pub route: String,
    /// Where they were spawned, when known.
    pub location: Option<SourceLocation>,
    /// How many are alive.
    pub alive: u64,
    /// Of those, how many outlive a request that has finished.
    pub after_request: u64,
    /// How long ago the oldest of them was spawned (milliseconds in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "crate::report::ser::millis")
    )]
    pub oldest: Duration,
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
