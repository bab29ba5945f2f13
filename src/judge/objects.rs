//! Objects that outlive their request, and requests that never end.
//!
//! For each object whose scope closed more than `grace` ago, the object's
//! [`Lifecycle`] moves as the module [`lifecycle`](crate::report::lifecycle) describes. A body dropped
//! before its end is a one-shot [`UnconsumedBody`](LeakKind::UnconsumedBody) finding. A request
//! open longer than `max_request_age` (on a route that is not allowed to stream) goes through
//! the same states as a [`StuckRequest`](LeakKind::StuckRequest).
//!
//! The reports made here are kept in [`Active`] while they are active, as they were made: what
//! the detector's read side returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::judge::build::request_report;
use crate::judge::memory::holds_memory;
use crate::registry::TrackedObject;
use crate::report::lifecycle::Lifecycle;
use crate::report::{LeakKind, LeakReport, LeakState, SourceLocation};
use crate::request::liveness::Liveness;
use crate::request::scope::{Scope, Words};

/// The active reports (`Suspected` or `Confirmed`) of tracked objects and stuck requests, by
/// report id, exactly as they were made and delivered. At most one per tracked object or scope:
/// bounded by the registry's capacity.
#[derive(Default)]
pub(crate) struct Active(HashMap<u64, LeakReport>);

impl Active {
    /// Records what this judge reported in a sweep: an active report replaces its finding's
    /// previous one, a `Released` one removes it. One-shot findings
    /// ([`UnconsumedBody`](LeakKind::UnconsumedBody)) are not kept here.
    pub(crate) fn record(&mut self, reports: &[LeakReport]) {
        for report in reports {
            if report.kind == LeakKind::UnconsumedBody {
                continue;
            }
            if report.state.is_active() {
                self.0.insert(report.id, report.clone());
            } else {
                self.0.remove(&report.id);
            }
        }
    }

    /// The active report of the object or stuck request `id`.
    pub(crate) fn get(&self, id: u64) -> Option<&LeakReport> {
        self.0.get(&id)
    }

    /// Every active report, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &LeakReport> {
        self.0.values()
    }

    /// Adds where an orphan task waits to its active report (from a task dump that arrived after
    /// the report was made).
    #[cfg(leakwatch_taskdump)] // set by the build script
    pub(crate) fn attach_await_trace(&mut self, id: u64, trace: &str) {
        if let Some(report) = self.0.get_mut(&id) {
            report.await_trace = Some(trace.to_owned());
        }
    }
}

/// The requests whose leftovers a sweep found reported and still alive, by scope id: their
/// memory is the leftovers' (a task's cell and what it allocated, a kept body's buffers, a
/// watched object), so the memory judge does not report it a second time (see
/// [`memory`](super::memory)).
#[derive(Default)]
pub(crate) struct Reported(HashSet<u64>);

impl Reported {
    /// Notes `object` after it was judged (and kept) when it is an active report of its own.
    /// A leftover of an outgoing call is its request's.
    pub(crate) fn note(&mut self, object: &TrackedObject) {
        if object.lifecycle.is_active() && !object.judged_by_growth() {
            if let Some(request) = object.scope.request() {
                self.0.insert(request.id);
            }
        }
    }

    /// Whether the request of scope id `id` left a leftover that is reported and alive.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.0.contains(&id)
    }
}

/// The requests that left orphan tasks, by route and spawn line, as the sweeps have found them
/// (counted before each sweep judges any): a spawn line that left orphans in one request only
/// may be a worker started once (a refresher a `OnceCell` initialiser starts, a lazily started
/// worker), which is not confirmed; orphans from the same line in two requests — at once, or
/// one after the other — are a leak. Kept for the detector's life, for at most [`MAX_LINES`]
/// lines: past them a new line's orphans are confirmed as usual.
#[derive(Default)]
pub(crate) struct OrphanLines(HashMap<(u32, SourceLocation), Requests>);

