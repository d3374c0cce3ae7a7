//! One container's termination as it happens: its processes, PID 1, the signals sent to
//! them and what became of those, exits, and the timeline, updated event by event. The
//! facts gathered here are what `classify` judges.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use agent_ebpf::{handler, si_code, sig_result};
use prometheus_client::metrics::counter::Counter;

use super::{
    classify::{Code, ContainerFacts, Diagnosis, SignalFact, SIGKILL, SIGTERM},
    model::{signal_name, TimelineEntry},
};
use crate::{
    attribution::ContainerInfo,
    clock::Clock,
    export::{metrics::SignalLabels, ContainerLabels, Metrics},
    kernel::{decode::comm_str, ExitStatus},
};

/// Timeline entries kept per container; a signal storm must not grow memory.
const MAX_TIMELINE: usize = 200;
/// Processes remembered per container (a fork storm must not grow memory either).
const MAX_PROCS: usize = 4096;

#[derive(Debug)]
pub(super) struct Proc {
    comm: String,
    /// Alive when SIGTERM reached PID 1.
    alive_at_sigterm: bool,
    /// Received a SIGTERM during the termination.
    got_sigterm: bool,
}

pub(crate) struct ContainerState {
    pub(super) info: Arc<ContainerInfo>,
    pub(super) labels: ContainerLabels,
    pub(super) pid1: Option<u32>,
    pub(super) procs: HashMap<u32, Proc>,
    pub(super) facts: ContainerFacts,
    pub(super) terminating_since: Option<u64>,
    pub(super) timeline: Vec<TimelineEntry>,
    pub(super) timeline_dropped: u64,
    pub(super) last_exit_ns: Option<u64>,
    pub(super) last_event_ns: u64,
    pub(super) gone: bool,
    pub(super) signal_counters: HashMap<(u32, u32), Counter>,
    /// Processes whose exit was recorded lately (to drop duplicate exit records).
    recent_exits: VecDeque<u32>,
    /// PID-namespace depth of PID 1 (0: the container shares the host's).
    pid1_ns_level: Option<u32>,
    /// Container name (Kubernetes mode).
    pub(super) name: Option<String>,
    /// ORPHANED_PROCESSES findings, made when the container is finalized.
    pub(super) orphans: Vec<Diagnosis>,
}

