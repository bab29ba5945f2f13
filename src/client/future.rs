//! [`ResponseFuture`]: the outgoing call, polled in its own scope.

use super::UpstreamBody;

scoped_response_future! {
    /// Response future of [`ClientLeakService`](super::ClientLeakService).
    ///
    /// Polls the client's future with the call's scope current, so that what the client does
    /// meanwhile (spawning connection tasks, growing its pool) is not the request's. Once the
    /// response arrives, its body is tracked as an [`UpstreamBody`]; on an error the call is
    /// over.
    UpstreamBody where B: http_body::Body
}
