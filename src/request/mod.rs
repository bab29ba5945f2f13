//! What a request is known by, and the scope that follows it.
//!
//! - [`scope`]: the detector's record of one request;
//! - [`current`]: the thread's current scope, entered around every poll;
//! - [`route`]: route templates and the names used where there is none (public as
//!   [`crate::route`]);
//! - [`id`]: the request id (an incoming `x-request-id`, sanitised, or a generated one);
//! - [`trace`]: the trace the request belongs to;
//! - [`body`]: the byte-counting body wrapper (the server's [`RequestBody`](crate::server::RequestBody));
//! - [`origin`]: whether a spawn location is the user's own code or a dependency's;
//! - [`liveness`]: the tokens through which the sweeper sees whether what a request left behind
//!   (a task, a body, a watched object) is still alive.

pub(crate) mod body;
pub(crate) mod current;
pub(crate) mod id;
pub(crate) mod liveness;
pub(crate) mod origin;
pub mod route;
pub(crate) mod scope;
pub(crate) mod trace;
