//! [`Unit`]: a future run as one unit of work, in a scope of its own.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::engine::Engine;
use crate::request::current::{enter_guarded, ScopeGuard};

pin_project! {
    /// A future run as one unit of work: made by [`LeakDetector::scope`](crate::LeakDetector::scope).
    ///
    /// Its scope opens when it is first polled and closes when the inner future completes or
    /// the `Unit` is dropped; every poll of the inner future runs in it. Its output is the
    /// inner future's, unchanged.
    #[must_use = "a unit does nothing unless polled"]
    pub struct Unit<F> {
        #[pin]
        inner: F,
        // Until the first poll: who opens the scope, and its name.
        opener: Option<(Arc<Engine>, Cow<'static, str>)>,
        // `None` before the first poll, once the inner future completed, and when the scope
        // could not be opened (the name is ignored, the registry is full).
        guard: Option<ScopeGuard>,
    }
}

impl<F> Unit<F> {
    pub(crate) fn new(engine: Arc<Engine>, name: Cow<'static, str>, inner: F) -> Self {
        Unit {
            inner,
            opener: Some((engine, name)),
            guard: None,
        }
    }
}

impl<F: Future> Future for Unit<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Some((engine, name)) = this.opener.take() {
            *this.guard = engine.open_unit_scope(&name).map(ScopeGuard::new);
        }
        let inner = this.inner;
        let output = std::task::ready!(enter_guarded(this.guard.as_mut(), || inner.poll(cx)));
        // The unit is over: its scope closes here, and what it left is judged from now on.
        drop(this.guard.take());
        Poll::Ready(output)
    }
}

impl<F> fmt::Debug for Unit<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unit")
            .field("name", &self.opener.as_ref().map(|(_, name)| name))
            .field("scope", &self.guard)
            .finish_non_exhaustive()
    }
}
