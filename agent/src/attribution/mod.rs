//! Who a kernel event is about: cgroup id → cgroup path → container id and pod uid.
//! In standalone mode the cgroup path is all there is; Kubernetes mode adds pod names.

pub mod cgroup_path;
pub mod resolver;

pub use cgroup_path::{CgroupPathError, ContainerCgroup};
pub use resolver::{ContainerInfo, Lookup, Resolver, ResolverError, ScanDelta};
