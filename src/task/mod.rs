//! Tasks and objects a request leaves behind: [`spawn`], [`scoped`] and [`watch`].
//!
//! Inside a request (anywhere under [`LeakLayer`](crate::server::LeakLayer): the handler, its response
//! body, or a task it spawned through these functions), each call registers what it creates
//! under the request's scope, with the caller's `file:line`. Outside a request they do nothing
//! extra: `spawn` is `tokio::spawn`, `scoped` passes polls straight through and `watch` returns.

use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::report::SourceLocation;
use crate::request::current;
use crate::request::liveness::{Liveness, TaskToken};
use crate::request::scope::{Judged, Scope};

cfg_tokio_unstable! {
    pub mod hooks;
}
// What `cargo doc` shows of the hooks in a build without them.
#[cfg(all(doc, not(tokio_unstable)))]
pub(crate) mod hooks_doc;

/// Spawns a task on the current tokio runtime, tracked under the current request.
///
/// The same as [`tokio::spawn`], except that inside a request the task is registered with this
/// call's location and runs in the request's scope (so what it spawns is tracked too). If the
/// task is still running once the request has finished and the grace period has passed, it is
/// reported as an [`OrphanTask`](crate::LeakKind::OrphanTask).
///
/// # Panics
///
/// Like [`tokio::spawn`], when called outside a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = leakwatch::spawn(async { 1 + 1 });
/// assert_eq!(handle.await.unwrap(), 2);
/// # }
/// ```
#[track_caller]
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let future = scoped(future);
    #[cfg(leakwatch_taskdump)]
    let token = future.token.clone();
    // The task is tracked by its `Scoped` wrapper: not by its cell, nor by the runtime's hooks.
    let mark = crate::alloc::pending_cells();
    #[cfg(tokio_unstable)]
    let handle = crate::task::hooks::spawning_tracked(|| tokio::spawn(future));
    #[cfg(not(tokio_unstable))]
    let handle = tokio::spawn(future);
    crate::alloc::discard_cells_since(mark);
    #[cfg(leakwatch_taskdump)]
    if let Some(token) = token {
        token.identify(handle.id(), tokio::runtime::Handle::current());
    }
    handle
}

/// Wraps a future so that it runs in the current request's scope and is tracked like a spawned
/// task — for `JoinSet::spawn`, `tokio::task::spawn_local`, `spawn_blocking`-free executors and
/// anything else that takes a future.
///
/// The task counts as ended when the future completes or is dropped (aborted, runtime shut down).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut set = tokio::task::JoinSet::new();
/// set.spawn(leakwatch::scoped(async { "done" }));
/// assert_eq!(set.join_next().await.unwrap().unwrap(), "done");
/// # }
/// ```
#[track_caller]
pub fn scoped<F: Future>(future: F) -> Scoped<F> {
    let location = SourceLocation::from_std(Location::caller());
    let mut scope = current::current();
    let token = scope.as_ref().and_then(|current| {
        let token = Arc::new(TaskToken::default());
        let liveness = Liveness::Task(Arc::downgrade(&token));
        let judged = current.track(liveness, Some(location), Some(type_name::<F>()))?;
        Some((token, judged))
    });
    // A task judged by growth belongs to a shared resource: it runs outside the request.
    let token = token.map(|(token, judged)| {
        if judged == Judged::ByGrowth {
            scope = None;
        }
        token
    });
    Scoped {
        inner: future,
        scope,
        token,
        polled: false,
    }
}

pin_project! {
    /// A future that runs in a request's scope; made by [`scoped`] and [`spawn`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        #[pin]
        inner: F,
        scope: Option<Arc<Scope>>,
        token: Option<Arc<TaskToken>>,
        // Whether it was polled before (on its first poll it takes over the tracking of its
        // task from the runtime hooks, where they are installed).
        polled: bool,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !*this.polled {
            *this.polled = true;
            if this.token.is_some() {
                // Spawned by a plain `spawn` (a `JoinSet`'s), the task's cell holds this future:
                // the task is tracked here, not by its cell.
                crate::alloc::forget_cell_containing(
                    this.inner.as_ref().get_ref() as *const F as usize
                );
            }
            #[cfg(tokio_unstable)]
            if this.token.is_some() {
                crate::task::hooks::forget_current_task();
            }
            #[cfg(leakwatch_taskdump)]
            if let (Some(token), Some(id), Ok(runtime)) = (
                this.token.as_ref(),
                tokio::task::try_id(),
                tokio::runtime::Handle::try_current(),
            ) {
                token.identify(id, runtime);
            }
        }
        let inner = this.inner;
        let poll = current::enter_owned(this.scope, || inner.poll(cx));
        if poll.is_ready() {
            // The task has ended, even if whoever holds the future keeps it around.
            *this.token = None;
        }
        poll
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("scope", &self.scope.as_ref().map(|s| s.id))
            .field("tracked", &self.token.is_some())
            .finish()
    }
}

