//! Everything that leaves the agent over HTTP: `/metrics` (what the metrics layer holds),
//! health, `/debug/terminations` (the snapshots the tracker publishes) and the picture of
//! one termination at `/ui/...` (`ui`), answered by
//! `http` within the bounds `server` puts on each client. Export reads; it never changes
//! termination state.

pub mod http;
pub mod server;
pub mod textformat;
pub mod ui;
