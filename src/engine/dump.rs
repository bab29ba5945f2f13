//! Await traces of orphan tasks, from tokio task dumps (`--cfg tokio_unstable`, feature
//! `taskdump`, Linux).
//!
//! When a sweep first reports tasks as orphans, the engine asks for their traces. A dump is taken
//! off the request path — on the orphans' runtime, as one task of its own, then symbolised on
//! the blocking pool (about 100 ms) — at most one at a time and one per sweep, bounded by
//! [`DUMP_TIMEOUT`]. The traces of the orphans are added to their active reports (what
//! [`leaks`](crate::LeakDetector::leaks) and the message of
//! [`assert_no_leaks`](crate::LeakDetector::assert_no_leaks) return) and to their registry
//! entries, so that a later state change carries one too. A dump
//! stops the runtime's workers at a barrier and re-polls every task in tracing mode, which is why
//! dumps are rare: nothing is dumped when no new orphan was reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::Id;

use crate::judge::objects::Active;
use crate::registry::Registry;
use crate::report::{LeakKind, LeakReport, LeakState};
use crate::request::liveness::Liveness;
use crate::util::sync::lock;

/// How long one dump may take before it is abandoned (tokio's own barrier waits 250 ms for the
/// workers; a blocked worker can stop a dump for good).
pub(crate) const DUMP_TIMEOUT: Duration = Duration::from_secs(2);

/// Orphans waiting for a trace, and whether a dump is under way.
#[derive(Default)]
pub(crate) struct TaskDumps {
    /// Registry ids of reported orphans whose trace was not asked for yet.
    pending: Mutex<Vec<u64>>,
    /// Set while a dump is under way.
    in_flight: Arc<AtomicBool>,
}

impl TaskDumps {
    /// Notes the orphans `reports` announce for the first time, and starts a dump unless one is
    /// under way: of the runtime of the first pending orphan whose task is known (a task
    /// wrapped by `scoped` is known from its first poll on).
    pub(crate) fn after_sweep(
        &self,
        registry: &Arc<Registry>,
        active: &Arc<Mutex<Active>>,
        reports: &[LeakReport],
    ) {
        let mut pending = lock(&self.pending);
        pending.extend(
            reports
                .iter()
                .filter(|r| is_first_report_of_orphan(r))
                .map(|r| r.id),
        );
        if pending.is_empty() || self.in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut wanted = HashMap::new();
        let mut runtime: Option<Handle> = None;
        pending.retain(|&object| {
            let task = registry.with_object(object, |object| match &object.liveness {
                Liveness::Task(token) => token.upgrade().map(|token| token.task().cloned()),
                _ => None,
            });
            let (task, handle) = match task.flatten() {
                // Gone, or not a running task: nothing to trace.
                None => return false,
                // Not polled yet: asked for again after the next sweep.
                Some(None) => return true,
                Some(Some(task)) => task,
            };
            // One runtime per dump; orphans of others wait for a later sweep.
            match &runtime {
                Some(runtime) if runtime.id() != handle.id() => return true,
                Some(_) => {}
                None => runtime = Some(handle),
            }
            wanted.insert(task, object);
            false
        });
        drop(pending);
        match runtime {
            Some(runtime) => start(
                runtime,
                wanted,
                Arc::downgrade(registry),
                Arc::downgrade(active),
                self.in_flight.clone(),
            ),
            None => self.in_flight.store(false, Ordering::Release),
        }
    }
}

/// Whether `report` is the first report of an orphan task: its first state change.
fn is_first_report_of_orphan(report: &LeakReport) -> bool {
    report.kind == LeakKind::OrphanTask
        && match report.state {
            LeakState::Suspected => true,
            // Confirmed at once (`confirm_sweeps(0)`), or after a Suspected that already asked.
            LeakState::Confirmed => report.await_trace.is_none(),
            LeakState::Released => false,
        }
}

/// Dumps `runtime`'s tasks and attaches the traces of the `wanted` ones (task id → registry id)
/// to their registry entries (for the reports made of them later) and to their active reports.
fn start(
    runtime: Handle,
    wanted: HashMap<Id, u64>,
    registry: Weak<Registry>,
    active: Weak<Mutex<Active>>,
    in_flight: Arc<AtomicBool>,
) {
    let dumper = runtime.clone();
    // On a current-thread runtime a dump must be awaited inside it: a task of its own does that
    // on either flavour, and never blocks the sweeper.
    runtime.spawn(async move {
        let done = Finished(in_flight);
        let Ok(dump) = tokio::time::timeout(DUMP_TIMEOUT, dumper.dump()).await else {
            return;
        };
        // Symbolising the traces takes about 100 ms: not on a worker thread.
        let _ = tokio::task::spawn_blocking(move || {
            let _done = done;
            let (Some(registry), Some(active)) = (registry.upgrade(), active.upgrade()) else {
                return;
            };
            for task in dump.tasks().iter() {
                if let Some(&object) = wanted.get(&task.id()) {
                    let trace = bounded(task.trace().to_string());
                    lock(&active).attach_await_trace(object, &trace);
                    registry.set_await_trace(object, trace.into());
                }
            }
        })
        .await;
    });
}

/// Clears the in-flight flag when the dump is over, however it ended.
struct Finished(Arc<AtomicBool>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `trace`, cut at a line end to at most [`LeakReport::MAX_AWAIT_TRACE`] bytes.
fn bounded(trace: String) -> String {
    let max = LeakReport::MAX_AWAIT_TRACE;
    if trace.len() <= max {
        return trace;
    }
    let mut end = max - "\n…".len();
    while !trace.is_char_boundary(end) {
        end -= 1;
    }
    let end = trace[..end].rfind('\n').unwrap_or(end);
    format!("{}\n…", &trace[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_traces_are_cut_at_a_line_end() {
        let line = "└╼ some::deeply::nested::future at src/lib.rs:10:5\n";
        let long = line.repeat(1000);
        let cut = bounded(long);
        assert!(cut.len() <= LeakReport::MAX_AWAIT_TRACE, "{}", cut.len());
        assert!(cut.ends_with("\n…"));
        assert!(cut.lines().rev().skip(1).all(|l| l == line.trim_end()));
        assert_eq!(bounded("short".into()), "short");
    }
}
