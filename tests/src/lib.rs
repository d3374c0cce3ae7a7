//! The node simulator library shared by the root tests, the end-to-end tests and the
//! demo: it plays the parts of a Kubernetes node that Gracewatch watches, starting with
//! real runc containers placed in kubelet-style cgroups.

pub mod agent;
pub mod apiserver;
pub mod kubelet;
pub mod runc;
