//! The attribution policy: a container for every event's cgroup id. Cgroups are learned
//! from the kernel as they are created and removed (so a container whose PID 1 dies
//! within milliseconds still resolves), and, for ids not known that way, from
//! `/proc/<pid>/cgroup` while the task lives, else a rate-limited walk of the hierarchy.
//! Removed cgroups are forgotten once their late events have had time to arrive. What it
//! learns is queued as [`CgroupChange`]s for the caller to pass on (the termination
//! tracker, the kernel's container-cgroup map).

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
    Appeared {
        container: Arc<CgroupContainer>,
        processes: Vec<CgroupProcess>,
        /// Found by the first walk: it was there before the agent started.
        existed_before_agent: bool,
    },
    Removed(u64),
}

pub struct Attributor {
    resolver: Resolver,
    changes: Vec<CgroupChange>,
    forget_queue: VecDeque<(Instant, u64)>,
    /// The first walk is done: containers found later are new.
    walked: bool,
}

impl Attributor {
    pub fn new(resolver: Resolver) -> Self {
        Self {
            resolver,
            changes: Vec::new(),
            forget_queue: VecDeque::new(),
            walked: false,
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
                    self.appeared(c.clone(), false);
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

    /// The kernel created a cgroup. `path` is `None` when its record could not carry it;
    /// the cgroup is then learned on its first event instead.
    pub fn cgroup_created(&mut self, cgroup_id: u64, path: Option<&str>) {
        let Some(path) = path else { return };
        if let Some(c) = self.resolver.created(cgroup_id, path) {
            self.appeared(c, false);
        }
    }

    /// The kernel removed a cgroup. A container's is reported gone (and forgotten later);
    /// any other is forgotten at once.
    pub fn cgroup_removed(&mut self, cgroup_id: u64, now: Instant) {
        if self.resolver.removed(cgroup_id) {
            self.gone(cgroup_id, now);
        } else {
            self.resolver.forget(cgroup_id);
        }
    }

    /// Walks the cgroup tree: new containers and removed cgroups are queued as changes.
    pub fn rescan(&mut self) -> Result<(), ResolverError> {
        let delta = self.resolver.rescan()?;
        let existed_before_agent = !self.walked;
        self.walked = true;
        for c in delta.added {
            self.appeared(c, existed_before_agent);
        }
        let now = Instant::now();
        for id in delta.removed {
            self.gone(id, now);
        }
        self.forget_expired(now);
        Ok(())
    }

    /// Forgets cgroups removed more than [`FORGET_AFTER`] before `now`.
    pub fn forget_expired(&mut self, now: Instant) {
        while let Some((at, id)) = self.forget_queue.front().copied() {
            if now.duration_since(at) < FORGET_AFTER {
                break;
            }
            self.forget_queue.pop_front();
            self.resolver.forget(id);
        }
    }

    fn gone(&mut self, cgroup_id: u64, now: Instant) {
        self.changes.push(CgroupChange::Removed(cgroup_id));
        self.forget_queue.push_back((now, cgroup_id));
    }

    /// Changes learned since the last call, oldest first.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, CgroupChange> {
        self.changes.drain(..)
    }

    fn appeared(&mut self, container: Arc<CgroupContainer>, existed_before_agent: bool) {
        let processes = processes_in(self.resolver.root(), &container);
        self.changes.push(CgroupChange::Appeared {
            container,
            processes,
            existed_before_agent,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn attributor() -> Attributor {
        // A root with no cgroups: everything here is learned from kernel records.
        let root = std::env::temp_dir().join(format!("gw-attributor-{}", std::process::id()));
        Attributor::new(Resolver::with_root(root))
    }

    #[test]
    fn a_container_learned_at_mkdir_resolves_after_its_cgroup_is_gone() {
        let mut a = attributor();
        let path = format!("/kubepods/besteffort/pod6f1c2d3e-1111-2222-3333-444455556666/{ID}");
        a.cgroup_created(77, Some(&path));
        a.cgroup_created(78, Some("/system.slice/cron.service"));
        let changes: Vec<CgroupChange> = a.take_changes().collect();
        assert!(
            matches!(
                &changes[..],
                [CgroupChange::Appeared { container, processes, existed_before_agent: false }]
                    if container.cgroup_id == 77 && processes.is_empty()
            ),
            "{changes:?}"
        );
        let t0 = Instant::now();
        a.cgroup_removed(77, t0);
        assert!(matches!(
            a.take_changes().collect::<Vec<_>>()[..],
            [CgroupChange::Removed(77)]
        ));
        // The crash's exit arrives after the rmdir: still attributed.
        let c = a
            .attribute(77, 5_000_100)
            .expect("attributed after removal");
        assert_eq!(c.cgroup.container_id, ID);
        assert_eq!(
            a.attribute(78, 5_000_100).unwrap_err(),
            Unattributed::NotContainer
        );
        a.forget_expired(t0 + FORGET_AFTER);
        assert_eq!(
            a.attribute(77, 5_000_100).unwrap_err(),
            Unattributed::UnknownCgroup,
            "forgotten once late events had their time"
        );
    }

    #[test]
    fn a_cut_path_is_learned_later_not_guessed() {
        let mut a = attributor();
        a.cgroup_created(90, None);
        assert_eq!(a.take_changes().count(), 0);
        assert_eq!(
            a.attribute(90, 5_000_100).unwrap_err(),
            Unattributed::UnknownCgroup
        );
    }
}
