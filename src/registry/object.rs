//! An object a request left behind, as the registry holds it, and how it is judged.

use std::sync::Arc;
use std::time::Instant;

use crate::report::lifecycle::Lifecycle;
use crate::report::SourceLocation;
use crate::request::liveness::Liveness;
use crate::request::origin;
use crate::request::scope::{Judged, Scope};

/// An object a request left behind: a task, a request body or a watched object.
pub(crate) struct TrackedObject {
    pub(crate) scope: Arc<Scope>,
    pub(crate) liveness: Liveness,
    pub(crate) location: Option<SourceLocation>,
    pub(crate) type_name: Option<&'static str>,
    pub(crate) created_at: Instant,
    pub(crate) lifecycle: Lifecycle,
    /// Where a task is stuck, from a task dump (see [`crate::engine::dump`]).
    pub(crate) await_trace: Option<Arc<str>>,
    /// How it is judged, as it was tracked.
    judged: Judged,
}

impl TrackedObject {
    /// A newly tracked object, judged as [`judged`](Self::judged) said.
    pub(super) fn new(
        scope: Arc<Scope>,
        liveness: Liveness,
        location: Option<SourceLocation>,
        type_name: Option<&'static str>,
        judged: Judged,
    ) -> Self {
        TrackedObject {
            scope,
            liveness,
            location,
            type_name,
            created_at: Instant::now(),
            lifecycle: Lifecycle::default(),
            await_trace: None,
            judged,
        }
    }

    /// How an object of `liveness` spawned at `location` is judged; `None` for a task spawned
    /// where the detector was told to look away (`ignored` patterns). A task cell is judged
    /// once the sweeper has read its stack.
    pub(super) fn judged(
        liveness: &Liveness,
        location: Option<SourceLocation>,
        ignored: &[Box<str>],
    ) -> Option<Judged> {
        Some(match (liveness, location) {
            (Liveness::Task(_), Some(at)) => {
                if ignored.iter().any(|p| origin::matches(at.file, p)) {
                    return None;
                }
                if origin::is_dependency(at.file) {
                    Judged::ByGrowth
                } else {
                    Judged::PerRequest
                }
            }
            (Liveness::Cell(_), _) => Judged::Unread,
            _ => Judged::PerRequest,
        })
    }

    /// Whether it is judged by growth rather than against its request: a task a dependency
    /// spawned, or any task of a request answered `101 Switching Protocols` (it lives with the
    /// upgraded connection).
    pub(crate) fn judged_by_growth(&self) -> bool {
        self.judged == Judged::ByGrowth || (self.liveness.is_task() && self.scope.is_upgraded())
    }

    /// Whether it is a task cell whose stack the sweeper has not read yet.
    pub(crate) fn is_unread(&self) -> bool {
        self.judged == Judged::Unread
    }

    /// Sets what reading a task cell's stack found: where the task was spawned, how it is judged.
    pub(crate) fn read_as(&mut self, location: Option<SourceLocation>, judged: Judged) {
        self.location = location;
        self.judged = judged;
    }
}
