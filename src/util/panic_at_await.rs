//! A future that panics *at its caller's `.await`*: what an assertion made of async code needs
//! so that a failing test points at the test's line, not at this crate.
//!
//! `#[track_caller]` does nothing on an `async fn`. It does work on a `Future::poll` impl: the
//! compiler's `.await` calls `poll` at the awaiting expression, so `Location::caller()` inside
//! `poll` — and a `panic!` raised there — is the user's `.await`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// Polls `inner` to its end and returns what it returned in `Ok`; panics with its message,
    /// at the awaiting line, when it ends in `Err`.
    pub(crate) struct PanicAtAwait<F> {
        #[pin]
        inner: F,
    }
}

impl<F, T> PanicAtAwait<F>
where
    F: Future<Output = Result<T, String>>,
{
    pub(crate) fn new(inner: F) -> Self {
        PanicAtAwait { inner }
    }
}

impl<F, T> Future for PanicAtAwait<F>
where
    F: Future<Output = Result<T, String>>,
{
    type Output = T;

    #[track_caller]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match ready!(self.project().inner.poll(cx)) {
            Ok(output) => Poll::Ready(output),
            Err(message) => panic!("{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_is_the_awaiting_line() {
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Option<(String, u32)>>> = Arc::default();
        let hook_seen = seen.clone();
        let previous = std::panic::take_hook();
        // Other tests of this binary may panic meanwhile: only this one's message counts.
        const MESSAGE: &str = "leakwatch: the panic_at_await test failing on purpose";
        std::panic::set_hook(Box::new(move |info| {
            let ours = info.payload().downcast_ref::<String>().map(String::as_str) == Some(MESSAGE);
            if let (true, Some(location)) = (ours, info.location()) {
                *hook_seen.lock().unwrap() = Some((location.file().to_owned(), location.line()));
            }
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let expected = line!() + 3;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                PanicAtAwait::new(async { Err::<(), _>(MESSAGE.to_owned()) }).await
            })
        }));
        std::panic::set_hook(previous);
        assert!(result.is_err());
        let (file, line) = seen.lock().unwrap().clone().unwrap();
        assert_eq!((file.as_str(), line), (file!(), expected));
    }
}
