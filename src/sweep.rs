//! The sweeper: judges tracked objects and scopes, and moves reports through their states.
//!
//! For each object whose scope closed more than `grace` ago:
//!
//! - still alive → [`Suspected`](LeakState::Suspected) (or straight to `Confirmed` when
//!   `confirm_sweeps` is zero);
//! - still alive `confirm_sweeps` sweeps later → [`Confirmed`](LeakState::Confirmed), reported once;
//! - freed after having been reported → [`Released`](LeakState::Released), so that a false
//!   positive shows up instead of vanishing;
//! - freed before it was ever reported → forgotten silently.
//!
//! A body dropped before its end is a one-shot [`UnconsumedBody`](LeakKind::UnconsumedBody)
//! finding. A request open longer than `max_request_age` (on a route that is not allowed to
//! stream) goes through the same states as a [`StuckRequest`](LeakKind::StuckRequest).
//!
//! The background sweeper is a thread of its own that holds only a `Weak` to the detector: it
//! never occupies a runtime worker, needs no timer driver, and ends as soon as the last detector
//! handle (and every layer made from it) is dropped.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::detector::Shared;
use crate::registry::{Entry, Liveness, ReportParts, ScopeEntry};
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::scope::Scope;

/// The life cycle of one tracked object or scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tracker {
    reported: Option<LeakState>,
    sweeps: u32,
}

impl Tracker {
    /// The state last reported, if any.
    pub(crate) fn reported(&self) -> Option<LeakState> {
        self.reported
    }

    /// The object is alive past its grace period at this sweep: returns the new state to
    /// report, if it changed.
    pub(crate) fn alive(&mut self, confirm_sweeps: u32) -> Option<LeakState> {
        let next = match self.reported {
            None if confirm_sweeps == 0 => LeakState::Confirmed,
            None => LeakState::Suspected,
            Some(LeakState::Suspected) => {
                self.sweeps = self.sweeps.saturating_add(1);
                if self.sweeps < confirm_sweeps {
                    return None;
                }
                LeakState::Confirmed
            }
            Some(_) => return None,
        };
        self.reported = Some(next);
        Some(next)
    }

    /// The object is gone: `Released` if it had been reported.
    pub(crate) fn gone(&mut self) -> Option<LeakState> {
        match self.reported {
            Some(state) if state.is_active() => {
                self.reported = Some(LeakState::Released);
                Some(LeakState::Released)
            }
            _ => None,
        }
    }
}

/// What one sweep found.
#[derive(Default)]
pub(crate) struct Outcome {
    /// State changes, in the order found.
    pub(crate) reports: Vec<LeakReport>,
    /// Entries removed from the registry.
    pub(crate) removed: usize,
    /// Closed requests whose memory is to be judged, in no particular order.
    pub(crate) memory_judged: Vec<Arc<Scope>>,
    /// Requests still open.
    pub(crate) open_scopes: u64,
    /// Scopes of removed entries, offered back to the registry for reuse once nothing else
    /// holds them.
    pub(crate) finished: Vec<Arc<Scope>>,
}

/// Judges one object entry. Returns whether to keep it.
pub(crate) fn judge_object(
    id: u64,
    entry: &mut Entry,
    now: Instant,
    config: &Config,
    out: &mut Outcome,
) -> bool {
    let kind = entry.liveness.leak_kind();
    if !entry.liveness.is_alive() {
        let unconsumed = match &entry.liveness {
            Liveness::Body(state) if state.was_unconsumed() => Some(state.describe()),
            _ => None,
        };
        match (entry.tracker.gone(), unconsumed) {
            (Some(state), _) => out.reports.push(object_report(id, entry, kind, state, now)),
            (None, Some(detail)) => out.reports.push(
                ReportParts {
                    id,
                    kind: LeakKind::UnconsumedBody,
                    state: LeakState::Confirmed,
                    scope: &entry.scope,
                    location: None,
                    type_name: None,
                    detail: format!("request body dropped before its end: {detail}"),
                }
                .build(now),
            ),
            (None, None) => {}
        }
        out.removed += 1;
        return false;
    }
    let Some(closed_at) = entry.scope.closed_at() else {
        return true;
    };
    if now.saturating_duration_since(closed_at) < config.grace {
        return true;
    }
    if let Some(state) = entry.tracker.alive(config.confirm_sweeps) {
        out.reports.push(object_report(id, entry, kind, state, now));
    }
    true
}

