//! Tasks and objects a request leaves behind: [`spawn`], [`scoped`] and [`watch`].
//!
//! Inside a request (anywhere under [`LeakLayer`](crate::LeakLayer): the handler, its response
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

use crate::request::liveness::{Liveness, TaskToken};
use crate::request::scope::{self, Scope};

cfg_tokio_unstable! {
    pub mod hooks;
}

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
    #[cfg(not(tokio_unstable))]
    return tokio::spawn(future);
    #[cfg(tokio_unstable)]
    {
        #[cfg(leakwatch_taskdump)]
        let token = future.token.clone();
        let handle = crate::task::hooks::spawning_tracked(|| tokio::spawn(future));
        #[cfg(leakwatch_taskdump)]
        if let Some(token) = token {
            token.identify(handle.id(), tokio::runtime::Handle::current());
        }
        handle
    }
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
    let location = Location::caller();
    let scope = scope::current();
    let token = scope.as_ref().and_then(|scope| {
        let token = Arc::new(TaskToken::default());
        let liveness = Liveness::Task(Arc::downgrade(&token));
        scope
            .track(liveness, Some(location), Some(type_name::<F>()))
            .then_some(token)
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
        let poll = scope::enter_owned(this.scope, || inner.poll(cx));
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
    let location = Location::caller();
    let Some(scope) = scope::current() else {
        return;
    };
    let probe = scope::outside(|| Box::new(Arc::downgrade(object)));
    scope.track(
        Liveness::Object(probe),
        Some(location),
        Some(type_name::<T>()),
    );
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
