//! Termination state: one owner (the [`Tracker`]) turns attributed kernel events into a
//! per-container state machine and per-pod termination records, classifies each end
//! (pure functions in [`classify`]) and publishes immutable snapshots for export.

pub mod classify;
mod container;
pub mod model;
pub mod pod_classify;
pub mod pods;
mod record;
pub mod tracker;
mod views;

pub use classify::{Code, ContainerFacts, Outcome};
pub use model::{Snapshot, Termination};
pub use tracker::{SeedProcess, Tracker, TrackerOptions};
