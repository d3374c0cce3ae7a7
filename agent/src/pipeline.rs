//! The hot path, decode → attribute → track, as one value the agent's event loop and the
//! benchmark both drive. It owns the resolver and the tracker; cgroup changes it learns
//! of are queued for the caller to mirror into the kernel's container-cgroup map.

use std::{
    collections::VecDeque,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_ebpf::EventKind;
use prometheus_client::metrics::counter::Counter;

use crate::{
    attribution::{ContainerInfo, Lookup, Resolver, ResolverError},
    export::{metrics::KindLabels, metrics::ReasonLabels, Metrics},
    kernel::decode,
    termination::{SeedProcess, Tracker},
};

/// Why an event was not attributed (`gracewatch_unattributed_events_total{reason}`).
#[derive(Clone, Copy, Debug)]
enum Unattributed {
    NotContainer = 0,
    UnknownCgroup = 1,
}

/// How long a removed cgroup's attribution is kept for events still in flight.
const FORGET_AFTER: Duration = Duration::from_secs(30);

pub struct Pipeline {
    pub resolver: Resolver,
    pub tracker: Tracker,
    metrics: Arc<Metrics>,
    /// Indexed by `EventKind as usize`.
    kind_counters: [Counter; 5],
    /// Indexed by `Unattributed as usize`.
    unattributed: [Counter; 2],
    /// cgroup ids to add to / remove from the kernel's container map.
    pub added_cgroups: Vec<u64>,
    pub removed_cgroups: Vec<u64>,
    forget_queue: VecDeque<(Instant, u64)>,
}

impl Pipeline {
    pub fn new(resolver: Resolver, tracker: Tracker, metrics: Arc<Metrics>) -> Self {
        let kind_counters = [0u32, 1, 2, 3, 4].map(|k| {
            let kind = EventKind::from_u32(k)
                .map(EventKind::name)
                .unwrap_or("invalid");
            metrics
                .bpf_events
                .get_or_create(&KindLabels { kind })
                .clone()
        });
        let unattributed = ["not_container", "unknown_cgroup"].map(|reason| {
            metrics
                .unattributed_events
                .get_or_create(&ReasonLabels { reason })
                .clone()
        });
        Self {
            resolver,
            tracker,
            metrics,
            kind_counters,
            unattributed,
            added_cgroups: Vec::new(),
            removed_cgroups: Vec::new(),
            forget_queue: VecDeque::new(),
        }
    }

    /// Handles one ring-buffer record.
    pub fn handle_record(&mut self, buf: &[u8]) {
        let ev = match decode(buf) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "dropping malformed kernel record");
                self.metrics
                    .decode_errors
                    .get_or_create(&ReasonLabels {
                        reason: e.metric_label(),
                    })
                    .inc();
                return;
            }
        };
        self.kind_counters[ev.kind() as usize].inc();
        match self.attribute(ev.header().cgroup_id, ev.header().tgid) {
            Ok(info) => self.tracker.handle(&info, &ev),
            Err(reason) => {
                self.unattributed[reason as usize].inc();
            }
        }
    }

    fn attribute(&mut self, cgroup_id: u64, tgid: u32) -> Result<Arc<ContainerInfo>, Unattributed> {
        match self.resolver.lookup(cgroup_id) {
            Lookup::Container(c) => Ok(c),
            Lookup::NotContainer => Err(Unattributed::NotContainer),
            Lookup::Unknown => {
                // The task is usually still alive: ask the kernel where it is. A walk is
                // the fallback (it also finds cgroups whose tasks are gone).
                if let Some(info) = self.resolver.learn_from_proc(tgid, cgroup_id) {
                    self.added(info.clone());
                    return Ok(info);
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

    /// Walks the cgroup tree: new containers are seeded with their processes and queued
    /// for the kernel map; removed ones are told to the tracker.
    pub fn rescan(&mut self) -> Result<(), ResolverError> {
        let delta = self.resolver.rescan()?;
        for info in delta.added {
            self.added(info);
        }
        let now = Instant::now();
        for id in delta.removed {
            self.tracker.cgroup_removed(id);
            self.removed_cgroups.push(id);
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
}

impl Pipeline {
    fn added(&mut self, info: Arc<ContainerInfo>) {
        let procs = seed_processes(self.resolver.root(), &info);
        self.added_cgroups.push(info.cgroup_id);
        self.tracker.observe_container(info, &procs);
    }
}

/// The processes already in a container's cgroup, with their PID-namespace ids, so a
/// container that started before the agent still has a known PID 1.
pub fn seed_processes(root: &Path, info: &ContainerInfo) -> Vec<SeedProcess> {
    let procs_file = root
        .join(info.path.trim_start_matches('/'))
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
            Some(SeedProcess {
                tgid: pid as u32,
                ns_tgid: nspid.last().copied().unwrap_or(pid) as u32,
                ns_level: nspid.len().saturating_sub(1) as u32,
                start_time: proc.stat().map(|s| s.starttime).unwrap_or(u64::MAX),
                comm: status.name,
            })
        })
        .collect()
}
