//! The judges: given the tracked state and the time, each says what is leaking.
//!
//! They own no request and touch no lock a request takes; the engine calls them once per sweep
//! and hands their reports to the sinks.
//!
//! - [`objects`]: tasks, bodies and watched objects that outlived their request, and requests
//!   open for too long;
//! - [`memory`]: routes whose old requests still hold heap memory (with the allocator);
//! - [`growth`]: routes whose retained memory grows with their requests, a few bytes each;
//! - [`owner`]: whose a route's memory is, the user's code's or a dependency's;
//! - [`tasks`]: tasks of shared resources (a dependency's, an upgraded connection's), growing
//!   in number with their route's requests;
//! - [`trend`]: the process's live heap and tokio's alive tasks, growing over a window.

pub(crate) mod build;
pub(crate) mod cells;
pub(crate) mod growth;
pub(crate) mod memory;
pub(crate) mod objects;
pub(crate) mod owner;
pub(crate) mod tasks;
pub(crate) mod trend;