impl ContainerState {
    pub(super) fn new(
        info: Arc<ContainerInfo>,
        labels: ContainerLabels,
        name: Option<String>,
    ) -> Self {
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
            recent_exits: VecDeque::new(),
            pid1_ns_level: None,
        }
    }

    pub(super) fn add_proc(&mut self, tgid: u32, ns_tgid: u32, ns_level: u32, comm: String) {
        // PID 1 of its own namespace is the container's init; a container sharing the
        // host PID namespace has none, and its first process seen stands in for it.
        if self.pid1.is_none() && (ns_tgid == 1 || ns_level == 0) {
            self.pid1 = Some(tgid);
            self.pid1_ns_level = Some(ns_level);
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

    /// Whether processes other than PID 1 are still believed alive.
    pub(super) fn others_alive(&self) -> bool {
        self.procs.keys().any(|t| Some(*t) != self.pid1)
    }

    /// Host pids of the processes believed alive.
    pub(super) fn live_tgids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
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
    pub(super) fn check_orphans(&mut self) {
        // In its own PID namespace nothing outlives PID 1: the kernel kills the rest.
        if self.facts.pid1_exit.is_none() || self.pid1_ns_level != Some(0) {
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

pub(super) fn on_signal(
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
    // The kernel kills the rest of a PID namespace from its init once that has exited
    // (its exit event comes first): teardown, not a kill.
    let teardown = s.sig == SIGKILL
        && s.code == si_code::SI_KERNEL
        && !to_pid1
        && c.is_pid1(s.sender_tgid)
        && !pid1_alive;
    let kernel_kill = s.sig == SIGKILL && s.code == si_code::SI_KERNEL && !teardown;
    match s.sig {
        SIGTERM if to_pid1 && external && c.facts.first_sigterm.is_none() => {
            c.facts.first_sigterm = Some(fact(s));
            c.terminating_since.get_or_insert(h.ktime_ns);
            let pid1 = c.pid1;
            for (tgid, p) in c.procs.iter_mut().filter(|(tgid, _)| Some(**tgid) != pid1) {
                p.alive_at_sigterm = true;
                // Programs rename themselves after exec (busybox applets exec
                // /proc/self/exe): the name now is the one people know.
                if let Some(now) = live_comm(*tgid) {
                    p.comm = now;
                }
            }
        }
        SIGTERM if !to_pid1 && c.recording() && pid1_alive => {
            if let Some(p) = c.procs.get_mut(&h.tgid) {
                p.got_sigterm = true;
            }
        }
        // A kernel SIGKILL to PID 1 that is not teardown is the OOM killer's (it runs in
        // whatever task was allocating, often PID 1 itself). One to another process
        // only ends that process: noted, but the container goes on.
        SIGKILL if kernel_kill && to_pid1 && c.facts.kernel_sigkill.is_none() => {
            c.facts.kernel_sigkill = Some(fact(s));
            c.terminating_since.get_or_insert(h.ktime_ns);
        }
        SIGKILL if kernel_kill => {}
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
        let sender = if teardown {
            "the kernel (PID 1 exited, so its namespace is torn down)".to_string()
        } else if kernel_kill {
            format!(
                "the kernel's OOM killer (in the context of {})",
                comm_str(&s.sender_comm)
            )
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

pub(super) fn on_exec(c: &mut ContainerState, e: &agent_ebpf::ExecEvent, clock: &Clock) {
    let h = &e.header;
    let mut comm = comm_str(&h.comm);
    if c.recording() || h.ns_tgid == 1 {
        // Only while terminating, or for PID 1 (not a hot path): a program that renames
        // itself after exec (busybox applets exec /proc/self/exe) is shown by its name.
        if let Some(now) = live_comm(h.tgid) {
            comm = now;
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

pub(super) fn on_deliver(
    c: &mut ContainerState,
    d: &agent_ebpf::SignalDeliverEvent,
    clock: &Clock,
) {
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

/// The name a live process goes by now (programs may rename themselves after exec, as
/// busybox applets that exec /proc/self/exe do). A syscall: never on the hot path.
fn live_comm(tgid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

/// PID 1's name as of its latest event (programs may rename themselves after exec).
fn refresh_pid1_comm(c: &mut ContainerState, comm: &[u8]) {
    let now = comm_str(comm);
    if c.facts.pid1_comm.as_deref() != Some(now.as_str()) {
        c.facts.pid1_comm = Some(now);
    }
}

pub(super) fn on_exit(c: &mut ContainerState, e: &agent_ebpf::ExitEvent, clock: &Clock) {
    let h = &e.header;
    let status = ExitStatus::from_exit_code(e.exit_code);
    let removed = c.procs.remove(&h.tgid);
    let is_pid1 = c.is_pid1(h.tgid);
    // Threads of a process SIGKILLed together can each pass the "last one" check in the
    // kernel: one exit per process is kept.
    if (is_pid1 && c.facts.pid1_exit.is_some())
        || (removed.is_none() && c.recent_exits.contains(&h.tgid))
    {
        return;
    }
    if c.recent_exits.len() >= 64 {
        c.recent_exits.pop_front();
    }
    c.recent_exits.push_back(h.tgid);
    if !is_pid1 && !c.recording() {
        // The common case on a busy container: nothing to write down.
        return;
    }
    let comm = comm_str(&h.comm);
    if let Some(p) = removed {
        if p.alive_at_sigterm && !p.got_sigterm && status.signal() == Some(SIGKILL as u8) {
            c.facts.killed_unwarned.push(comm.clone());
        }
    }
    if is_pid1 {
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
