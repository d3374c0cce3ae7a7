//! Everything that leaves the agent: Prometheus metrics, the HTTP server (`/metrics`,
//! health, `/debug/terminations`). Export reads what the tracker publishes; it never
//! changes termination state.

pub mod http;
pub mod metrics;

pub use metrics::{ContainerLabels, Metrics};
