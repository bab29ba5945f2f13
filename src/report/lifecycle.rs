//! The life cycle every finding goes through, and the standing alert built on it.
//!
//! A tracked object, a stuck request, a route retaining memory and a growth trend all move the
//! same way: alive past its grace period → [`Suspected`](LeakState::Suspected); still alive
//! `confirm_sweeps` sweeps later → [`Confirmed`](LeakState::Confirmed), reported once; gone after
//! having been reported → [`Released`](LeakState::Released), so that a false positive shows up
//! instead of vanishing; gone before it was ever reported → forgotten silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::report::{LeakReport, LeakState};

/// Where one finding stands: the state last reported and the sweeps it has stayed suspected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lifecycle {
    reported: Option<LeakState>,
    sweeps: u32,
}

impl Lifecycle {
    /// The state last reported, if any.
    pub(crate) fn reported(&self) -> Option<LeakState> {
        self.reported
    }

    /// Whether the state last reported is `Suspected` or `Confirmed`.
    pub(crate) fn is_active(&self) -> bool {
        self.reported.is_some_and(LeakState::is_active)
    }

    /// The finding is still there at this sweep (past its grace period): returns the new state
    /// to report, if it changed.
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

    /// The finding is gone: `Released` if it had been reported.
    pub(crate) fn gone(&mut self) -> Option<LeakState> {
        if !self.is_active() {
            return None;
        }
        self.reported = Some(LeakState::Released);
        Some(LeakState::Released)
    }
}

/// A [`Lifecycle`] in one atomic word, for a finding whose subject is shared: a request's
/// `StuckRequest` life cycle lives in its scope, written by the sweeper and read, when the
/// request ends, by the thread that ends it.
#[derive(Debug, Default)]
pub(crate) struct AtomicLifecycle(AtomicU64);

impl AtomicLifecycle {
    pub(crate) fn load(&self) -> Lifecycle {
        let word = self.0.load(Ordering::Acquire);
        let reported = match word & 0b11 {
            0 => None,
            1 => Some(LeakState::Suspected),
            2 => Some(LeakState::Confirmed),
            _ => Some(LeakState::Released),
        };
        Lifecycle {
            reported,
            sweeps: (word >> 32) as u32,
        }
    }

    pub(crate) fn store(&self, lifecycle: Lifecycle) {
        let reported = match lifecycle.reported {
            None => 0,
            Some(LeakState::Suspected) => 1,
            Some(LeakState::Confirmed) => 2,
            Some(LeakState::Released) => 3,
        };
        self.0.store(
            u64::from(lifecycle.sweeps) << 32 | reported,
            Ordering::Release,
        );
    }
}

/// A finding about something that persists rather than an object that can be freed — a route
/// retaining memory, a growing heap — re-evaluated at every sweep: raised while its condition
/// holds, released (and ready to be raised afresh) once it stops holding.
pub(crate) struct StandingAlert {
    id: u64,
    lifecycle: Lifecycle,
    /// The alert as it last stood, in its current state.
    report: Option<LeakReport>,
}

impl StandingAlert {
    /// An alert whose reports carry `id`.
    pub(crate) fn new(id: u64) -> Self {
        StandingAlert {
            id,
            lifecycle: Lifecycle::default(),
            report: None,
        }
    }

    /// The condition holds, and `current` describes it now. Returns the report to announce when
    /// the alert's state changed.
    pub(crate) fn raise(
        &mut self,
        mut current: LeakReport,
        confirm_sweeps: u32,
    ) -> Option<LeakReport> {
        let changed = self.lifecycle.alive(confirm_sweeps);
        current.id = self.id;
        current.state = self.lifecycle.reported().unwrap_or(LeakState::Suspected);
        let announce = changed.map(|_| current.clone());
        self.report = Some(current);
        announce
    }

