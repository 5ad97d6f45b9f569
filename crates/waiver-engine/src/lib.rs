//! The decision engine: one answer from one model.
//!
//! A [`Baseline`] is the organisation's Cedar policy set (every policy carries `@id`), with
//! an optional schema it is validated against and the entities it reasons over. A
//! [`Snapshot`] pairs a baseline with the index of governed exceptions and decides requests
//! (DESIGN.md §4): evaluate the baseline; on deny, collect the deny reasons (the `@id`s of
//! the forbids that fired, plus `default-deny` when no permit matched); then look up the
//! subject's exceptions and grant if one is live at `now`, in scope, waives every reason and
//! its condition holds.
//!
//! Architecture invariant: a snapshot is immutable and decides without I/O or locks; the
//! server swaps a new one in when the store changes.

mod baseline;
mod decide;
mod json;
pub mod limits;

pub use baseline::{Baseline, BaselineError, DEFAULT_DENY, Floors, GroupChange};
pub use decide::{
    Builder, Compilable, Counter, Decision, DecisionRequest, Grant, NearMiss, OFFBOARDED, RequestError, Snapshot,
    Target, View,
};
