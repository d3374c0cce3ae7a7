//! The hot path, decode → attribute → track, as one value the agent's event loop and the
//! benchmark both drive. It wires the stages and nothing else: the kernel stage decodes,
//! attribution finds the container (and learns new cgroups), the tracker keeps state. The
//! cgroups attribution learns of are passed to the tracker and mirrored into the kernel's
//! container-cgroup map.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use agent_ebpf::{Addr, TrafficCounters, WatchMarks};

use crate::{
    attribution::{Attributor, CgroupChange, ResolverError, Unattributed},
    engine::Engines,
    kernel::{decode, CgroupEvent, KernelEvent, Probes},
    metrics::{AttributionMetrics, KernelMetrics, Metrics},
    termination::Tracker,
    traffic::TrafficMaps,
};

/// How often the traffic counts of watched pods are read while records flow (and before
/// every API change, so a record completing then has the latest).
const TRAFFIC_READ: Duration = Duration::from_millis(200);

impl TrafficMaps for Probes {
    fn watch(&mut self, addr: Addr, marks: &WatchMarks) -> Result<(), String> {
        self.watch_addr(addr, marks).map_err(|e| e.to_string())
    }
    fn unwatch(&mut self, addr: Addr) -> Result<(), String> {
        self.unwatch_addr(addr).map_err(|e| e.to_string())
    }
    fn read(&self, addr: &Addr) -> Option<TrafficCounters> {
        self.traffic(addr)
    }
}

pub struct Pipeline {
    attributor: Attributor,
    tracker: Tracker,
    kernel_metrics: Arc<KernelMetrics>,
    attribution_metrics: Arc<AttributionMetrics>,
    /// cgroup ids to add to / remove from the kernel's container map.
    added_cgroups: Vec<u64>,
    removed_cgroups: Vec<u64>,
    traffic_read_at: Option<Instant>,
    /// Standalone: engines asked for the names of containers as they appear.
    engines: Option<Engines>,
}

impl Pipeline {
    pub fn new(attributor: Attributor, tracker: Tracker, metrics: &Metrics) -> Self {
        Self {
            attributor,
            tracker,
            kernel_metrics: metrics.kernel.clone(),
            attribution_metrics: metrics.attribution.clone(),
            added_cgroups: Vec::new(),
            removed_cgroups: Vec::new(),
            traffic_read_at: None,
            engines: None,
        }
    }

    /// Asks `engines` for the name of every container that appears from now on (needs
    /// the Tokio runtime).
    pub fn with_engines(mut self, engines: Engines) -> Self {
        self.engines = Some(engines);
        self
    }

    pub fn tracker(&mut self) -> &mut Tracker {
        &mut self.tracker
    }

    pub fn attributor(&mut self) -> &mut Attributor {
        &mut self.attributor
    }

    /// Handles one ring-buffer record.
    pub fn handle_record(&mut self, buf: &[u8]) {
        let ev = match decode(buf) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "dropping malformed kernel record");
                self.kernel_metrics.decode_failed(e.metric_label());
                return;
            }
        };
        self.kernel_metrics.received(ev.kind());
        match ev {
            KernelEvent::Task(task) => {
                let h = task.header();
                let attributed = self.attributor.attribute(h.cgroup_id, h.tgid);
                self.apply_changes();
                match attributed {
                    Ok(c) => self.tracker.handle(&c, &task),
                    Err(Unattributed::NotContainer) => self.attribution_metrics.not_container(),
                    Err(Unattributed::UnknownCgroup) => self.attribution_metrics.unknown_cgroup(),
                }
            }
            KernelEvent::Cgroup(CgroupEvent::Created { id, path }) => {
                self.attributor.cgroup_created(id, path.as_deref());
                self.apply_changes();
            }
            KernelEvent::Cgroup(CgroupEvent::Removed { id }) => {
                self.attributor.cgroup_removed(id, Instant::now());
                self.apply_changes();
            }
        }
    }

    /// Forgets removed cgroups whose late events have had their time.
    pub fn maintain(&mut self) {
        self.attributor.forget_expired(Instant::now());
    }

    /// Walks the cgroup tree for containers that appeared or went.
    pub fn rescan(&mut self) -> Result<(), ResolverError> {
        let walked = self.attributor.rescan();
        self.apply_changes();
        walked
    }

    /// Mirrors the container cgroups learned since the last call into the kernel's map.
    pub fn sync_kernel_map(&mut self, probes: &mut Probes) {
        for id in self.added_cgroups.drain(..) {
            if let Err(e) = probes.add_container_cgroup(id) {
                tracing::warn!(error = %e, cgroup_id = id, "cannot mark container cgroup");
            }
        }
        for id in self.removed_cgroups.drain(..) {
            if let Err(e) = probes.remove_container_cgroup(id) {
                tracing::warn!(error = %e, cgroup_id = id, "cannot unmark container cgroup");
            }
        }
        let traffic = self.tracker.traffic();
        if traffic.has_ops() {
            traffic.apply(probes);
        }
        if self
            .traffic_read_at
            .is_none_or(|at| at.elapsed() >= TRAFFIC_READ)
        {
            self.refresh_traffic(probes);
        }
    }

    /// Reads the watched pods' traffic counts from the kernel now.
    pub fn refresh_traffic(&mut self, probes: &mut Probes) {
        let traffic = self.tracker.traffic();
        traffic.apply(probes);
        if traffic.watching() {
            traffic.refresh(probes);
        }
        self.traffic_read_at = Some(Instant::now());
    }

    fn apply_changes(&mut self) {
        for change in self.attributor.take_changes() {
            match change {
                CgroupChange::Appeared {
                    container,
                    processes,
                    existed_before_agent,
                } => {
                    self.added_cgroups.push(container.cgroup_id);
                    if let Some(engines) = &mut self.engines {
                        engines.look_up(&container);
                    }
                    self.tracker
                        .observe_container(container, &processes, existed_before_agent);
                }
                CgroupChange::Removed(id) => {
                    self.removed_cgroups.push(id);
                    self.tracker.cgroup_removed(id);
                }
            }
        }
    }
}
