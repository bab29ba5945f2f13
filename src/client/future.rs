//! [`ResponseFuture`]: the outgoing call, polled in its own scope.

use super::ResponseBody;

scoped_response_future! {
    /// Response future of [`ClientLeakService`](super::ClientLeakService).
    ///
    /// Polls the client's future with the call's scope current, so that what the client does
    /// meanwhile (spawning connection tasks, growing its pool) is not the request's. Once the
    /// response arrives, its body is tracked as an [`ResponseBody`]; on an error the call is
    /// over.
    ResponseBody where B: http_body::Body
}
