//! Every leak scenario of `README.md` (beside this file) is reported with the right kind, route, request id
//! and location, and every clean control reports nothing — on a current-thread and on a
//! multi-thread runtime.
#![cfg(feature = "axum")]

#[path = "../support/mod.rs"]
mod support;

/// The scenario service: the one the demo serves.
#[path = "../../examples/scenarios/mod.rs"]
mod app;
mod controls;
mod leaks;
