//! Internal macros.

/// Adds `get_ref`, `get_mut` and `into_inner` to a middleware service with an `inner` field.
macro_rules! define_inner_service_accessors {
    () => {
        /// Gets a reference to the underlying service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// Gets a mutable reference to the underlying service.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes `self`, returning the underlying service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

/// Marks items as available only with a feature, on docs.rs too.
macro_rules! cfg_feature {
    ($feature:literal, $($item:item)*) => {
        $(
            #[cfg(feature = $feature)]
            #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
            $item
        )*
    };
}

/// Marks items as available only with `--cfg tokio_unstable`, on docs.rs too (which builds with
/// it).
macro_rules! cfg_tokio_unstable {
    ($($item:item)*) => {
        $(
            #[cfg(tokio_unstable)]
            #[cfg_attr(docsrs, doc(cfg(tokio_unstable)))]
            $item
        )*
    };
}

/// Defines a middleware's `ResponseFuture<F>` (the server's and the client's are the same but
/// for the body they hand the scope to): it polls the inner future with the scope current and,
/// when the response arrives, moves the scope into the response through `$body::wrap(response, guard)` (`where B: …` bounds
/// the inner body as `$body::wrap` needs); when the inner
/// future fails, panics or is dropped, the scope's guard drops with it and closes the scope.
macro_rules! scoped_response_future {
    ($(#[$attr:meta])* $body:ident $(where B: $bound:path)?) => {
        pin_project_lite::pin_project! {
            $(#[$attr])*
            pub struct ResponseFuture<F> {
                #[pin]
                inner: F,
                // `None` when untracked, and once the response went out.
                guard: Option<$crate::request::current::ScopeGuard>,
            }
        }

        impl<F> ResponseFuture<F> {
            pub(crate) fn new(
                inner: F,
                guard: Option<$crate::request::current::ScopeGuard>,
            ) -> Self {
                ResponseFuture { inner, guard }
            }
        }

        impl<F, B, E> std::future::Future for ResponseFuture<F>
        where
            F: std::future::Future<Output = Result<http::Response<B>, E>>,
            $(B: $bound,)?
        {
            type Output = Result<http::Response<$body<B>>, E>;

            fn poll(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Self::Output> {
                let this = self.project();
                let inner = this.inner;
                let result = std::task::ready!($crate::request::current::enter_guarded(
                    this.guard.as_mut(),
                    || inner.poll(cx)
                ));
                // On an error the guard drops here and closes the scope.
                let guard = this.guard.take();
                std::task::Poll::Ready(
                    result.map(|response| $body::wrap(response, guard)),
                )
            }
        }

        impl<F> std::fmt::Debug for ResponseFuture<F> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("ResponseFuture")
                    .field("scope", &self.guard)
                    .finish()
            }
        }
    };
}
