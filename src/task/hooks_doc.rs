//! What `cargo doc` shows of the runtime hooks when the crate is documented without
//! `--cfg tokio_unstable`: the same names, saying what they need, so that a user reading a
//! local build's docs learns they exist. Compiled by rustdoc only (`cfg(doc)`); the real
//! items are in [`super::hooks`].

/// **Needs `--cfg tokio_unstable`** (`RUSTFLAGS="--cfg tokio_unstable"`): this documentation
/// was built without it, so the module's functions are not listed here. docs.rs builds with
/// it and shows them in full.
///
/// Every task a request starts, through the tokio runtime's task hooks: with
/// `instrument_runtime` on the runtime builder, a task spawned by plain `tokio::spawn`,
/// `JoinSet::spawn` or any library while a request is served is tracked under that request,
/// as if spawned through [`crate::spawn`]. The module holds the four hook functions
/// (`on_task_spawn`, `on_task_terminate`, `on_before_task_poll`, `on_after_task_poll`) to call
/// from hooks of your own, since a runtime keeps one callback per hook.
///
/// Without the hooks, `leakwatch::spawn` and `leakwatch::scoped` track the tasks they start,
/// and the [`TrackingAllocator`](crate::TrackingAllocator) sees a plain `tokio::spawn` in a
/// request through the task's cell.
pub mod hooks {}

/// **Needs `--cfg tokio_unstable`** (`RUSTFLAGS="--cfg tokio_unstable"`): this documentation
/// was built without it; docs.rs builds with it and shows this function with its example.
///
/// Installs leakwatch's task hooks on a tokio runtime builder, so that every task a request
/// spawns is tracked, however it was spawned (see the [`hooks`] module).
pub fn instrument_runtime(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
}
