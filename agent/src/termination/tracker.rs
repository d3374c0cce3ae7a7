//! The single owner of termination state. Fed attributed kernel events in order, it
//! keeps a state machine per container (running → terminating → exited → finalized),
//! bumps event-time metrics, and on [`Tracker::tick`] finalizes containers whose PID 1
//! is gone, grouping them per pod into termination records (see `record`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use super::{
    container::{on_deliver, on_exec, on_exit, on_signal, ContainerState},
    model::{Snapshot, Termination},
    pods::{PodChange, PodIndex},
    record::{record_key, Records},
};
use crate::{
    attribution::ContainerInfo,
    clock::Clock,
    export::{ContainerLabels, Metrics},
    kernel::KernelEvent,
    kube::KubeUpdate,
};

/// Container name (and label) of a pod's sandbox ("pause") container, as kubelet's own.
pub const SANDBOX: &str = "POD";

/// Longest wait, after PID 1's exit, for the container's other processes to exit.
const SETTLE_CAP_NS: u64 = 10_000_000_000;

#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// How long after PID 1's exit (and the last event) a container is finalized, so the
    /// exits of the processes the kernel kills after PID 1 are included.
    pub linger_ns: u64,
    /// Completed terminations kept for `/debug/terminations`.
    pub history: usize,
    /// A pod still present this long past deletion + grace period is stuck.
    pub stuck_margin_ns: u64,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        Self {
            linger_ns: 500_000_000,
            history: 256,
            stuck_margin_ns: 30_000_000_000,
        }
    }
}

/// A process found in a container's cgroup when the container was discovered.
#[derive(Clone, Debug)]
pub struct SeedProcess {
    pub tgid: u32,
    pub ns_tgid: u32,
    /// PID-namespace depth (0: the host's).
    pub ns_level: u32,
    /// Start time (clock ticks since boot), to find the oldest process.
    pub start_time: u64,
    pub comm: String,
}

pub struct Tracker {
    pub(super) opts: TrackerOptions,
    pub(super) clock: Clock,
    pub(super) metrics: Arc<Metrics>,
    pub(super) containers: HashMap<u64, ContainerState>,
    /// Containers finalized recently, so their late events do not start a new state.
    finished: HashSet<u64>,
    finished_order: VecDeque<u64>,
    pub(super) records: Records,
    pub(super) pods: PodIndex,
    pub(super) dirty: bool,
    /// Namespaces the pod gauges were last set for (to zero them when emptied).
    pub(super) gauge_namespaces: Vec<String>,
}

