//! Termination state: one owner (the [`Tracker`]) turns attributed kernel events into a
//! per-container state machine (`container`) and per-pod records (`record`), classifies
//! each end (`classify` for containers, `pod_classify` for pods: pure functions with
//! table tests) and publishes immutable snapshots of finished and ongoing terminations
//! (`views`); why each was stopped and crash loops (`causes`). Which pod a container belongs to, and the API's facts about it, come from
//! the join.

pub mod causes;
pub mod classify;
mod container;
pub mod pod_classify;
mod record;
mod runs;
#[cfg(test)]
mod testkit;
pub mod tracker;
mod views;

pub use classify::{Code, KernelFacts, Outcome};
pub use tracker::{Tracker, TrackerOptions};
