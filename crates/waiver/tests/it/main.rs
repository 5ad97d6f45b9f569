//! End-to-end tests of the `waiver` binary on a real data dir: one integration binary,
//! modules by topic.

mod bad_input;
mod cli;
mod support;
