//! Tests, one line: [`assert_no_leaks_in`] and [`assert_no_leaks_repeated`] run a test's body
//! as units of work under a detector of their own, and fail naming what it left behind; the
//! runner behind `#[leakwatch::test]`.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::LeakDetectorBuilder;
use crate::engine::Engine;
use crate::util::panic_at_await::PanicAtAwait;

/// The fewest calls [`assert_no_leaks_repeated`] judges memory with: a call's memory is a leak
/// when three calls still hold it a quarter of the calls later, so a quarter must be more than
/// a handful.
pub const MIN_REPEAT: usize = 16;

/// Runs `future` as one unit of work under a detector of its own, and panics at the caller's
/// `.await` — listing what is left, with the message of
/// [`assert_no_leaks`](crate::LeakDetector::assert_no_leaks) — if it left anything behind: a
/// task still running (with its spawn line), a body, a [`watch`](crate::watch)ed object.
/// Returns the future's output otherwise.
///
/// What the future does is its own: tests running in parallel, each with its own call, each
/// see only their own leftovers. The unit is named after the test (the thread's name, which
/// the test harness sets to the test's path). A task that ends a little after the unit is
/// waited for, up to two seconds, as `assert_no_leaks` does.
///
/// What it sees is what the set-up lets a detector see (the failure message says which
/// applies): tasks spawned with plain `tokio::spawn` need the
/// [`TrackingAllocator`](crate::TrackingAllocator) as the test binary's global allocator, or a
/// runtime set up with `instrument_runtime` (`--cfg tokio_unstable`; `#[leakwatch::test]` sets
/// one up); [`crate::spawn`], bodies and watched objects are always seen. Memory needs
/// repetition: see [`assert_no_leaks_repeated`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // In a `#[tokio::test]`:
/// let answer = leakwatch::assert_no_leaks_in(async {
///     let task = tokio::spawn(async { 6 * 7 });
///     task.await.unwrap()
/// })
/// .await;
/// assert_eq!(answer, 42);
/// # }
/// ```
pub fn assert_no_leaks_in<F: Future>(future: F) -> impl Future<Output = F::Output> {
    PanicAtAwait::new(once(test_name(), future))
}

/// Runs `future` as one unit named `name` under a detector of its own; returns its output, or
/// the failure message naming what it left.
async fn once<F: Future>(name: Cow<'static, str>, future: F) -> Result<F::Output, String> {
    let detector = test_detector(None)?;
    let output = detector.unit(name.clone(), future).await;
    detector.check(&name, 1).await.map(|()| output)
}

/// Runs `body` `calls` times, one unit of work per call, under a detector of its own, then
/// judges what they left as [`assert_no_leaks_in`] does — and their memory by the window rule
/// of routes: memory a call keeps is a leak when at least three calls still hold it `calls / 4`
/// calls later, and what the calls keep grows with their number. So "each call keeps 2 KiB"
/// fails, while a cache filled by the first call, a bounded cache of fewer than `calls / 4`
/// entries and a `OnceLock` initialised on the first call pass. A cache that evicts lazily
/// holds more than its capacity: `moka` applies its writes 64 at a time, so a moka cache of
/// capacity `c` needs `calls / 4` above `c + 64`. Memory needs the
/// [`TrackingAllocator`](crate::TrackingAllocator) as the global allocator.
///
/// Panics at the caller's `.await` naming what was left behind, or when it cannot judge
/// memory: `calls` under [`MIN_REPEAT`], no `TrackingAllocator`, or none of the allocator's
/// route slots left for the test (one per route or unit name, 4 096 for the process's life).
///
/// ```
/// use std::sync::Mutex;
///
/// // In the test binary (`tests/*.rs`): memory is counted by the allocator.
/// #[global_allocator]
/// static ALLOC: leakwatch::TrackingAllocator = leakwatch::TrackingAllocator::system();
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// static CACHE: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// // In a `#[tokio::test]`: a cache that keeps its newest 4 entries is not a leak.
/// leakwatch::unit::assert_no_leaks_repeated(64, || async {
///     let mut cache = CACHE.lock().unwrap();
///     if cache.len() == 4 {
///         cache.remove(0);
///     }
///     cache.push(42);
/// })
/// .await;
/// # }
/// ```
pub fn assert_no_leaks_repeated<F, Fut>(calls: usize, body: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    let name = test_name();
    PanicAtAwait::new(repeated(name, calls, body))
}

