//! [`ResponseFuture`]: the request's future, polled in its scope.

use super::ResponseBody;

scoped_response_future! {
    /// Response future for [`LeakService`](super::LeakService).
    ///
    /// Polls the inner future inside the request's scope. When the response arrives, the scope
    /// moves into its [`ResponseBody`]; when the future fails, panics or is dropped (the client
    /// went away), the scope closes.
    ResponseBody
}
