//! Gracewatch: sees, from the kernel, how containers and pods terminate, and explains it.
//!
//! Data flows one way: `kernel` (load probes, read and decode the ring buffer) →
//! `attribution` (cgroup id → container, pod) → `termination` (state per container,
//! records per pod, classification) → `export` (metrics, HTTP). `pipeline` strings the
//! hot path together; `run` is the agent's event loop; `explain` is the CLI client.

pub mod attribution;
pub mod cli;
pub mod clock;
pub mod explain;
pub mod export;
pub mod kernel;
pub mod kube;
pub mod pipeline;
pub mod run;
pub mod termination;