impl Tracker {
    pub fn new(opts: TrackerOptions, clock: Clock, metrics: Arc<Metrics>) -> Self {
        let records = Records::new(opts.history);
        Self {
            opts,
            clock,
            metrics,
            containers: HashMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            records,
            pods: PodIndex::default(),
            dirty: true,
            gauge_namespaces: Vec::new(),
        }
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    fn new_state(&self, info: Arc<ContainerInfo>) -> ContainerState {
        let (labels, name) = labels_for(&self.pods, &info);
        ContainerState::new(info, labels, name)
    }

    /// A container found by a cgroup walk, with the processes already in it.
    pub fn observe_container(&mut self, info: Arc<ContainerInfo>, procs: &[SeedProcess]) {
        if self.finished.contains(&info.cgroup_id) {
            return;
        }
        if !self.containers.contains_key(&info.cgroup_id) {
            let state = self.new_state(info.clone());
            self.containers.insert(info.cgroup_id, state);
        }
        let Some(state) = self.containers.get_mut(&info.cgroup_id) else {
            return;
        };
        let mut sorted: Vec<&SeedProcess> = procs.iter().collect();
        // The namespace init first; without one (a shared PID namespace) the oldest
        // process stands in for it.
        sorted.sort_by_key(|p| (p.ns_tgid != 1, p.start_time, p.tgid));
        for p in sorted {
            if !state.procs.contains_key(&p.tgid) {
                state.add_proc(p.tgid, p.ns_tgid, p.ns_level, p.comm.clone());
            }
        }
    }

    /// The container's cgroup was removed: nothing more will happen in it.
    pub fn cgroup_removed(&mut self, cgroup_id: u64) {
        if let Some(c) = self.containers.get_mut(&cgroup_id) {
            c.gone = true;
        }
        if self.finished.remove(&cgroup_id) {
            self.finished_order.retain(|id| *id != cgroup_id);
        }
    }

    pub fn handle(&mut self, info: &Arc<ContainerInfo>, ev: &KernelEvent) {
        let id = info.cgroup_id;
        if self.finished.contains(&id) {
            return;
        }
        let Self {
            containers,
            pods,
            metrics,
            clock,
            dirty,
            ..
        } = self;
        // One lookup on the hot path; labels are worked out once per container.
        let c = containers.entry(id).or_insert_with(|| {
            let (labels, name) = labels_for(pods, info);
            ContainerState::new(info.clone(), labels, name)
        });
        c.last_event_ns = c.last_event_ns.max(ev.header().ktime_ns);
        match ev {
            KernelEvent::Exec(e) => on_exec(c, e, clock),
            KernelEvent::Signal(s) => on_signal(c, s, metrics, clock),
            KernelEvent::Deliver(d) => on_deliver(c, d, clock),
            KernelEvent::Exit(e) => on_exit(c, e, clock),
        }
        *dirty = true;
    }

    /// An update from the Kubernetes watchers.
    pub fn kube(&mut self, update: KubeUpdate) {
        let clock = self.clock;
        for change in self.pods.apply(update, &clock) {
            match change {
                PodChange::None => {}
                PodChange::Updated(uid) => self.relabel(&uid),
                PodChange::Deleting(uid) => {
                    self.relabel(&uid);
                    if let Some(p) = self.pods.get(&uid) {
                        self.records.open_pod(p);
                    }
                }
                PodChange::Removed(uid) => self.try_complete(&uid),
            }
        }
        self.dirty = true;
    }

    /// Pod names may arrive after the container's first events: relabel its containers
    /// (cached counters carry labels, so they are dropped when labels change).
    fn relabel(&mut self, uid: &str) {
        let ids: Vec<u64> = self
            .containers
            .iter()
            .filter(|(_, c)| c.info.cgroup.pod_uid.as_deref() == Some(uid))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(info) = self.containers.get(&id).map(|c| c.info.clone()) else {
                continue;
            };
            let (labels, name) = labels_for(&self.pods, &info);
            if let Some(c) = self.containers.get_mut(&id) {
                if c.labels != labels {
                    c.signal_counters.clear();
                    c.labels = labels;
                }
                c.name = name;
            }
        }
    }

    fn try_complete(&mut self, key: &str) {
        let before = self.records.completed_count();
        let others_pending = self
            .containers
            .values()
            .any(|o| o.terminating_since.is_some() && record_key(&o.info) == key);
        self.records.try_complete(
            key,
            others_pending,
            self.pods.get(key),
            crate::clock::boot_now_ns(),
            &self.metrics,
            &self.clock,
        );
        if self.records.completed_count() != before {
            self.dirty = true;
        }
    }

