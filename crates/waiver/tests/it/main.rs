//! End-to-end tests of the `waiver` binary on a real data dir: one integration binary,
//! modules by topic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers fail loudly"
)]

mod bad_input;
mod browser;
mod cli;
mod decisions;
mod evidence;
mod gitops;
mod governance;
mod hostile;
mod interop;
mod people;
mod replicas;
mod rest;
mod support;
mod truth;
