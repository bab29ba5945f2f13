//! Tasks judged by growth: what a dependency spawned while a request was served (a pooled
//! client's connection, a `tower::buffer` worker, a driver), and what a request answered `101
//! Switching Protocols` started (its upgraded connection's session).
//!
//! Such a task outliving its request is no leak: a pool keeps its connections, a worker serves
//! every later request, a session lasts as long as its client. What is a leak is their number
//! growing with the route's requests. So for every route and spawn location the live tasks are
//! counted at each sweep and read, like a route's retained bytes ([`growth`](super::growth)),
//! after every window of `memory_window` finished requests of the route: a group of tasks whose
//! number grew by at least one task per [`REQUESTS_PER_TASK`] requests in each of the last
//! windows (past its own swings) is reported as an [`OrphanTask`](LeakKind::OrphanTask) of its
//! route, at its spawn location. A pool that levels off, a worker, sessions that end: never.
//!
//! The report stands while the group keeps growing and holds live tasks; it is released once it
//! stops growing or its tasks are gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::growth::RetainedGrowth;
use crate::config::Config;
use crate::judge::build::request_report;
use crate::registry::TrackedObject;
use crate::report::lifecycle::StandingAlert;
use crate::report::{LeakKind, LeakReport, LeakState, SourceLocation};
use crate::request::scope::Scope;
use crate::util::clock;
use crate::util::Ids;

/// A group must grow by a task per this many requests, window after window.
pub(crate) const REQUESTS_PER_TASK: u64 = 16;

/// The most groups judged at once (routes × spawn locations); further groups are not judged.
pub(crate) const MAX_GROUPS: usize = 4096;

/// A route's tasks spawned at one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    route_index: u32,
    location: SourceLocation,
}

/// What a sweep saw of a group: its live tasks and the request that spawned the newest.
pub(crate) struct Seen {
    live: u64,
    newest: (Instant, Arc<Scope>),
}

/// The live tasks judged by growth, by route and spawn location, as one sweep counts them.
#[derive(Default)]
pub(crate) struct Census(HashMap<GroupKey, Seen>);

impl Census {
    /// Counts `object` when it is a live task judged by growth.
    pub(crate) fn count(&mut self, object: &TrackedObject) {
        let (Some(location), true) = (object.location, object.judged_by_growth()) else {
            return;
        };
        if !object.liveness.is_task() || !object.liveness.is_alive() {
            return;
        }
        let key = GroupKey {
            route_index: object.scope.route_index,
            location,
        };
        let newest = (object.created_at, object.scope.clone());
        self.0
            .entry(key)
            .and_modify(|seen| {
                seen.live += 1;
                if newest.0 > seen.newest.0 {
                    seen.newest = newest.clone();
                }
            })
            .or_insert(Seen { live: 1, newest });
    }
}

struct Group {
    growth: RetainedGrowth,
    alert: StandingAlert,
}

/// The groups' history between sweeps.
#[derive(Default)]
pub(crate) struct TaskJudge {
    groups: HashMap<GroupKey, Group>,
}

impl TaskJudge {
    /// Judges every group after a sweep counted them; `finished` holds the route's finished
    /// requests by route index.
    pub(crate) fn judge(
        &mut self,
        census: Census,
        finished: &[u64],
        now: Instant,
        config: &Config,
        ids: &Ids,
        reports: &mut Vec<LeakReport>,
    ) {
        let mut census = census.0;
        for key in census.keys() {
            if !self.groups.contains_key(key) && self.groups.len() < MAX_GROUPS {
                let group = Group {
                    growth: RetainedGrowth::default(),
                    alert: StandingAlert::new(ids.next()),
                };
                self.groups.insert(*key, group);
            }
        }
        for (key, group) in &mut self.groups {
            let seen = census.remove(key);
            let live = seen.as_ref().map_or(0, |s| s.live);
            let requests = finished.get(key.route_index as usize).copied().unwrap_or(0);
            // One task stands for `REQUESTS_PER_TASK` units: growth of a unit per request is a
            // task per `REQUESTS_PER_TASK` requests.
            let units = (live * REQUESTS_PER_TASK) as i64;
            group
                .growth
                .observe(requests, units, config.memory_window, now);
            let steady = group.growth.steady().filter(|_| live > 0);
            let change = match (steady, seen) {
                (Some(steady), Some(seen)) => {
                    let grown = steady.bytes as u64 / REQUESTS_PER_TASK;
                    let detail = format!(
                        "{live} tasks spawned here for requests of this route are alive, and \
                         their number grows with the route's requests: by {grown} over the last \
                         {} requests, in every window of at least {} requests (a pool, a worker \
                         or a session levels off)",
                        steady.requests, config.memory_window
                    );
                    let (_, scope) = &seen.newest;
                    let report = LeakReport {
                        location: Some(key.location),
                        ..request_report(
                            scope,
                            0,
                            LeakKind::OrphanTask,
                            LeakState::Suspected,
                            now,
                            detail,
                        )
                    };
                    group.alert.raise(report, config.confirm_sweeps)
                }
                _ => {
                    let detail = "the tasks spawned here no longer grow in number".to_owned();
                    group.alert.release(clock::wall(now), detail)
                }
            };
            reports.extend(change);
        }
    }

