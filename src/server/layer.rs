use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::LeakService;
use crate::engine::Engine;

/// Layer that applies the [`LeakService`] middleware, which opens a scope for every request and
/// tracks what the request leaves behind.
///
/// Made by [`LeakDetector::layer`](crate::LeakDetector::layer). Cloning it is cheap; every clone reports to the same
/// detector.
///
/// See the [module docs](crate::server) for an example.
#[derive(Clone)]
pub struct LeakLayer {
    engine: Arc<Engine>,
}

impl LeakLayer {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        LeakLayer { engine }
    }
}

impl<S> Layer<S> for LeakLayer {
    type Service = LeakService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LeakService::new(inner, self.engine.clone())
    }
}

impl fmt::Debug for LeakLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakLayer").finish_non_exhaustive()
    }
}
