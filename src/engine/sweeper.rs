//! The background sweeper: a thread of its own that runs a sweep on an interval.
//!
//! It never occupies a runtime worker and needs no timer driver. It stops as soon as the
//! detector is gone: the engine holds the only [`Sweeper`], whose drop wakes the thread, and the
//! thread itself holds the engine only weakly (through the closure it runs).

use std::convert::Infallible;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::util::sync::lock;

/// The handle on the sweeper thread, kept by the engine.
pub(crate) struct Sweeper {
    /// Never sends: dropping it (with the engine) disconnects the channel, which wakes the
    /// thread at once.
    _stop: Sender<Infallible>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Sweeper {
    /// A sweeper not started yet, and what its thread will wait on.
    pub(crate) fn new() -> (Sweeper, Receiver<Infallible>) {
        let (stop, stopped) = mpsc::channel();
        let sweeper = Sweeper {
            _stop: stop,
            thread: Mutex::new(None),
        };
        (sweeper, stopped)
    }

    /// Starts the thread: every `interval` it calls `sweep`, until `sweep` returns `false`
    /// (the detector is gone) or this handle is dropped. If no thread can be started, the
    /// detector still works through `sweep_now` and the assertions.
    pub(crate) fn start(
        &self,
        interval: Duration,
        stopped: Receiver<Infallible>,
        mut sweep: impl FnMut() -> bool + Send + 'static,
    ) {
        let thread = std::thread::Builder::new()
            .name("leakwatch-sweeper".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                    Ok(never) => match never {},
                }
                if !sweep() {
                    return;
                }
            })
            .ok();
        *lock(&self.thread) = thread;
    }

    /// Takes the thread's handle (tests join it).
    #[cfg(test)]
    pub(crate) fn take_thread(&self) -> Option<JoinHandle<()>> {
        lock(&self.thread).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_thread_sweeps_until_told_the_detector_is_gone() {
        let (sweeper, stopped) = Sweeper::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        sweeper.start(Duration::from_millis(1), stopped, move || {
            counted.fetch_add(1, Ordering::Relaxed) < 2
        });
        sweeper.take_thread().unwrap().join().unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn dropping_the_handle_stops_the_thread_at_once() {
        let (sweeper, stopped) = Sweeper::new();
        sweeper.start(Duration::from_secs(3600), stopped, || true);
        let thread = sweeper.take_thread().unwrap();
        drop(sweeper);
        thread.join().unwrap();
    }
}
