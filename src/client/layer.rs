//! [`ClientLeakLayer`] and [`LeakDetector::client_layer`].

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::ClientLeakService;
use crate::detector::LeakDetector;
use crate::engine::Engine;

/// A [`Layer`] that wraps an HTTP client in a [`ClientLeakService`]; from
/// [`LeakDetector::client_layer`].
#[derive(Clone)]
pub struct ClientLeakLayer {
    engine: Arc<Engine>,
}

impl LeakDetector {
    /// A layer for an outgoing HTTP client: reports upstream response bodies kept past the
    /// server request that made the call, or dropped unread. See [`crate::client`].
    pub fn client_layer(&self) -> ClientLeakLayer {
        ClientLeakLayer {
            engine: self.engine.clone(),
        }
    }
}

impl<S> Layer<S> for ClientLeakLayer {
    type Service = ClientLeakService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientLeakService::with_engine(inner, self.engine.clone())
    }
}

impl fmt::Debug for ClientLeakLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLeakLayer").finish_non_exhaustive()
    }
}