    /// The condition no longer holds: returns the `Released` report to announce if the alert
    /// had been reported. A later alert starts its life cycle afresh.
    pub(crate) fn release(
        &mut self,
        detected_at: SystemTime,
        detail: String,
    ) -> Option<LeakReport> {
        let state = self.lifecycle.gone()?;
        self.lifecycle = Lifecycle::default();
        let mut last = self.report.take()?;
        last.state = state;
        last.detected_at = detected_at;
        last.detail = detail;
        Some(last)
    }

    /// The alert's report while it is active.
    pub(crate) fn active(&self) -> Option<&LeakReport> {
        self.report.as_ref().filter(|_| self.lifecycle.is_active())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_life_cycle_round_trips_every_state() {
        let shared = AtomicLifecycle::default();
        assert_eq!(shared.load(), Lifecycle::default());
        let mut lifecycle = Lifecycle::default();
        for _ in 0..4 {
            lifecycle.alive(3);
            shared.store(lifecycle);
            assert_eq!(shared.load(), lifecycle);
        }
        assert_eq!(lifecycle.reported(), Some(LeakState::Confirmed));
        lifecycle.gone();
        shared.store(lifecycle);
        assert_eq!(shared.load().reported(), Some(LeakState::Released));
    }
    use crate::test_helpers::sample_report;

    #[test]
    fn suspected_then_confirmed_after_the_configured_sweeps() {
        let mut t = Lifecycle::default();
        assert_eq!(t.alive(2), Some(LeakState::Suspected));
        assert_eq!(t.alive(2), None);
        assert_eq!(t.alive(2), Some(LeakState::Confirmed));
        assert_eq!(t.alive(2), None, "confirmed is reported once");
        assert_eq!(t.gone(), Some(LeakState::Released));
        assert_eq!(t.gone(), None, "released is reported once");
    }

    #[test]
    fn zero_confirm_sweeps_confirm_at_once() {
        let mut t = Lifecycle::default();
        assert_eq!(t.alive(0), Some(LeakState::Confirmed));
        assert_eq!(t.reported(), Some(LeakState::Confirmed));
    }

    #[test]
    fn one_confirm_sweep_confirms_on_the_next_sweep() {
        let mut t = Lifecycle::default();
        assert_eq!(t.alive(1), Some(LeakState::Suspected));
        assert_eq!(t.alive(1), Some(LeakState::Confirmed));
    }

    #[test]
    fn suspected_then_freed_is_released() {
        let mut t = Lifecycle::default();
        assert_eq!(t.alive(3), Some(LeakState::Suspected));
        assert!(t.is_active());
        assert_eq!(t.gone(), Some(LeakState::Released));
        assert!(!t.is_active());
    }

    #[test]
    fn never_reported_findings_leave_silently() {
        let mut t = Lifecycle::default();
        assert_eq!(t.gone(), None);
        assert_eq!(t.reported(), None);
    }

    #[test]
    fn a_standing_alert_is_raised_kept_released_and_raised_afresh() {
        let mut alert = StandingAlert::new(42);
        let raised = alert.raise(sample_report(), 1).expect("suspected");
        assert_eq!((raised.id, raised.state), (42, LeakState::Suspected));
        let confirmed = alert.raise(sample_report(), 1).expect("confirmed");
        assert_eq!(confirmed.state, LeakState::Confirmed);
        assert!(alert.raise(sample_report(), 1).is_none(), "announced once");
        assert_eq!(alert.active().unwrap().state, LeakState::Confirmed);

        let at = SystemTime::UNIX_EPOCH;
        let released = alert.release(at, "flat again".into()).expect("released");
        assert_eq!(released.state, LeakState::Released);
        assert_eq!(
            (released.detected_at, released.detail.as_str()),
            (at, "flat again")
        );
        assert!(alert.active().is_none());
        assert!(alert.release(at, String::new()).is_none(), "released once");
        let again = alert.raise(sample_report(), 1).expect("a new life cycle");
        assert_eq!(again.state, LeakState::Suspected);
    }
}
