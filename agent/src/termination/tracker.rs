//! The single owner of termination state. Fed attributed kernel events in order, it
//! keeps a state machine per container (running → terminating → exited → finalized),
//! bumps event-time metrics, and on [`Tracker::tick`] finalizes containers whose PID 1
//! is gone, grouping them per pod into termination records (see `record`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use agent_ebpf::{handler, si_code, sig_result};
use prometheus_client::metrics::counter::Counter;

use super::{
    classify::{Code, ContainerFacts, Diagnosis, SignalFact, SIGKILL, SIGTERM},
    model::{signal_name, Snapshot, Termination, TimelineEntry},
    pods::{PodChange, PodIndex},
    record::{record_key, Records},
};
use crate::{
    attribution::ContainerInfo,
    clock::Clock,
    export::{metrics::SignalLabels, ContainerLabels, Metrics},
    kernel::{decode::comm_str, ExitStatus, KernelEvent},
    kube::KubeUpdate,
};

/// Timeline entries kept per container; a signal storm must not grow memory.
const MAX_TIMELINE: usize = 200;
/// Processes remembered per container (a fork storm must not grow memory either).
const MAX_PROCS: usize = 4096;

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
    pub comm: String,
}

#[derive(Debug)]
struct Proc {
    comm: String,
    /// Alive when SIGTERM reached PID 1.
    alive_at_sigterm: bool,
    /// Received a SIGTERM during the termination.
    got_sigterm: bool,
}

pub(super) struct ContainerState {
    pub(super) info: Arc<ContainerInfo>,
    pub(super) labels: ContainerLabels,
    pub(super) pid1: Option<u32>,
    procs: HashMap<u32, Proc>,
    pub(super) facts: ContainerFacts,
    pub(super) terminating_since: Option<u64>,
    pub(super) timeline: Vec<TimelineEntry>,
    pub(super) timeline_dropped: u64,
    pub(super) last_exit_ns: Option<u64>,
    last_event_ns: u64,
    gone: bool,
    signal_counters: HashMap<(u32, u32), Counter>,
    /// Container name (Kubernetes mode).
    pub(super) name: Option<String>,
    /// ORPHANED_PROCESSES findings, made when the container is finalized.
    pub(super) orphans: Vec<Diagnosis>,
}

impl ContainerState {
    fn new(info: Arc<ContainerInfo>, labels: ContainerLabels, name: Option<String>) -> Self {
        Self {
            info,
            labels,
            name,
            orphans: Vec::new(),
            pid1: None,
            procs: HashMap::new(),
            facts: ContainerFacts::default(),
            terminating_since: None,
            timeline: Vec::new(),
            timeline_dropped: 0,
            last_exit_ns: None,
            last_event_ns: 0,
            gone: false,
            signal_counters: HashMap::new(),
        }
    }

    fn add_proc(&mut self, tgid: u32, ns_tgid: u32, ns_level: u32, comm: String) {
        // PID 1 of its own namespace is the container's init; a container sharing the
        // host PID namespace has none, and its first process seen stands in for it.
        if self.pid1.is_none() && (ns_tgid == 1 || ns_level == 0) {
            self.pid1 = Some(tgid);
            self.facts.pid1_comm = Some(comm.clone());
        } else if self.pid1 == Some(tgid) {
            self.facts.pid1_comm = Some(comm.clone());
        }
        if self.procs.len() < MAX_PROCS || self.procs.contains_key(&tgid) {
            let p = self.procs.entry(tgid).or_insert(Proc {
                comm: String::new(),
                alive_at_sigterm: false,
                got_sigterm: false,
            });
            p.comm = comm;
        }
    }

    /// Host pids of the processes believed alive.
    pub(super) fn live_tgids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    pub(super) fn comm_of(&self, tgid: u32) -> &str {
        self.procs.get(&tgid).map_or("?", |p| p.comm.as_str())
    }

    fn is_pid1(&self, tgid: u32) -> bool {
        self.pid1 == Some(tgid)
    }

    fn note(&mut self, at_ns: u64, what: &str, detail: String, clock: &Clock) {
        if self.timeline.len() >= MAX_TIMELINE {
            self.timeline_dropped += 1;
            return;
        }
        self.timeline.push(TimelineEntry {
            at: clock.rfc3339(at_ns),
            what: what.to_string(),
            container: Some(self.labels.container.clone()),
            detail,
            at_ns,
        });
    }