/// The report for an object entry in `state`.
pub(crate) fn object_report(
    id: u64,
    entry: &Entry,
    kind: LeakKind,
    state: LeakState,
    now: Instant,
) -> LeakReport {
    let detail = match (&entry.liveness, state) {
        (Liveness::Task(_), LeakState::Released) => "task ended".to_owned(),
        (Liveness::Task(_), _) => format!(
            "task still running {} ms after it was spawned",
            now.saturating_duration_since(entry.created_at).as_millis()
        ),
        (Liveness::Body(body), LeakState::Released) => format!("body dropped; {}", body.describe()),
        (Liveness::Body(body), _) => format!("body still alive; {}", body.describe()),
        (Liveness::Object(_), LeakState::Released) => "object freed".to_owned(),
        (Liveness::Object(_), _) => "object still referenced".to_owned(),
    };
    ReportParts {
        id,
        kind,
        state,
        scope: &entry.scope,
        location: entry.location,
        type_name: entry.type_name,
        detail,
    }
    .build(now)
}

/// Judges one scope entry (stuck requests). Returns whether to keep it.
pub(crate) fn judge_scope(
    entry: &mut ScopeEntry,
    now: Instant,
    config: &Config,
    out: &mut Outcome,
) -> bool {
    if let Some(closed_at) = entry.scope.closed_at() {
        if let Some(state) = entry.tracker.gone() {
            out.reports.push(scope_report(entry, state, now, config));
        }
        if entry.scope.memory.is_some() {
            // The request's memory is judged once its grace period has passed — or at once when
            // nothing of it can still change that: it left no task, body or watched object
            // behind and holds less than the threshold. (Most requests: their scopes and slots
            // are then not held for the whole grace period.)
            let settled = !entry.scope.left_objects()
                && entry
                    .scope
                    .usage()
                    .is_some_and(|u| u.retained_bytes() < config.memory_threshold);
            if !settled && now.saturating_duration_since(closed_at) < config.grace {
                return true;
            }
            out.memory_judged.push(entry.scope.clone());
        }
        out.finished.push(entry.scope.clone());
        out.removed += 1;
        return false;
    }
    out.open_scopes += 1;
    let open_for = now.saturating_duration_since(entry.scope.opened_at);
    if !entry.scope.streaming && open_for > config.max_request_age {
        if let Some(state) = entry.tracker.alive(config.confirm_sweeps) {
            out.reports.push(scope_report(entry, state, now, config));
        }
    }
    true
}

/// The report for a stuck request in `state`.
pub(crate) fn scope_report(
    entry: &ScopeEntry,
    state: LeakState,
    now: Instant,
    config: &Config,
) -> LeakReport {
    let scope = &entry.scope;
    let detail = match scope.closed_after() {
        Some(after) => format!("request ended after {} ms", after.as_millis()),
        None => format!(
            "request open for {} ms (max_request_age {} ms)",
            now.saturating_duration_since(scope.opened_at).as_millis(),
            config.max_request_age.as_millis()
        ),
    };
    ReportParts {
        id: scope.id,
        kind: LeakKind::StuckRequest,
        state,
        scope,
        location: None,
        type_name: None,
        detail,
    }
    .build(now)
}

/// Runs the background sweeper until the detector is gone.
pub(crate) fn spawn_sweeper(
    shared: Weak<Shared>,
    interval: Duration,
    stop: Receiver<()>,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("leakwatch-sweeper".into())
        .spawn(move || loop {
            match stop.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                // The detector's state was dropped (its sender with it), or asked us to stop.
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.sweep();
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspected_then_confirmed_after_the_configured_sweeps() {
        let mut t = Tracker::default();
        assert_eq!(t.alive(2), Some(LeakState::Suspected));
        assert_eq!(t.alive(2), None);
        assert_eq!(t.alive(2), Some(LeakState::Confirmed));
        assert_eq!(t.alive(2), None, "confirmed is reported once");
        assert_eq!(t.gone(), Some(LeakState::Released));
        assert_eq!(t.gone(), None, "released is reported once");
    }

    #[test]
    fn zero_confirm_sweeps_confirm_at_once() {
        let mut t = Tracker::default();
        assert_eq!(t.alive(0), Some(LeakState::Confirmed));
        assert_eq!(t.reported(), Some(LeakState::Confirmed));
    }

    #[test]
    fn one_confirm_sweep_confirms_on_the_next_sweep() {
        let mut t = Tracker::default();
        assert_eq!(t.alive(1), Some(LeakState::Suspected));
        assert_eq!(t.alive(1), Some(LeakState::Confirmed));
    }

    #[test]
    fn suspected_then_freed_is_released() {
        let mut t = Tracker::default();
        assert_eq!(t.alive(3), Some(LeakState::Suspected));
        assert_eq!(t.gone(), Some(LeakState::Released));
    }

    #[test]
    fn never_reported_objects_leave_silently() {
        let mut t = Tracker::default();
        assert_eq!(t.gone(), None);
        assert_eq!(t.reported(), None);
    }
}
