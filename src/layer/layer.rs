use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::LeakService;
use crate::detector::Shared;

/// Layer that applies the [`LeakService`] middleware, which opens a scope for every request and
/// tracks what the request leaves behind.
///
/// Made by [`LeakDetector::layer`](crate::LeakDetector::layer). Cloning it is cheap; every clone
/// reports to the same detector.
///
/// See the [module docs](crate::layer) for an example.
#[derive(Clone)]
pub struct LeakLayer {
    shared: Arc<Shared>,
}

impl LeakLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        LeakLayer { shared }
    }
}

impl<S> Layer<S> for LeakLayer {
    type Service = LeakService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LeakService::from_shared(inner, self.shared.clone())
    }
}

impl fmt::Debug for LeakLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakLayer").finish_non_exhaustive()
    }
}
