//! [`ReportSink`]: what receives reports (public as `leakwatch::sink::ReportSink`).

use super::LeakReport;

/// Receives leak reports.
///
/// ```
/// use leakwatch::sink::ReportSink;
/// use leakwatch::LeakReport;
///
/// struct Stderr;
///
/// impl ReportSink for Stderr {
///     fn report(&self, report: &LeakReport) {
///         eprintln!("leak: {report}");
///     }
/// }
///
/// let detector = leakwatch::LeakDetector::builder().sink(Stderr).build().unwrap();
/// # drop(detector);
/// ```
pub trait ReportSink: Send + Sync + 'static {
    /// Handles one report. Called from the sweeper, never on a request's path.
    fn report(&self, report: &LeakReport);
}
