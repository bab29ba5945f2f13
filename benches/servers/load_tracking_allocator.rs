//! Load-benchmark server with the `tracking-allocator` crate (0.4), the nearest existing crate:
//! an allocation group per request, entered around every poll of the request's future, and a
//! tracker counting live bytes per group. See `benches/load.sh`.

#[path = "load/common.rs"]
mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use tower::{Layer, Service};
use tracking_allocator::{
    AllocationGroupId, AllocationGroupToken, AllocationRegistry, AllocationTracker, Allocator,
};

#[global_allocator]
static ALLOC: Allocator<std::alloc::System> = Allocator::system();

const GROUPS: usize = 1 << 16;

/// Live bytes per group (by id, modulo the table size).
struct PerGroup {
    live: Vec<AtomicI64>,
}

impl AllocationTracker for PerGroup {
    fn allocated(&self, _addr: usize, size: usize, _wrapped: usize, group: AllocationGroupId) {
        self.live[group.as_usize().get() % GROUPS].fetch_add(size as i64, Ordering::Relaxed);
    }

    fn deallocated(
        &self,
        _addr: usize,
        size: usize,
        _wrapped: usize,
        source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        self.live[source.as_usize().get() % GROUPS].fetch_sub(size as i64, Ordering::Relaxed);
    }
}

/// Registers a group per request and enters it around each poll.
#[derive(Clone)]
struct GroupPerRequest<S>(S);

impl<S, R> Service<R> for GroupPerRequest<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Grouped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let mut token = AllocationGroupToken::register();
        let future = match token.as_mut() {
            Some(token) => {
                let _guard = token.enter();
                self.0.call(request)
            }
            None => self.0.call(request),
        };
        Grouped { future, token }
    }
}

pin_project_lite::pin_project! {
    struct Grouped<F> {
        #[pin]
        future: F,
        token: Option<AllocationGroupToken>,
    }
}

impl<F: Future> Future for Grouped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.token.as_mut() {
            Some(token) => {
                let _guard = token.enter();
                this.future.poll(cx)
            }
            None => this.future.poll(cx),
        }
    }
}

#[derive(Clone)]
struct GroupLayer;

impl<S> Layer<S> for GroupLayer {
    type Service = GroupPerRequest<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GroupPerRequest(inner)
    }
}

fn main() {
    let tracker = PerGroup {
        live: (0..GROUPS).map(|_| AtomicI64::new(0)).collect(),
    };
    AllocationRegistry::set_global_tracker(tracker).expect("no other tracker");
    AllocationRegistry::enable_tracking();
    common::serve(common::routes().layer(GroupLayer));
}