/// Watches an object: if it is still alive after the current request has finished and the grace
/// period has passed, it is reported as a [`WatchedObject`](crate::LeakKind::WatchedObject) with
/// its type name and this call's location. LeakCanary's `watch`, per request.
///
/// Only a `Weak` is kept: watching never extends the object's life. Outside a request this does
/// nothing.
///
/// ```
/// use std::sync::Arc;
///
/// let session = Arc::new(String::from("per-request state"));
/// leakwatch::watch(&session); // outside a request: nothing happens
/// ```
#[track_caller]
pub fn watch<T>(object: &Arc<T>)
where
    T: ?Sized + Send + Sync + 'static,
{
    let location = SourceLocation::from_std(Location::caller());
    let Some(scope) = current::current() else {
        return;
    };
    let probe = current::outside(|| Box::new(Arc::downgrade(object)));
    scope.track(
        Liveness::Object(probe),
        Some(location),
        Some(type_name::<T>()),
    );
}

/// Runs `f` outside any request: what it allocates is charged to no request, and the tasks
/// it spawns are not tracked. For work a request starts on purpose for the whole process — a
/// lazily initialised client, cache or configuration:
///
/// ```
/// use std::sync::OnceLock;
///
/// static CONFIG: OnceLock<Vec<u8>> = OnceLock::new();
///
/// async fn handler() -> usize {
///     // The first request builds it; it is the process's, not that request's.
///     CONFIG.get_or_init(|| leakwatch::outside(|| vec![0; 1 << 20])).len()
/// }
/// ```
///
/// For an initialiser that is a future (tokio's `OnceCell::get_or_init`), wrap it in
/// [`detach`].
pub fn outside<R>(f: impl FnOnce() -> R) -> R {
    current::outside(f)
}

/// Wraps a future so that it runs outside any request: what it allocates is charged to no
/// request and the tasks it spawns are not tracked, even when it is polled inside one. For work
/// a request starts on purpose for the whole process, such as the lazy initialiser of a shared
/// client that starts a token refresher:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tokio::sync::OnceCell;
///
/// static TOKEN: OnceCell<String> = OnceCell::const_new();
///
/// let token = TOKEN
///     .get_or_init(|| leakwatch::detach(async {
///         tokio::spawn(async { /* refresh the token every minute, forever */ });
///         String::from("token")
///     }))
///     .await;
/// assert_eq!(token, "token");
/// # }
/// ```
pub fn detach<F: Future>(future: F) -> Detached<F> {
    Detached { inner: future }
}

/// Spawns a task that belongs to the process, not to the request that spawns it: it is not
/// tracked (so never an [`OrphanTask`](crate::LeakKind::OrphanTask)) and what it allocates is
/// charged to no request. For a background job a request starts on purpose. Use [`spawn`] for
/// work that should end with its request.
///
/// # Panics
///
/// Like [`tokio::spawn`], when called outside a tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let job = leakwatch::spawn_detached(async { "reindexed" });
/// assert_eq!(job.await.unwrap(), "reindexed");
/// # }
/// ```
pub fn spawn_detached<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // Spawned with no request current, the runtime hooks do not track it either.
    current::outside(|| tokio::spawn(detach(future)))
}

pin_project! {
    /// A future that runs outside any request; made by [`detach`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Detached<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for Detached<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        current::outside(|| inner.poll(cx))
    }
}

impl<F> fmt::Debug for Detached<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detached").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outside_a_request_nothing_is_tracked() {
        let fut = scoped(async { 5 });
        assert!(fut.scope.is_none());
        assert!(fut.token.is_none());
        assert_eq!(fut.await, 5);
        assert_eq!(spawn(async { 6 }).await.unwrap(), 6);
        watch(&Arc::new(1u8));
    }
}