/// The requests an orphan's spawn line left orphans in: the first, and whether there are more.
struct Requests {
    first: u64,
    more: bool,
}

impl OrphanLines {
    /// Counts `object` if it is an orphan task its request is judged by: alive, spawned by the
    /// user's code (not judged by growth), its request finished more than the grace ago.
    pub(crate) fn count(&mut self, object: &TrackedObject, now: Instant, config: &Config) {
        let Some(key) = orphan_line(object, now, config) else {
            return;
        };
        let request = object.scope.id;
        if self.0.len() >= MAX_LINES && !self.0.contains_key(&key) {
            return;
        }
        self.0
            .entry(key)
            .and_modify(|seen| seen.more |= seen.first != request)
            .or_insert(Requests {
                first: request,
                more: false,
            });
    }

    /// Whether `object`, an orphan task, is the only one its spawn line left on its route (in
    /// one request, however many tasks).
    fn alone(&self, object: &TrackedObject, now: Instant, config: &Config) -> bool {
        orphan_line(object, now, config)
            .and_then(|key| self.0.get(&key))
            .is_some_and(|seen| !seen.more)
    }
}

/// The most (route, spawn line) pairs [`OrphanLines`] remembers.
pub(crate) const MAX_LINES: usize = 4096;

/// The route and spawn line of an orphan task judged against its request, past its grace.
fn orphan_line(
    object: &TrackedObject,
    now: Instant,
    config: &Config,
) -> Option<(u32, SourceLocation)> {
    let closed_at = object.scope.closed_at()?;
    let past_grace = now.saturating_duration_since(closed_at) >= config.grace;
    let judged = object.liveness.is_task() && !object.judged_by_growth() && past_grace;
    let location = object
        .location
        .filter(|_| judged && object.liveness.is_alive())?;
    Some((object.scope.route_index, location))
}

/// What a report of an orphan its spawn line left alone adds: why it is not confirmed yet.
fn started_once(words: Words) -> String {
    let Words { one, group, .. } = words;
    format!(
        "; the only orphan from this line on its {group} so far: a worker started once (a \
         refresher a OnceCell initialiser starts) stays suspected until a second {one} leaves one \
         too; leakwatch::detach (or spawn_detached) marks a worker started on purpose"
    )
}

/// Judges one tracked object; pushes what changed onto `reports`. Returns whether to keep it.
///
/// An orphan task whose spawn line left orphans in no other request of its route (`lines`)
/// stays `Suspected`: it is confirmed once a second request leaves one too.
pub(crate) fn judge_object(
    id: u64,
    object: &mut TrackedObject,
    lines: &OrphanLines,
    now: Instant,
    config: &Config,
    reports: &mut Vec<LeakReport>,
) -> bool {
    if !object.liveness.is_alive() {
        if let Some(state) = object.lifecycle.gone() {
            reports.push(object_report(id, object, state, now));
        } else if let Liveness::Body(body) = &object.liveness {
            if body.was_unconsumed() {
                let detail = if object.scope.is_upstream_call() {
                    format!(
                        "upstream response body dropped before its end: {}; its connection \
                         cannot go back to the pool",
                        body.describe()
                    )
                } else {
                    format!("request body dropped before its end: {}", body.describe())
                };
                let kind = LeakKind::UnconsumedBody;
                reports.push(request_report(
                    &object.scope,
                    id,
                    kind,
                    LeakState::Confirmed,
                    now,
                    detail,
                ));
            }
        }
        return false;
    }
    let Some(closed_at) = object.scope.closed_at() else {
        return true;
    };
    if object.is_unread() {
        // A task cell whose stack could not be read yet: judged once it is.
        return true;
    }
    if object.judged_by_growth() {
        // Not against its request: the task judge counts it with its route and spawn location.
        return true;
    }
    if now.saturating_duration_since(closed_at) < config.grace {
        return true;
    }
    let alone = lines.alone(object, now, config);
    let confirm_sweeps = if alone {
        u32::MAX
    } else {
        config.confirm_sweeps
    };
    if let Some(state) = object.lifecycle.alive(confirm_sweeps) {
        let mut report = object_report(id, object, state, now);
        if alone {
            report.detail.push_str(&started_once(object.scope.words()));
        }
        reports.push(report);
    }
    true
}

