//! Everything that leaves the agent over HTTP: `/metrics` (what the metrics layer holds),
//! health, and `/debug/terminations` (the snapshots the tracker publishes), answered by
//! `http` within the bounds `server` puts on each client. Export reads; it never changes
//! termination state.

pub mod http;
pub mod server;
