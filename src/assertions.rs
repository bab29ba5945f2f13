//! Test assertions: [`LeakDetector::assert_no_leaks`].
//!
//! goleak-style: the assertion sweeps, and while objects of finished requests are still alive it
//! waits a little and sweeps again, up to a settle timeout — so a task that ends a few
//! milliseconds after its response is not a failure. What is still alive then (whatever the grace
//! period), stuck requests and one-shot findings such as an unconsumed body fail the assertion,
//! which panics with every report printed.
//!
//! Requests still in flight are not judged: assert after their responses have been read.

use std::time::{Duration, Instant};

use crate::detector::LeakDetector;
use crate::report::{render_list, LeakReport};

/// How long the assertion waits between sweeps.
const RETRY_EVERY: Duration = Duration::from_millis(5);

impl LeakDetector {
    /// Panics, listing every report, if a finished request left anything behind.
    ///
    /// Retries for the [`settle_timeout`](crate::LeakDetectorBuilder::settle_timeout) (default
    /// 2 s) before failing. Needs a tokio runtime with its timer enabled (`#[tokio::test]` has
    /// one).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let detector = leakwatch::LeakDetector::builder().build().unwrap();
    /// // … drive requests through detector.layer() …
    /// detector.assert_no_leaks().await;
    /// # }
    /// ```
    pub async fn assert_no_leaks(&self) {
        let settle = self.engine.config.settle_timeout;
        self.assert_no_leaks_within(settle).await;
    }

    /// [`assert_no_leaks`](Self::assert_no_leaks) with an explicit settle timeout.
    pub async fn assert_no_leaks_within(&self, settle: Duration) {
        if let Err(reports) = self.settle(settle).await {
            panic!(
                "leakwatch: {} leak(s) outlived their requests (settled for {} ms):\n{}",
                reports.len(),
                settle.as_millis(),
                render_list(&reports)
            );
        }
    }

    /// Sweeps until nothing of a finished request is alive or `settle` passes; returns what is
    /// left.
    async fn settle(&self, settle: Duration) -> Result<(), Vec<LeakReport>> {
        let deadline = Instant::now() + settle;
        loop {
            self.engine.sweep();
            let (reports, waiting) = self.engine.unsettled();
            if reports.is_empty() {
                return Ok(());
            }
            if !waiting || Instant::now() >= deadline {
                return Err(reports);
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}
