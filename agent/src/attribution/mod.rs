//! Who a kernel event is about: cgroup id → cgroup path → container id and pod uid.
//! `cgroup_path` reads paths, `resolver` maps ids to paths, `attributor` decides what to
//! do about ids it does not know. In standalone mode the cgroup path is all there is;
//! Kubernetes mode adds pod names in the join.

pub mod attributor;
pub mod cgroup_path;
pub mod resolver;

pub use attributor::{Attributor, CgroupChange, CgroupProcess, Unattributed};
pub use cgroup_path::{CgroupIdentity, CgroupPathError};
pub use resolver::{CgroupContainer, Lookup, Resolver, ResolverError, ScanDelta};
