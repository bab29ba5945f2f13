//! [`ClientLeakLayer`], made by [`LeakDetector::client_layer`](crate::LeakDetector::client_layer).

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::ClientLeakService;
use crate::engine::Engine;

/// A [`Layer`] that wraps an HTTP client in a [`ClientLeakService`]; from
/// [`LeakDetector::client_layer`](crate::LeakDetector::client_layer).
#[derive(Clone)]
pub struct ClientLeakLayer {
    engine: Arc<Engine>,
}

impl ClientLeakLayer {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        ClientLeakLayer { engine }
    }
}

impl<S> Layer<S> for ClientLeakLayer {
    type Service = ClientLeakService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientLeakService::new(inner, self.engine.clone())
    }
}

impl fmt::Debug for ClientLeakLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLeakLayer").finish_non_exhaustive()
    }
}
