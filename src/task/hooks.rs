//! Every task a request starts, through the tokio runtime's task hooks (needs
//! `--cfg tokio_unstable`).
//!
//! On stable flags the [`TrackingAllocator`](crate::TrackingAllocator) already sees a plain
//! `tokio::spawn` inside a request, through the task's cell. The hooks add what only they can
//! see: tasks spawned inside other tasks (each poll of a tracked task runs in its request's
//! scope), what a task allocates after its request, and, with task dumps, await traces. With
//! both on, a task is tracked once, by the hooks.
//!
//! [`instrument_runtime`] installs four hooks on a runtime builder.
//! When a task is spawned — by plain `tokio::spawn`, `JoinSet::spawn`, `Handle::spawn` or any
//! library — while a request's scope is current, the task is tracked under that request exactly
//! like one spawned through [`crate::spawn`]: if it is still running once the request has
//! finished and the grace period has passed, it is an [`OrphanTask`](crate::LeakKind::OrphanTask)
//! whose location is the `file:line` of the spawn. Each poll of such a task runs with the
//! request's scope current, so what it allocates counts for the request, and what it spawns is
//! tracked too.
//!
//! A task whose spawn location is a dependency's (its file lies outside the user's workspace:
//! cargo's registry, a git checkout, a `vendor/` directory) is different: a pooled client's
//! connection, a `tower::buffer` worker or a WebSocket session belongs to a shared resource the
//! request only caused. It is polled outside the request — neither it nor what it allocates or
//! spawns is the request's — and judged by growth: reported only when the tasks spawned at its
//! location for its route keep growing in number with the route's requests. The tasks of a
//! request answered `101 Switching Protocols` are judged the same way: they live with the
//! upgraded connection. Work the user's own code starts on purpose for the whole process is
//! said so with [`crate::spawn_detached`], [`crate::detach`] or [`crate::outside`], and
//! locations to leave alone with
//! [`ignore_spawned_at`](crate::LeakDetectorBuilder::ignore_spawned_at).
//!
//! A task spawned outside any request costs the spawn hook one thread-local read; polls of
//! untracked tasks cost one atomic load and one thread-local read. Tasks are found by id in a
//! sharded map, whose lock a request takes only to insert the tasks it spawns.
//!
//! # Chaining with hooks of your own
//!
//! A runtime keeps one callback per hook: a second registration replaces the first. If you set
//! any of these hooks yourself, call [`instrument_runtime`] first and
//! then call the matching function of this module from your own callback:
//!
//! ```
//! let mut builder = tokio::runtime::Builder::new_multi_thread();
//! leakwatch::instrument_runtime(&mut builder).on_task_spawn(|meta| {
//!     leakwatch::hooks::on_task_spawn(meta);
//!     // … your own spawn hook …
//! });
//! let runtime = builder.enable_all().build().unwrap();
//! # drop(runtime);
//! ```
//!
//! # What the hooks cannot see
//!
//! - Tasks spawned before the request's scope was entered, or by a thread that is not polling
//!   the request (a `std::thread` it started).
//! - `tokio::task::spawn_local` onto a `LocalSet`: the runtime does not run its hooks for those;
//!   wrap such futures in [`crate::scoped`].
//! - `spawn_blocking` closures (they are not futures; their end is tolerated, never reported).

use std::cell::Cell;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use dashmap::DashMap;
use tokio::runtime::TaskMeta;
use tokio::task::Id;

use crate::request::current;
use crate::report::SourceLocation;
use crate::request::liveness::{Liveness, TaskToken};
use crate::util::IdHasher;
use crate::request::current::Entered;
use crate::request::scope::{Judged, Scope};

/// A task tracked through the hooks: the request it is polled for (none for a task judged by
/// growth, which belongs to a shared resource), and the token whose drop tells the registry the
/// task has ended.
struct Hooked {
    scope: Option<Arc<Scope>>,
    _token: Arc<TaskToken>,
}

/// Every tracked task of every instrumented runtime (task ids are unique in the process).
static TASKS: LazyLock<DashMap<Id, Hooked, BuildHasherDefault<IdHasher>>> =
    LazyLock::new(DashMap::default);

/// How many tasks [`TASKS`] holds: while it is zero, polls skip the lookup.
static TRACKED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while [`crate::spawn`] spawns: that task is tracked by its own wrapper.
    static SPAWNING_TRACKED: Cell<bool> = const { Cell::new(false) };
    /// The tracked task being polled on this thread, and what to restore after its poll.
    static POLLING: Cell<Option<(Id, Entered<'static>)>> = const { Cell::new(None) };
}