    /// Finalizes containers that are done and refreshes the pod gauges; returns whether
    /// anything changed.
    pub fn tick(&mut self, now_ns: u64) -> bool {
        let linger = self.opts.linger_ns;
        let done: Vec<u64> = self
            .containers
            .iter()
            .filter(|(_, c)| {
                let quiet = now_ns.saturating_sub(c.last_event_ns) >= linger;
                // After PID 1, wait for the processes the kernel is killing to be gone
                // (a large heap can take seconds to free), up to a cap.
                let settled = match c.facts.pid1_exit_ns {
                    Some(exit) => !c.others_alive() || now_ns.saturating_sub(exit) >= SETTLE_CAP_NS,
                    None => false,
                };
                quiet && (settled || c.gone)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(mut c) = self.containers.remove(&id) else {
                continue;
            };
            if c.terminating_since.is_none() {
                // Gone without anything seen (e.g. it ended before the agent started).
                continue;
            }
            self.finished.insert(id);
            self.finished_order.push_back(id);
            if self.finished_order.len() > 4096 {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
            c.check_orphans();
            let key = record_key(&c.info).to_string();
            self.records
                .finalize(c, self.pods.get(&key), &self.metrics, &self.clock);
            self.try_complete(&key);
            self.dirty = true;
        }
        // Records held back (e.g. waiting for a deletion) are looked at again.
        for key in self.records.open_keys() {
            self.try_complete(&key);
        }
        self.update_pod_gauges(now_ns);
        self.dirty
    }

    /// A new snapshot when something changed since the last one.
    pub fn snapshot(&mut self, now_ns: u64) -> Option<Arc<Snapshot>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let mut terminations: Vec<Arc<Termination>> = self.records.completed().cloned().collect();
        terminations.extend(self.in_progress(now_ns));
        Some(Arc::new(Snapshot { terminations }))
    }

    /// Containers currently tracked (tests, debugging).
    pub fn tracked(&self) -> usize {
        self.containers.len()
    }
}

/// Metric labels and container name: from the pod index in Kubernetes mode (a cgroup of
/// a known pod that is none of its containers is the sandbox, "POD"), else namespace and
/// workload empty and the 12-character id.
fn labels_for(pods: &PodIndex, info: &ContainerInfo) -> (ContainerLabels, Option<String>) {
    let id = &info.cgroup.container_id;
    let (pod, name) = match pods.container(id) {
        Some((uid, name)) => (pods.get(uid), Some(name.clone())),
        None => (
            info.cgroup.pod_uid.as_deref().and_then(|u| pods.get(u)),
            None,
        ),
    };
    match pod {
        Some(p) => {
            let name = name.unwrap_or_else(|| SANDBOX.to_string());
            let labels = ContainerLabels {
                namespace: p.info.namespace.clone(),
                workload: p.info.workload.clone(),
                container: name.clone(),
            };
            (labels, Some(name))
        }
        None => (
            ContainerLabels {
                container: info.short_id().to_string(),
                ..Default::default()
            },
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::cgroup_path;
    use agent_ebpf::{
        si_code, sig_result, EventHeader, EventKind, ExecEvent, ExitEvent, SignalGenerateEvent,
        COMM_LEN,
    };

    const CG: u64 = 4242;
    // Above the kernel's PID_MAX_LIMIT: no real process (whose /proc the tracker may read)
    // can have these pids.
    const P1: u32 = 5_000_100;
    const P2: u32 = 5_000_101;
    const MS: u64 = 1_000_000;

    fn info() -> Arc<ContainerInfo> {
        let path = format!(
            "/kubepods/besteffort/pod6f1c2d3e-1111-2222-3333-444455556666/{}",
            "a".repeat(64)
        );
        Arc::new(ContainerInfo {
            cgroup_id: CG,
            cgroup: cgroup_path::parse(&path).expect("path"),
            path,
        })
    }

    fn comm(name: &str) -> [u8; COMM_LEN] {
        let mut c = [0u8; COMM_LEN];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    fn header(kind: EventKind, at_ms: u64, tgid: u32, ns_tgid: u32, name: &str) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            cpu: 0,
            ktime_ns: at_ms * MS,
            cgroup_id: CG,
            tgid,
            pid: tgid,
            ns_tgid,
            ns_level: 1,
            comm: comm(name),
        }
    }

    fn exec(at_ms: u64, tgid: u32, ns_tgid: u32, name: &str) -> KernelEvent {
        KernelEvent::Exec(ExecEvent {
            header: header(EventKind::Exec, at_ms, tgid, ns_tgid, name),
            parent_tgid: 1,
            _pad: 0,
        })
    }

    /// A signal to `tgid`; `from` is (sender tgid, sender cgroup, si_code).
    fn signal(
        at_ms: u64,
        tgid: u32,
        ns_tgid: u32,
        name: &str,
        sig: u32,
        from: (u32, u64, i32),
        result: u32,
    ) -> KernelEvent {
        KernelEvent::Signal(SignalGenerateEvent {
            header: header(EventKind::SignalGenerate, at_ms, tgid, ns_tgid, name),
            sig,
            code: from.2,
            result,
            group: 1,
            sender_tgid: from.0,
            sender_pid: from.0,
            sender_cgroup_id: from.1,
            sender_comm: comm(if from.1 == CG { name } else { "runc" }),
        })
    }

    fn exit(at_ms: u64, tgid: u32, ns_tgid: u32, name: &str, code: u32) -> KernelEvent {
        KernelEvent::Exit(ExitEvent {
            header: header(EventKind::Exit, at_ms, tgid, ns_tgid, name),
            exit_code: code,
            group_dead: 1,
        })
    }

    fn run(events: &[KernelEvent]) -> Tracker {
        let mut t = Tracker::new(
            TrackerOptions::default(),
            Clock::with_offset_ns(0),
            Arc::new(Metrics::new("test")),
        );
        let i = info();
        for e in events {
            t.handle(&i, e);
        }
        t
    }

    fn last(t: &mut Tracker, now_ms: u64) -> Option<Arc<Termination>> {
        t.tick(now_ms * MS);
        t.snapshot(now_ms * MS)
            .and_then(|s| s.terminations.last().cloned())
    }

    const RUNC: (u32, u64, i32) = (7, 1, si_code::SI_USER);

    #[test]
    fn pid1_oom_killed_in_its_own_context() {
        let mut t = run(&[
            exec(0, P1, 1, "app"),
            signal(
                1000,
                P1,
                1,
                "app",
                9,
                (P1, CG, si_code::SI_KERNEL),
                sig_result::DELIVERED,
            ),
            exit(1001, P1, 1, "app", 9),
        ]);
        let term = last(&mut t, 3000).expect("termination");
        assert_eq!(term.containers[0].outcome.as_deref(), Some("oom_killed"));
        assert_eq!(term.diagnoses[0].code, "OOM_KILLED");
        assert!(
            term.timeline
                .iter()
                .any(|e| e.detail.starts_with("SIGKILL from the kernel's OOM killer")),
            "{:?}",
            term.timeline
        );
    }

    #[test]
    fn a_childs_oom_kill_does_not_end_the_container() {
        let mut t = run(&[
            exec(0, P1, 1, "nginx"),
            exec(10, P2, 2, "nginx"),
            signal(
                1000,
                P2,
                2,
                "nginx",
                9,
                (P2, CG, si_code::SI_KERNEL),
                sig_result::DELIVERED,
            ),
            exit(1001, P2, 2, "nginx", 9),
        ]);
        assert!(
            last(&mut t, 60_000).is_none(),
            "no termination: PID 1 lives on"
        );
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn teardown_is_not_oom_and_a_duplicate_exit_is_dropped() {
        let mut t = run(&[
            exec(0, P1, 1, "sh"),
            exec(10, P2, 6, "sleep"),
            signal(1000, P1, 1, "sh", 15, RUNC, sig_result::IGNORED),
            signal(3000, P1, 1, "sh", 9, RUNC, sig_result::DELIVERED),
            exit(3001, P1, 1, "sh", 9),
            signal(
                3002,
                P2,
                6,
                "sleep",
                9,
                (P1, CG, si_code::SI_KERNEL),
                sig_result::DELIVERED,
            ),
            exit(3003, P2, 6, "sleep", 9),
            exit(3003, P2, 6, "sleep", 9),
        ]);
        let term = last(&mut t, 5000).expect("termination");
        assert_eq!(term.containers[0].outcome.as_deref(), Some("forced_kill"));
        let codes: Vec<&str> = term.diagnoses.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "SHELL_DID_NOT_FORWARD_SIGTERM",
                "SIGTERM_IGNORED",
                "FORCED_KILL"
            ]
        );
        assert_eq!(term.timeline.iter().filter(|e| e.what == "exit").count(), 1);
        assert!(term.timeline.iter().any(|e| e
            .detail
            .starts_with("SIGKILL from the kernel (PID 1 exited")));
    }

    #[test]
    fn waits_for_children_the_kernel_is_still_killing() {
        let mut t = run(&[
            exec(0, P1, 1, "sh"),
            exec(10, P2, 6, "java"),
            signal(1000, P1, 1, "sh", 15, RUNC, sig_result::IGNORED),
            signal(3000, P1, 1, "sh", 9, RUNC, sig_result::DELIVERED),
            exit(3001, P1, 1, "sh", 9),
            signal(
                3002,
                P2,
                6,
                "java",
                9,
                (P1, CG, si_code::SI_KERNEL),
                sig_result::DELIVERED,
            ),
        ]);
        assert!(
            last(&mut t, 4500).is_none_or(|t| t.state == super::super::model::State::InProgress),
            "java is still dying"
        );
        t.handle(&info(), &exit(5500, P2, 6, "java", 9));
        let term = last(&mut t, 7000).expect("termination");
        assert_eq!(term.state, super::super::model::State::Completed);
        assert!(
            term.diagnoses[0].message.contains("(java)"),
            "{:?}",
            term.diagnoses
        );
    }
}