async fn repeated<F, Fut>(name: Cow<'static, str>, calls: usize, mut body: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future,
{
    if calls < MIN_REPEAT {
        return Err(format!(
            "leakwatch: assert_no_leaks_repeated needs at least {MIN_REPEAT} calls to tell \
             memory each call keeps from a cache or a lazy static; got {calls}"
        ));
    }
    let detector = test_detector(Some(calls as u64 / 4))?;
    // Repeating is for memory: a pass that could not judge it would say nothing false.
    if let Some(why) = detector.engine.unit_memory_uncounted(&name) {
        return Err(format!(
            "leakwatch: assert_no_leaks_repeated cannot judge memory: {why}"
        ));
    }
    for _ in 0..calls {
        detector.unit(name.clone(), body()).await;
    }
    detector.check(&name, calls).await
}

/// The name of the test running on this thread (the test harness names its threads after
/// its tests), or `"test"`.
fn test_name() -> Cow<'static, str> {
    match std::thread::current().name() {
        Some(name) if name != "main" => Cow::Owned(name.to_owned()),
        _ => Cow::Borrowed("test"),
    }
}

/// A detector for one test: no grace (a task that ends shortly after is waited for by the
/// check), nothing confirmed over sweeps, memory windows of `window` units judged by units
/// alone, no process-wide trend (other tests share the process), no sink (the failure message
/// says it all).
fn test_detector(window: Option<u64>) -> Result<TestDetector, String> {
    let mut builder = LeakDetectorBuilder::default()
        .grace(Duration::ZERO)
        .confirm_sweeps(0)
        .dependency_growth_span(Duration::ZERO)
        .heap_growth_bytes(u64::MAX)
        .task_growth(u64::MAX);
    if let Some(window) = window {
        builder = builder.memory_window(window);
    }
    let (config, _) = builder
        .into_parts()
        .map_err(|error| format!("leakwatch: the test detector's settings: {error}"))?;
    Ok(TestDetector {
        engine: Engine::start(config, Vec::new()),
    })
}

/// The detector of one test.
struct TestDetector {
    engine: Arc<Engine>,
}

impl TestDetector {
    fn unit<F: Future>(&self, name: Cow<'static, str>, future: F) -> super::Unit<F> {
        super::Unit::new(self.engine.clone(), name, future)
    }

    /// What the test's units left, as the failure message of an assertion; `runs` of them
    /// were judged (memory needs more than one).
    async fn check(&self, name: &str, runs: usize) -> Result<(), String> {
        let engine = &self.engine;
        let memory = match runs {
            1 => "memory not judged in one run (leakwatch::unit::assert_no_leaks_repeated or \
                  #[leakwatch::test(repeat = n)] judges it)"
                .to_owned(),
            _ => format!(
                "memory ({}) judged over {runs} runs: what a run keeps {} runs later",
                engine.memory_accounting().as_str(),
                engine.config.memory_window
            ),
        };
        let what = format!("unit `{name}`");
        let settle = engine.config.settle_timeout;
        engine.check(settle, |_| true, &what, Some(memory)).await
    }
}

/// How `#[leakwatch::test]` runs a test: its name and the runtime it builds. Not for direct
/// use: its form follows the macro's.
#[cfg(feature = "macros")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct TestRun {
    /// The test's path, naming its unit.
    pub name: &'static str,
    /// `None`: a current-thread runtime; `Some(0)`: a multi-thread runtime with tokio's
    /// default number of workers; `Some(n)`: with `n`.
    pub workers: Option<usize>,
}

#[cfg(feature = "macros")]
impl TestRun {
    /// Builds the test's runtime (instrumented where the build allows) and runs `check` on it;
    /// panics with its message when it fails.
    fn block_on<T>(self, check: impl Future<Output = Result<T, String>>) -> T {
        let mut builder = match self.workers {
            None => tokio::runtime::Builder::new_current_thread(),
            Some(workers) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                if workers > 0 {
                    builder.worker_threads(workers);
                }
                builder
            }
        };
        builder.enable_all();
        #[cfg(tokio_unstable)]
        crate::task::hooks::instrument_runtime(&mut builder);
        let runtime = match builder.build() {
            Ok(runtime) => runtime,
            Err(error) => panic!("leakwatch::test: cannot build the test's runtime: {error}"),
        };
        match runtime.block_on(check) {
            Ok(output) => output,
            Err(message) => panic!("{message}"),
        }
    }
}

/// `#[leakwatch::test]`: runs the body once as [`assert_no_leaks_in`] does.
#[cfg(feature = "macros")]
#[doc(hidden)]
pub fn run_test<Fut: Future>(run: TestRun, body: Fut) -> Fut::Output {
    run.block_on(once(Cow::Borrowed(run.name), body))
}

/// `#[leakwatch::test(repeat = n)]`: runs the body `n` times as [`assert_no_leaks_repeated`]
/// does.
#[cfg(feature = "macros")]
#[doc(hidden)]
pub fn run_test_repeated<F, Fut>(run: TestRun, calls: usize, body: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    run.block_on(repeated(Cow::Borrowed(run.name), calls, body));
}
