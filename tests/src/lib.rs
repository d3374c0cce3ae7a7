//! The node simulator library shared by the root tests, the end-to-end tests and the
//! demo: it plays the parts of a Kubernetes node that Gracewatch watches: real runc
//! containers placed in kubelet-style cgroups (`runc`), a private containerd with its CRI
//! plugin (`cri`), a kubelet emulator driving it (`kubelet`), a fake API server
//! (`apiserver`) and the agent itself (`agent`).

pub mod agent;
pub mod apiserver;
pub mod browser;
pub mod cluster;
pub mod cri;
pub mod deploy;
pub mod engines;
pub mod image;
pub mod kubelet;
pub mod netns;
pub mod prometheus;
pub mod runc;