    /// The groups currently reported.
    pub(crate) fn active_reports(&self) -> impl Iterator<Item = &LeakReport> + '_ {
        self.groups.values().filter_map(|g| g.alert.active())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::scope;
    use std::panic::Location;

    const WINDOW: u64 = 32;

    fn config() -> Config {
        Config {
            memory_window: WINDOW,
            confirm_sweeps: 0,
            ..Config::default()
        }
    }

    /// One sweep after `finished` requests of route 0, with `live` tasks spawned at `location`.
    fn sweep(
        judge: &mut TaskJudge,
        ids: &Ids,
        location: SourceLocation,
        finished: u64,
        live: u64,
    ) -> Vec<LeakReport> {
        let mut census = Census::default();
        if live > 0 {
            let key = GroupKey {
                route_index: 0,
                location,
            };
            let newest = (Instant::now(), scope(finished));
            census.0.insert(key, Seen { live, newest });
        }
        let mut reports = Vec::new();
        let now = Instant::now();
        judge.judge(census, &[finished], now, &config(), ids, &mut reports);
        reports
    }

    #[test]
    fn tasks_growing_with_the_requests_are_reported_at_their_spawn() {
        let ids = Ids::default();
        let location = SourceLocation::from_std(Location::caller());
        let mut judge = TaskJudge::default();
        let mut reported = Vec::new();
        // One task left by every other request, a sweep every window (growth is read from
        // levels two sweeps saw: a window late).
        for window in 1..=6 {
            let finished = window * WINDOW;
            reported.extend(sweep(&mut judge, &ids, location, finished, finished / 2));
        }
        assert_eq!(reported.len(), 1, "{reported:#?}");
        let report = &reported[0];
        assert_eq!(report.kind, LeakKind::OrphanTask);
        assert_eq!(report.state, LeakState::Confirmed);
        assert_eq!(report.location.unwrap().line, location.line);
        assert!(
            report.detail.starts_with("96 tasks spawned here"),
            "{}",
            report.detail
        );
        assert_eq!(judge.active_reports().count(), 1);
        // Their tasks end: the report is released.
        let released = sweep(&mut judge, &ids, location, 7 * WINDOW, 0);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].state, LeakState::Released);
        assert_eq!(judge.active_reports().count(), 0);
    }

    #[test]
    fn a_pool_that_levels_off_and_a_worker_are_not() {
        let ids = Ids::default();
        let (pool, worker) = (
            SourceLocation::from_std(Location::caller()),
            SourceLocation::from_std(Location::caller()),
        );
        let mut judge = TaskJudge::default();
        for window in 1..=40 {
            let finished = window * WINDOW;
            // A pool growing to 10 connections, one per window, then steady.
            let pool_live = window.min(10);
            assert!(sweep(&mut judge, &ids, pool, finished, pool_live).is_empty());
            assert!(sweep(&mut judge, &ids, worker, finished, 1).is_empty());
        }
        // Too slow to tell from a pool: under a task per 16 requests.
        let slow = SourceLocation::from_std(Location::caller());
        for window in 1..=40 {
            let finished = window * WINDOW;
            assert!(sweep(&mut judge, &ids, slow, finished, window).is_empty());
        }
    }
}
