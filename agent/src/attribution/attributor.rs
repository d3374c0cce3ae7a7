//! The attribution policy: a container for every event's cgroup id, learning the cgroups
//! it does not know yet (from `/proc/<pid>/cgroup` while the task lives, else a
//! rate-limited walk of the hierarchy), and forgetting removed cgroups once their late
//! events have had time to arrive. What it learns is queued as [`CgroupChange`]s for the
//! caller to pass on (the termination tracker, the kernel's container-cgroup map).

use std::{
    collections::VecDeque,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{CgroupContainer, Lookup, Resolver, ResolverError};

/// How long a removed cgroup's attribution is kept for events still in flight.
const FORGET_AFTER: Duration = Duration::from_secs(30);

/// Why an event was not attributed (`gracewatch_unattributed_events_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unattributed {
    /// A cgroup of no known container shape (a host service, a pod's own cgroup).
    NotContainer,
    /// A cgroup not found, e.g. already removed before the agent could look.
    UnknownCgroup,
}

/// A process found in a container's cgroup when the container was discovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupProcess {
    pub tgid: u32,
    /// Thread group id in the process's own PID namespace.
    pub ns_tgid: u32,
    /// PID-namespace depth (0: the host's).
    pub ns_level: u32,
    /// Start time (clock ticks since boot), to find the oldest process.
    pub start_time: u64,
    pub comm: String,
}

/// A container cgroup that appeared (with the processes already in it), or a cgroup that
/// is gone.
#[derive(Debug)]
pub enum CgroupChange {
    Appeared(Arc<CgroupContainer>, Vec<CgroupProcess>),
    Removed(u64),
}

pub struct Attributor {
    resolver: Resolver,
    changes: Vec<CgroupChange>,
    forget_queue: VecDeque<(Instant, u64)>,
}

impl Attributor {
    pub fn new(resolver: Resolver) -> Self {
        Self {
            resolver,
            changes: Vec::new(),
            forget_queue: VecDeque::new(),
        }
    }

    /// The cgroup v2 mount it resolves under.
    pub fn root(&self) -> &Path {
        self.resolver.root()
    }

    /// Records a cgroup directly, as a walk would have found it (tests and benchmarks).
    pub fn insert(&mut self, cgroup_id: u64, path: &str) -> Option<Arc<CgroupContainer>> {
        self.resolver.insert(cgroup_id, path)
    }

    /// The container of an event from `tgid` in cgroup `cgroup_id`.
    pub fn attribute(
        &mut self,
        cgroup_id: u64,
        tgid: u32,
    ) -> Result<Arc<CgroupContainer>, Unattributed> {
        match self.resolver.lookup(cgroup_id) {
            Lookup::Container(c) => Ok(c),
            Lookup::NotContainer => Err(Unattributed::NotContainer),
            Lookup::Unknown => {
                // The task is usually still alive: ask the kernel where it is. A walk is
                // the fallback (it also finds cgroups whose tasks are gone).
                if let Some(c) = self.resolver.learn_from_proc(tgid, cgroup_id) {
                    self.appeared(c.clone());
                    return Ok(c);
                }
                if !self.resolver.rescan_due() {
                    return Err(Unattributed::UnknownCgroup);
                }
                if let Err(e) = self.rescan() {
                    tracing::warn!(error = %e, "cgroup walk failed");
                }
                match self.resolver.lookup(cgroup_id) {
                    Lookup::Container(c) => Ok(c),
                    Lookup::NotContainer => Err(Unattributed::NotContainer),
                    Lookup::Unknown => Err(Unattributed::UnknownCgroup),
                }
            }
        }
    }

    /// Walks the cgroup tree: new containers and removed cgroups are queued as changes;
    /// removed cgroups are forgotten [`FORGET_AFTER`] later.
    pub fn rescan(&mut self) -> Result<(), ResolverError> {
        let delta = self.resolver.rescan()?;
        for c in delta.added {
            self.appeared(c);
        }
        let now = Instant::now();
        for id in delta.removed {
            self.changes.push(CgroupChange::Removed(id));
            self.forget_queue.push_back((now, id));
        }
        while let Some((at, id)) = self.forget_queue.front().copied() {
            if now.duration_since(at) < FORGET_AFTER {
                break;
            }
            self.forget_queue.pop_front();
            self.resolver.forget(id);
        }
        Ok(())
    }

    /// Changes learned since the last call, oldest first.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, CgroupChange> {
        self.changes.drain(..)
    }

    fn appeared(&mut self, c: Arc<CgroupContainer>) {
        let procs = processes_in(self.resolver.root(), &c);
        self.changes.push(CgroupChange::Appeared(c, procs));
    }
}

/// The processes already in a container's cgroup, with their PID-namespace ids, so a
/// container that started before the agent still has a known PID 1.
pub fn processes_in(root: &Path, c: &CgroupContainer) -> Vec<CgroupProcess> {
    let procs_file = root
        .join(c.path.trim_start_matches('/'))
        .join("cgroup.procs");
    let Ok(text) = std::fs::read_to_string(&procs_file) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter_map(|pid| {
            let proc = procfs::process::Process::new(pid).ok()?;
            let status = proc.status().ok()?;
            let nspid = status.nspid.clone().unwrap_or_else(|| vec![pid]);
            Some(CgroupProcess {
                tgid: pid as u32,
                ns_tgid: nspid.last().copied().unwrap_or(pid) as u32,
                ns_level: nspid.len().saturating_sub(1) as u32,
                start_time: proc.stat().map(|s| s.starttime).unwrap_or(u64::MAX),
                comm: status.name,
            })
        })
        .collect()
}