/// The report for a tracked object in `state`.
pub(crate) fn object_report(
    id: u64,
    object: &TrackedObject,
    state: LeakState,
    now: Instant,
) -> LeakReport {
    let detail = match (&object.liveness, state) {
        (Liveness::Task(_), LeakState::Released) => "task ended".to_owned(),
        (Liveness::Cell(_), LeakState::Released) => "task cell freed: the task ended".to_owned(),
        (Liveness::Cell(_), _) => format!(
            "task cell still allocated {} ms after the spawn: the task is still running, or its \
             output is still held by a JoinHandle (seen by the allocator, which cannot tell which)",
            now.saturating_duration_since(object.created_at).as_millis()
        ),
        (Liveness::Task(_), _) => format!(
            "task still running {} ms after it was spawned",
            now.saturating_duration_since(object.created_at).as_millis()
        ),
        (Liveness::Body(body), LeakState::Released) => format!("body dropped; {}", body.describe()),
        (Liveness::Body(body), _) if object.scope.is_upstream_call() => format!(
            "upstream response body still alive after its request; {}",
            body.describe()
        ),
        (Liveness::Body(body), _) => format!("body still alive; {}", body.describe()),
        (Liveness::Object(_), LeakState::Released) => "object freed".to_owned(),
        (Liveness::Object(_), _) => "object still referenced".to_owned(),
    };
    let kind = object.liveness.leak_kind();
    LeakReport {
        location: object.location,
        type_name: object.type_name,
        await_trace: object.await_trace.as_deref().map(str::to_owned),
        ..request_report(&object.scope, id, kind, state, now, detail)
    }
}

/// Judges one request's scope: a stuck request, or a finished one the registry can let go.
/// Pushes what changed onto `reports`; returns whether to keep the scope.
///
/// A finished request whose memory is counted is kept until its grace period has passed (its
/// memory is judged then) — or let go at once when nothing of it can still change: it left no
/// task, body or watched object behind and holds less than the threshold. (Most requests: their
/// scopes and allocator slots are then not held for the whole grace period.)
pub(crate) fn judge_scope(
    scope: &Arc<Scope>,
    lifecycle: &mut Lifecycle,
    now: Instant,
    config: &Config,
    reports: &mut Vec<LeakReport>,
) -> bool {
    let Some(closed_at) = scope.closed_at() else {
        let open_for = now.saturating_duration_since(scope.opened_at);
        if !scope.streaming && open_for > config.max_request_age {
            if let Some(state) = lifecycle.alive(config.confirm_sweeps) {
                reports.push(stuck_report(scope, state, now, config));
            }
        }
        return true;
    };
    if let Some(state) = lifecycle.gone() {
        reports.push(stuck_report(scope, state, now, config));
    }
    if scope.memory.is_none() {
        return false;
    }
    let nothing_to_judge = !scope.left_objects()
        && scope
            .usage()
            .is_some_and(|u| !holds_memory(&u, config.memory_threshold));
    !nothing_to_judge && now.saturating_duration_since(closed_at) < config.grace
}

/// The report for a stuck request in `state`.
pub(crate) fn stuck_report(
    scope: &Scope,
    state: LeakState,
    now: Instant,
    config: &Config,
) -> LeakReport {
    let one = scope.words().one;
    let detail = match scope.closed_after() {
        Some(after) => format!("{one} ended after {} ms", after.as_millis()),
        None => format!(
            "{one} open for {} ms (max_request_age {} ms)",
            now.saturating_duration_since(scope.opened_at).as_millis(),
            config.max_request_age.as_millis()
        ),
    };
    request_report(scope, scope.id, LeakKind::StuckRequest, state, now, detail)
}
