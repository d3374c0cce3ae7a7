//! Gracewatch: sees, from the kernel, how containers and pods terminate, and explains it.
//!
//! Stages, in data-flow order (a stage imports only from stages before it):
//! `kernel` (load probes, drain and decode the ring buffer) → `attribution` (cgroup id →
//! container) → `engine` (standalone: container names from engine sockets) → `kube` (watchers and the API's view of this node) → `traffic` (terminating pods'
//! addresses watched in the kernel, counts → timeline, diagnoses) → `join` (kernel facts ⋈
//! pod facts) → `termination` (state per container, records per pod, classification) →
//! `export` (HTTP: metrics, debug views). `pipeline` strings the hot path together and
//! `run` wires the stages into the agent's event loop; `explain` is the CLI client and
//! `kubectl` the kubectl plugin (which reads agents through the API server's pod proxy).
//!
//! Leaves any stage may use: `clock` (boot clock ↔ wall clock), `metrics` (every metric,
//! per subsystem) and `report` (what a termination looks like to a user).

pub mod cli;
pub mod clock;
pub mod metrics;
pub mod report;

pub mod kernel;

pub mod attribution;

pub mod engine;

pub mod kube;

pub mod traffic;

pub mod join;

pub mod termination;

pub mod export;

pub mod explain;
pub mod kubectl;
pub mod pipeline;
pub mod run;
