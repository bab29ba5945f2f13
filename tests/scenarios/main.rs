//! Every leak scenario of `shared/scenarios.md` is reported with the right kind, route, request id
//! and location, and every clean control reports nothing — on a current-thread and on a
//! multi-thread runtime.
#![cfg(feature = "axum")]

#[path = "../support/mod.rs"]
mod support;

mod app;
mod controls;
mod leaks;
