use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::LeakService;
use crate::detector::LeakDetector;
use crate::engine::Engine;

/// Layer that applies the [`LeakService`] middleware, which opens a scope for every request and
/// tracks what the request leaves behind.
///
/// Made by [`LeakDetector::layer`]. Cloning it is cheap; every clone reports to the same
/// detector.
///
/// See the [module docs](crate::layer) for an example.
#[derive(Clone)]
pub struct LeakLayer {
    engine: Arc<Engine>,
}

impl LeakDetector {
    /// A layer that opens a scope for every request passing through it.
    ///
    /// See the [`layer` module docs](crate::layer) for how it is used with axum and hyper.
    pub fn layer(&self) -> LeakLayer {
        LeakLayer {
            engine: self.engine.clone(),
        }
    }
}

impl<S> Layer<S> for LeakLayer {
    type Service = LeakService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LeakService::with_engine(inner, self.engine.clone())
    }
}

impl fmt::Debug for LeakLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakLayer").finish_non_exhaustive()
    }
}
