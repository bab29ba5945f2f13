//! How the sweeper learns whether something a request left behind is still alive.
//!
//! The registry holds only what is written here — a `Weak` to a task's token, a body's small
//! shared state, a `Weak` to a watched object — never the task, the body or the object itself,
//! so tracking never extends a lifetime.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::alloc::TaskCell;
use crate::report::LeakKind;

/// Held by a tracked task's future (or for it, by the runtime hooks); the task has ended once
/// it is gone.
#[derive(Debug, Default)]
pub(crate) struct TaskToken {
    /// The task's id and runtime, once known, for task dumps.
    #[cfg(leakwatch_taskdump)]
    task: std::sync::OnceLock<(tokio::task::Id, tokio::runtime::Handle)>,
}

impl TaskToken {
    /// Records the task's id and its runtime (the first call wins).
    #[cfg(leakwatch_taskdump)]
    pub(crate) fn identify(&self, id: tokio::task::Id, runtime: tokio::runtime::Handle) {
        let _ = self.task.set((id, runtime));
    }

    /// The task's id and runtime, when known.
    #[cfg(leakwatch_taskdump)]
    pub(crate) fn task(&self) -> Option<&(tokio::task::Id, tokio::runtime::Handle)> {
        self.task.get()
    }
}

/// Tells whether a watched object is still alive.
pub(crate) trait Probe: Send + Sync {
    fn is_alive(&self) -> bool;
}

impl<T: ?Sized + Send + Sync> Probe for Weak<T> {
    fn is_alive(&self) -> bool {
        self.strong_count() > 0
    }
}

/// What the detector knows about one request body: shared between the body (which updates it)
/// and the registry (which reads it).
#[derive(Debug)]
pub(crate) struct BodyState {
    alive: AtomicBool,
    unconsumed: AtomicBool,
    bytes_read: AtomicU64,
    /// The exact length announced when the body was wrapped, if any.
    expected: Option<u64>,
}

impl BodyState {
    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// `true` once the body was dropped before its end.
    pub(crate) fn was_unconsumed(&self) -> bool {
        self.unconsumed.load(Ordering::Acquire)
    }

    /// A sentence on how much of the body was read, for reports.
    pub(crate) fn describe(&self) -> String {
        let read = self.bytes_read.load(Ordering::Relaxed);
        match self.expected {
            Some(expected) => format!("{read} of {expected} body bytes read"),
            None => format!("{read} body bytes read, length unknown"),
        }
    }
}

/// The body's side of a [`BodyState`]: counts the bytes read on the body's own thread and marks
/// the body dropped (and whether it was unconsumed) when it is dropped with the body.
#[derive(Debug)]
pub(crate) struct BodyProgress {
    state: Arc<BodyState>,
    bytes_read: u64,
    finished: bool,
}

impl BodyProgress {
    /// Progress of a body that announced `expected` bytes (if it knew), with the state the
    /// registry reads.
    pub(crate) fn new(expected: Option<u64>) -> (Self, Arc<BodyState>) {
        let state = Arc::new(BodyState {
            alive: AtomicBool::new(true),
            unconsumed: AtomicBool::new(false),
            bytes_read: AtomicU64::new(0),
            expected,
        });
        let progress = BodyProgress {
            state: state.clone(),
            bytes_read: 0,
            finished: false,
        };
        (progress, state)
    }

    /// `bytes` more were read.
    pub(crate) fn read(&mut self, bytes: u64) {
        self.bytes_read += bytes;
        self.state
            .bytes_read
            .store(self.bytes_read, Ordering::Relaxed);
    }

    /// Nothing is left to consume: the end was reached, or the stream failed.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for BodyProgress {
    fn drop(&mut self) {
        if !self.finished {
            self.state.unconsumed.store(true, Ordering::Relaxed);
        }
        self.state.alive.store(false, Ordering::Release);
    }
}

/// How the sweeper learns whether a tracked object is still alive.
pub(crate) enum Liveness {
    Task(Weak<TaskToken>),
    /// A task seen by the allocator: its cell (a plain `tokio::spawn`, without the hooks).
    Cell(TaskCell),
    Body(Arc<BodyState>),
    Object(Box<dyn Probe>),
}

impl Liveness {
    pub(crate) fn is_alive(&self) -> bool {
        match self {
            Liveness::Task(token) => token.strong_count() > 0,
            Liveness::Cell(cell) => cell.is_alive(),
            Liveness::Body(state) => state.is_alive(),
            Liveness::Object(probe) => probe.is_alive(),
        }
    }

    /// The kind of leak this object is when it outlives its request.
    pub(crate) fn is_task(&self) -> bool {
        matches!(self, Liveness::Task(_) | Liveness::Cell(_))
    }

    pub(crate) fn leak_kind(&self) -> LeakKind {
        match self {
            Liveness::Task(_) | Liveness::Cell(_) => LeakKind::OrphanTask,
            Liveness::Body(_) => LeakKind::RetainedBody,
            Liveness::Object(_) => LeakKind::WatchedObject,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_read_to_its_end_is_consumed() {
        let (mut progress, state) = BodyProgress::new(Some(5));
        progress.read(3);
        progress.read(2);
        progress.finish();
        assert!(state.is_alive());
        drop(progress);
        assert!(!state.is_alive());
        assert!(!state.was_unconsumed());
        assert_eq!(state.describe(), "5 of 5 body bytes read");
    }

    #[test]
    fn a_body_dropped_early_is_unconsumed() {
        let (progress, state) = BodyProgress::new(None);
        drop(progress);
        assert!(state.was_unconsumed());
        assert_eq!(state.describe(), "0 body bytes read, length unknown");
    }

    #[test]
    fn liveness_never_keeps_objects_alive() {
        let object = Arc::new(vec![0u8; 64]);
        let token = Arc::new(TaskToken::default());
        let watched = Liveness::Object(Box::new(Arc::downgrade(&object)));
        let task = Liveness::Task(Arc::downgrade(&token));
        assert!(watched.is_alive() && task.is_alive());
        assert_eq!(Arc::strong_count(&object), 1);
        assert_eq!(watched.leak_kind(), LeakKind::WatchedObject);
        assert_eq!(task.leak_kind(), LeakKind::OrphanTask);
        drop((object, token));
        assert!(!watched.is_alive() && !task.is_alive());
    }
}