/// Runs `spawn` telling the spawn hook that the task it spawns is already tracked.
pub(crate) fn spawning_tracked<R>(spawn: impl FnOnce() -> R) -> R {
    let previous = SPAWNING_TRACKED.try_with(|flag| flag.replace(true)).ok();
    let result = spawn();
    if let Some(previous) = previous {
        let _ = SPAWNING_TRACKED.try_with(|flag| flag.set(previous));
    }
    result
}

/// Stops tracking the task running on this thread through the hooks (a [`crate::scoped`]
/// future tracks it instead, with its own location and type).
pub(crate) fn forget_current_task() {
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return;
    }
    if let Some(id) = tokio::task::try_id() {
        forget(id);
    }
}

fn forget(id: Id) {
    if TASKS.remove(&id).is_some() {
        TRACKED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The spawn hook: tracks the new task under the current request, if there is one.
///
/// Call it from your own `on_task_spawn` callback when you set one (see the
/// [module docs](self)).
pub fn on_task_spawn(meta: &TaskMeta<'_>) {
    if SPAWNING_TRACKED.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let Some(scope) = current::current() else {
        return;
    };
    // The task is tracked here: not also by its cell, which the allocator just recorded.
    crate::alloc::discard_last_cell();
    // The detector's own bookkeeping: never charged to the request.
    current::outside(|| {
        let token = Arc::new(TaskToken::default());
        #[cfg(leakwatch_taskdump)]
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            token.identify(meta.id(), runtime);
        }
        let liveness = Liveness::Task(Arc::downgrade(&token));
        let Some(judged) = scope.track(
            liveness,
            Some(SourceLocation::from_std(meta.spawned_at())),
            None,
        ) else {
            return;
        };
        // A dependency's task (a pool's connection, a worker) is polled outside the request:
        // neither it nor what it allocates or spawns is the request's.
        let scope = (judged == Judged::PerRequest).then_some(scope);
        TASKS.insert(
            meta.id(),
            Hooked {
                scope,
                _token: token,
            },
        );
        TRACKED.fetch_add(1, Ordering::Relaxed);
    });
}

/// The terminate hook: a tracked task has ended (completed, aborted, or dropped with its
/// runtime). Ids it never saw (`spawn_blocking` tasks) are ignored.
///
/// Call it from your own `on_task_terminate` callback when you set one.
pub fn on_task_terminate(meta: &TaskMeta<'_>) {
    if TRACKED.load(Ordering::Relaxed) != 0 {
        forget(meta.id());
    }
}

/// The before-poll hook: a tracked task is polled with its request's scope current.
///
/// Call it from your own `on_before_task_poll` callback when you set one.
pub fn on_before_task_poll(meta: &TaskMeta<'_>) {
    if TRACKED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let Some(scope) = TASKS
        .get(&meta.id())
        .and_then(|hooked| hooked.scope.clone())
    else {
        return;
    };
    let _ = POLLING.try_with(|polling| {
        let outer = polling.take();
        if outer.is_some() {
            // A poll inside another tracked task's poll (`block_in_place`): keep the outer.
            polling.set(outer);
        } else if let Some(entered) = current::make_current(&scope) {
            polling.set(Some((meta.id(), entered)));
        }
    });
}

/// The after-poll hook: restores what was current before the tracked task's poll.
///
/// Call it from your own `on_after_task_poll` callback when you set one.
pub fn on_after_task_poll(meta: &TaskMeta<'_>) {
    let _ = POLLING.try_with(|polling| match polling.take() {
        Some((id, entered)) if id == meta.id() => drop(entered),
        other => polling.set(other),
    });
}

/// Installs leakwatch's task hooks on a tokio runtime builder, so that every task a request
/// spawns is tracked, however it was spawned. Needs `--cfg tokio_unstable` (see the
/// [`hooks` module](crate::hooks) for the details, the cost and how to chain your own hooks).
///
/// ```
/// // RUSTFLAGS="--cfg tokio_unstable"
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// leakwatch::instrument_runtime(builder.enable_all());
/// let runtime = builder.build().unwrap();
/// runtime.block_on(async {
///     // serve the app with `detector.layer()`: a plain `tokio::spawn` in a handler is tracked
/// });
/// ```
pub fn instrument_runtime(
    builder: &mut tokio::runtime::Builder,
) -> &mut tokio::runtime::Builder {
    builder
        .on_task_spawn(on_task_spawn)
        .on_task_terminate(on_task_terminate)
        .on_before_task_poll(on_before_task_poll)
        .on_after_task_poll(on_after_task_poll)
}