    /// Processes other than PID 1 still alive after PID 1 exited: the kernel kills the
    /// rest of a PID namespace, so these escaped it (a shared PID namespace, or a cgroup
    /// joined from outside) and hold the cgroup.
    fn check_orphans(&mut self) {
        if self.facts.pid1_exit.is_none() {
            return;
        }
        let pid1 = self.pid1;
        let alive: Vec<String> = self
            .procs
            .iter()
            .filter(|(tgid, _)| Some(**tgid) != pid1)
            .filter(|(tgid, _)| std::path::Path::new(&format!("/proc/{tgid}")).exists())
            .map(|(tgid, p)| format!("{} (host pid {tgid})", p.comm))
            .collect();
        if !alive.is_empty() {
            self.orphans.push(Diagnosis {
                code: Code::OrphanedProcesses,
                message: format!(
                    "{} left in the container's cgroup after PID 1 exited: {}; they keep the cgroup (and often the pod) from going away: make PID 1 reap and stop its children (an init such as tini), and do not share the host PID namespace",
                    if alive.len() == 1 { "1 process" } else { "processes" },
                    alive.join(", ")
                ),
            });
        }
    }

    fn recording(&self) -> bool {
        self.terminating_since.is_some()
    }
}

pub struct Tracker {
    pub(super) opts: TrackerOptions,
    pub(super) clock: Clock,
    pub(super) metrics: Arc<Metrics>,
    pub(super) containers: HashMap<u64, ContainerState>,
    /// Containers finalized recently, so their late events do not start a new state.
    finished: VecDeque<u64>,
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
            finished: VecDeque::new(),
            records,
            pods: PodIndex::default(),
            dirty: true,
            gauge_namespaces: Vec::new(),
        }
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Metric labels and container name: from the pod index in Kubernetes mode (a
    /// container of a known pod that is none of its containers is the sandbox, "POD"),
    /// else namespace and workload empty and the 12-character id.
    fn labels_for(&self, info: &ContainerInfo) -> (ContainerLabels, Option<String>) {
        let pod = info
            .cgroup
            .pod_uid
            .as_deref()
            .and_then(|u| self.pods.get(u));
        match pod {
            Some(p) => {
                let name = p
                    .info
                    .container_by_id(&info.cgroup.container_id)
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| "POD".to_string());
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

    fn new_state(&self, info: Arc<ContainerInfo>) -> ContainerState {
        let (labels, name) = self.labels_for(&info);
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
        sorted.sort_by_key(|p| (p.ns_tgid != 1, p.tgid));
        for p in sorted {
            if !state.procs.contains_key(&p.tgid) {
                state.add_proc(p.tgid, p.ns_tgid, 1, p.comm.clone());
            }
        }
    }

    /// The container's cgroup was removed: nothing more will happen in it.
    pub fn cgroup_removed(&mut self, cgroup_id: u64) {
        if let Some(c) = self.containers.get_mut(&cgroup_id) {
            c.gone = true;
        }
        self.finished.retain(|id| *id != cgroup_id);
    }

    pub fn handle(&mut self, info: &Arc<ContainerInfo>, ev: &KernelEvent) {
        let id = info.cgroup_id;
        if self.finished.contains(&id) {
            return;
        }
        if !self.containers.contains_key(&id) {
            let state = self.new_state(info.clone());
            self.containers.insert(id, state);
        }
        let clock = self.clock;
        let metrics = self.metrics.clone();
        let Some(c) = self.containers.get_mut(&id) else {
            return;
        };
        c.last_event_ns = c.last_event_ns.max(ev.header().ktime_ns);
        match ev {
            KernelEvent::Exec(e) => on_exec(c, e, &clock),
            KernelEvent::Signal(s) => on_signal(c, s, &metrics, &clock),
            KernelEvent::Deliver(d) => on_deliver(c, d, &clock),
            KernelEvent::Exit(e) => on_exit(c, e, &clock),
        }
        self.dirty = true;
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
            let (labels, name) = self.labels_for(&info);
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
        let others_pending = self
            .containers
            .values()
            .any(|o| o.terminating_since.is_some() && record_key(&o.info) == key);
        self.records.try_complete(
            key,
            others_pending,
            self.pods.get(key),
            &self.metrics,
            &self.clock,
        );
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
                quiet && (c.facts.pid1_exit.is_some() || c.gone)
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
            self.finished.push_back(id);
            if self.finished.len() > 4096 {
                self.finished.pop_front();
            }
            c.check_orphans();
            let key = record_key(&c.info).to_string();
            self.records
                .finalize(c, self.pods.get(&key), &self.metrics, &self.clock);
            self.try_complete(&key);
            self.dirty = true;
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

fn fact(s: &agent_ebpf::SignalGenerateEvent) -> SignalFact {
    SignalFact {
        at_ns: s.header.ktime_ns,
        sender_comm: comm_str(&s.sender_comm),
        sender_tgid: s.sender_tgid,
    }
}

fn result_name(result: u32) -> &'static str {
    match result {
        sig_result::DELIVERED => "delivered",
        sig_result::IGNORED => "ignored",
        sig_result::ALREADY_PENDING => "already_pending",
        sig_result::OVERFLOW_FAIL => "overflow",
        _ => "lose_info",
    }
}

fn on_signal(
    c: &mut ContainerState,
    s: &agent_ebpf::SignalGenerateEvent,
    metrics: &Metrics,
    clock: &Clock,
) {
    let h = &s.header;
    let labels = &c.labels;
    c.signal_counters
        .entry((s.sig, s.result))
        .or_insert_with(|| {
            metrics
                .signals
                .get_or_create(&SignalLabels {
                    namespace: labels.namespace.clone(),
                    workload: labels.workload.clone(),
                    container: labels.container.clone(),
                    signal: signal_name(s.sig),
                    result: result_name(s.result),
                })
                .clone()
        })
        .inc();
    if !c.procs.contains_key(&h.tgid) {
        c.add_proc(h.tgid, h.ns_tgid, h.ns_level, comm_str(&h.comm));
    }
    let to_pid1 = c.is_pid1(h.tgid);
    if to_pid1 {
        refresh_pid1_comm(c, &h.comm);
    }
    let external = s.sender_cgroup_id != c.info.cgroup_id;
    let pid1_alive = c.facts.pid1_exit.is_none();
    match s.sig {
        SIGTERM if to_pid1 && external && c.facts.first_sigterm.is_none() => {
            c.facts.first_sigterm = Some(fact(s));
            c.terminating_since.get_or_insert(h.ktime_ns);
            let pid1 = c.pid1;
            for (tgid, p) in c.procs.iter_mut().filter(|(tgid, _)| Some(**tgid) != pid1) {
                p.alive_at_sigterm = true;
                // Programs rename themselves after exec (busybox applets exec
                // /proc/self/exe): the name now is the one people know.
                if let Ok(now) = std::fs::read_to_string(format!("/proc/{tgid}/comm")) {
                    p.comm = now.trim_end().to_string();
                }
            }
        }
        SIGTERM if !to_pid1 && c.recording() && pid1_alive => {
            if let Some(p) = c.procs.get_mut(&h.tgid) {
                p.got_sigterm = true;
            }
        }
        // The kernel kills the rest of a PID namespace from its dying init: that is
        // teardown, not a kill. Any other kernel SIGKILL is the OOM killer's.
        SIGKILL
            if s.code == si_code::SI_KERNEL
                && !c.is_pid1(s.sender_tgid)
                && c.facts.kernel_sigkill.is_none() =>
        {
            c.facts.kernel_sigkill = Some(fact(s));
            c.terminating_since.get_or_insert(h.ktime_ns);
        }
        SIGKILL if s.code == si_code::SI_KERNEL => {}
        SIGKILL if to_pid1 && external && c.facts.external_sigkill.is_none() => {
            c.facts.external_sigkill = Some(fact(s));
            c.terminating_since.get_or_insert(h.ktime_ns);
        }
        _ => {}
    }
    if s.sig == SIGTERM && to_pid1 && s.result == sig_result::IGNORED {
        c.facts.sigterm_ignored_by_pid1 = true;
        metrics.sigterm_ignored.get_or_create(&c.labels).inc();
    }
    if c.recording() {
        let target = comm_str(&h.comm);
        let role = if to_pid1 {
            "PID 1".to_string()
        } else {
            format!("pid {}", h.ns_tgid)
        };
        let teardown = s.sig == SIGKILL && s.code == si_code::SI_KERNEL && c.is_pid1(s.sender_tgid);
        let sender = if teardown {
            "the kernel (PID 1 exited, so its namespace is torn down)".to_string()
        } else if s.code == si_code::SI_KERNEL {
            format!(
                "the kernel (in the context of {})",
                comm_str(&s.sender_comm)
            )
        } else {
            let side = if external {
                "outside the container"
            } else {
                "inside the container"
            };
            format!(
                "{} (host pid {}, {side})",
                comm_str(&s.sender_comm),
                s.sender_tgid
            )
        };
        let detail = format!(
            "{} from {sender} to {target} ({role}): {}",
            signal_name(s.sig),
            result_name(s.result)
        );
        let what = match s.sig {
            SIGTERM => "sigterm",
            SIGKILL => "sigkill",
            _ => "signal",
        };
        c.note(h.ktime_ns, what, detail, clock);
    }
}

fn on_exec(c: &mut ContainerState, e: &agent_ebpf::ExecEvent, clock: &Clock) {
    let h = &e.header;
    let mut comm = comm_str(&h.comm);
    if c.recording() || h.ns_tgid == 1 {
        // Only while terminating, or for PID 1 (not a hot path): a program that renames
        // itself after exec (busybox applets exec /proc/self/exe) is shown by its name.
        if let Ok(now) = std::fs::read_to_string(format!("/proc/{}/comm", h.tgid)) {
            comm = now.trim_end().to_string();
        }
    }
    c.add_proc(h.tgid, h.ns_tgid, h.ns_level, comm.clone());
    if c.recording() || c.is_pid1(h.tgid) {
        let role = if c.is_pid1(h.tgid) {
            "PID 1"
        } else {
            "process"
        };
        let detail = format!("{role} exec'd {comm} (pid {} in container)", h.ns_tgid);
        c.note(h.ktime_ns, "exec", detail, clock);
    }
}

fn on_deliver(c: &mut ContainerState, d: &agent_ebpf::SignalDeliverEvent, clock: &Clock) {
    let h = &d.header;
    if c.is_pid1(h.tgid) {
        refresh_pid1_comm(c, &h.comm);
    }
    if c.recording() && (d.sig == SIGTERM || d.sig == SIGKILL || c.is_pid1(h.tgid)) {
        let how = match d.sa_handler {
            _ if d.sig == SIGKILL => "cannot be caught: the process dies",
            handler::SIG_DFL => "default action",
            handler::SIG_IGN => "ignored (SIG_IGN)",
            _ => "handled by the process's own handler",
        };
        let detail = format!(
            "{} delivered to {} (pid {} in container): {how}",
            signal_name(d.sig),
            comm_str(&h.comm),
            h.ns_tgid
        );
        c.note(h.ktime_ns, "signal_delivered", detail, clock);
    }
}

/// PID 1's name as of its latest event (programs may rename themselves after exec).
fn refresh_pid1_comm(c: &mut ContainerState, comm: &[u8]) {
    let now = comm_str(comm);
    if c.facts.pid1_comm.as_deref() != Some(now.as_str()) {
        c.facts.pid1_comm = Some(now);
    }
}

fn on_exit(c: &mut ContainerState, e: &agent_ebpf::ExitEvent, clock: &Clock) {
    let h = &e.header;
    let status = ExitStatus::from_exit_code(e.exit_code);
    let comm = comm_str(&h.comm);
    if let Some(p) = c.procs.remove(&h.tgid) {
        if p.alive_at_sigterm && !p.got_sigterm && status.signal() == Some(SIGKILL as u8) {
            c.facts.killed_unwarned.push(comm.clone());
        }
    }
    if c.is_pid1(h.tgid) {
        refresh_pid1_comm(c, &h.comm);
    }
    let how = match status {
        ExitStatus::Exited(code) => format!("exited with code {code}"),
        ExitStatus::Signaled { signal, core } => format!(
            "killed by {}{}",
            signal_name(u32::from(signal)),
            if core { " (core dumped)" } else { "" }
        ),
    };
    if c.is_pid1(h.tgid) {
        c.facts.pid1_exit = Some(status);
        c.facts.pid1_exit_ns = Some(h.ktime_ns);
        c.terminating_since.get_or_insert(h.ktime_ns);
        c.last_exit_ns = Some(h.ktime_ns);
        c.note(
            h.ktime_ns,
            "container_exit",
            format!("PID 1 {comm} {how}"),
            clock,
        );
    } else if c.recording() {
        c.last_exit_ns = Some(h.ktime_ns);
        let detail = format!("{comm} (pid {} in container) {how}", h.ns_tgid);
        c.note(h.ktime_ns, "exit", detail, clock);
    }
}
