//! One container's termination as it happens: its processes, PID 1, the signals sent to
//! them and what became of those, exits, and the timeline, updated event by event. The
//! facts gathered here are what `classify` judges.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use agent_ebpf::{handler, si_code, sig_result};

use super::classify::{Code, Diagnosis, KernelFacts, SignalFact, SIGKILL, SIGTERM};
use crate::{
    attribution::CgroupContainer,
    clock::Clock,
    join::Placement,
    kernel::{decode::comm_str, ExitStatus},
    metrics::{Subject, TerminationMetrics},
    report::{signal_name, TimelineEntry},
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

/// One container's live state while the tracker follows it: its processes, PID 1, the
/// facts gathered for classification and the kernel's timeline of its termination.
pub(super) struct ContainerTrack {
    pub(super) container: Arc<CgroupContainer>,
    /// Who its metrics are about.
    pub(super) subject: Subject,
    /// Container name (Kubernetes mode).
    pub(super) name: Option<String>,
    /// The pod's sandbox: its end is part of the pod's story, not an outcome.
    pub(super) sandbox: bool,
    pub(super) pid1: Option<u32>,
    pub(super) procs: HashMap<u32, Proc>,
    pub(super) facts: KernelFacts,
    pub(super) terminating_since: Option<u64>,
    pub(super) timeline: Vec<TimelineEntry>,
    pub(super) timeline_dropped: u64,
    pub(super) last_exit_ns: Option<u64>,
    pub(super) last_event_ns: u64,
    pub(super) gone: bool,
    /// Processes whose exit was recorded lately (to drop duplicate exit records).
    recent_exits: VecDeque<u32>,
    /// PID-namespace depth of PID 1 (0: the container shares the host's).
    pid1_ns_level: Option<u32>,
    /// ORPHANED_PROCESSES findings, made when the container is finalized.
    pub(super) orphans: Vec<Diagnosis>,
}

impl ContainerTrack {
    pub(super) fn new(container: Arc<CgroupContainer>, placement: Placement) -> Self {
        Self {
            container,
            subject: placement.subject,
            name: placement.name,
            sandbox: placement.sandbox,
            orphans: Vec::new(),
            pid1: None,
            procs: HashMap::new(),
            facts: KernelFacts::default(),
            terminating_since: None,
            timeline: Vec::new(),
            timeline_dropped: 0,
            last_exit_ns: None,
            last_event_ns: 0,
            gone: false,
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

    /// Moves the container to where the join now places it (pod names can arrive after
    /// its first events). Its metric handles are rebuilt only when its labels change.
    pub(super) fn replace(&mut self, placement: Placement) {
        if !self.subject.same_as(&placement.subject) {
            self.subject = placement.subject;
        }
        self.name = placement.name;
        self.sandbox = placement.sandbox;
    }

    /// The name entries and diagnoses use: the container's name, else its short id.
    pub(super) fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.subject.container().to_string())
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
            container: Some(self.subject.container().to_string()),
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
    c: &mut ContainerTrack,
    s: &agent_ebpf::SignalGenerateEvent,
    metrics: &TerminationMetrics,
    clock: &Clock,
) {
    let h = &s.header;
    metrics.signal(&mut c.subject, s.sig, result_name(s.result));
    if !c.procs.contains_key(&h.tgid) {
        c.add_proc(h.tgid, h.ns_tgid, h.ns_level, comm_str(&h.comm));
    }
    let to_pid1 = c.is_pid1(h.tgid);
    if to_pid1 {
        refresh_pid1_comm(c, &h.comm);
    }
    let external = s.sender_cgroup_id != c.container.cgroup_id;
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
        metrics.sigterm_ignored(&c.subject);
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

pub(super) fn on_exec(c: &mut ContainerTrack, e: &agent_ebpf::ExecEvent, clock: &Clock) {
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
    c: &mut ContainerTrack,
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
fn refresh_pid1_comm(c: &mut ContainerTrack, comm: &[u8]) {
    let now = comm_str(comm);
    if c.facts.pid1_comm.as_deref() != Some(now.as_str()) {
        c.facts.pid1_comm = Some(now);
    }
}

pub(super) fn on_exit(c: &mut ContainerTrack, e: &agent_ebpf::ExitEvent, clock: &Clock) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::KernelEvent, metrics::Metrics};
    use agent_ebpf::{si_code, sig_result::*};

    use super::super::testkit::*;

    /// What a sequence of events leaves in a container's facts (times in ms).
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        terminating_ms: Option<u64>,
        sigterm_ms: Option<u64>,
        ignored: bool,
        external_kill_ms: Option<u64>,
        kernel_kill_ms: Option<u64>,
        unwarned: Vec<String>,
        pid1_exit_ms: Option<u64>,
    }

    fn feed(events: &[KernelEvent]) -> (ContainerTrack, Seen) {
        let metrics = Metrics::new("test").termination;
        let clock = Clock::with_offset_ns(0);
        let mut c = ContainerTrack::new(
            container(),
            Placement {
                name: None,
                sandbox: false,
                subject: Subject::standalone("aaaaaaaaaaaa"),
            },
        );
        for ev in events {
            match ev {
                KernelEvent::Exec(e) => on_exec(&mut c, e, &clock),
                KernelEvent::Signal(s) => on_signal(&mut c, s, &metrics, &clock),
                KernelEvent::Deliver(d) => on_deliver(&mut c, d, &clock),
                KernelEvent::Exit(e) => on_exit(&mut c, e, &clock),
            }
        }
        let ms = |ns: u64| ns / MS;
        let f = &c.facts;
        let seen = Seen {
            terminating_ms: c.terminating_since.map(ms),
            sigterm_ms: f.first_sigterm.as_ref().map(|s| ms(s.at_ns)),
            ignored: f.sigterm_ignored_by_pid1,
            external_kill_ms: f.external_sigkill.as_ref().map(|s| ms(s.at_ns)),
            kernel_kill_ms: f.kernel_sigkill.as_ref().map(|s| ms(s.at_ns)),
            unwarned: f.killed_unwarned.clone(),
            pid1_exit_ms: f.pid1_exit_ns.map(ms),
        };
        (c, seen)
    }

    const SELF: (u32, u64, i32) = (P1, CG, si_code::SI_USER);
    const TEARDOWN: (u32, u64, i32) = (P1, CG, si_code::SI_KERNEL);
    const OOM: (u32, u64, i32) = (P2, CG, si_code::SI_KERNEL);

    #[test]
    fn container_state_rules() {
        let cases: Vec<(&str, Vec<KernelEvent>, Seen)> = vec![
            (
                "SIGTERM from outside to PID 1 starts the termination",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 15, RUNC, DELIVERED),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    ..Seen::default()
                },
            ),
            (
                "a SIGTERM PID 1 sends itself is not a termination",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 15, SELF, DELIVERED),
                ],
                Seen::default(),
            ),
            (
                "SIGTERM to a child alone is not a termination",
                vec![
                    exec(0, P1, 1, "sh"),
                    exec(1, P2, 6, "sleep"),
                    signal(10, P2, 6, "sleep", 15, RUNC, DELIVERED),
                ],
                Seen::default(),
            ),
            (
                "an ignored SIGTERM to PID 1 is noted; the first SIGTERM's time is kept",
                vec![
                    exec(0, P1, 1, "sh"),
                    signal(10, P1, 1, "sh", 15, RUNC, IGNORED),
                    signal(20, P1, 1, "sh", 15, RUNC, IGNORED),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    ignored: true,
                    ..Seen::default()
                },
            ),
            (
                "SIGKILL from outside after SIGTERM; a child never warned dies with PID 1",
                vec![
                    exec(0, P1, 1, "sh"),
                    exec(1, P2, 6, "sleep"),
                    signal(10, P1, 1, "sh", 15, RUNC, IGNORED),
                    signal(2010, P1, 1, "sh", 9, RUNC, DELIVERED),
                    exit(2011, P1, 1, "sh", 9),
                    signal(2012, P2, 6, "sleep", 9, TEARDOWN, DELIVERED),
                    exit(2013, P2, 6, "sleep", 9),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    ignored: true,
                    external_kill_ms: Some(2010),
                    unwarned: vec!["sleep".into()],
                    pid1_exit_ms: Some(2011),
                    ..Seen::default()
                },
            ),
            (
                "a child that got SIGTERM itself was warned",
                vec![
                    exec(0, P1, 1, "sh"),
                    exec(1, P2, 6, "sleep"),
                    signal(10, P1, 1, "sh", 15, RUNC, DELIVERED),
                    signal(11, P2, 6, "sleep", 15, SELF, DELIVERED),
                    exit(12, P2, 6, "sleep", 15),
                    exit(13, P1, 1, "sh", 0),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    pid1_exit_ms: Some(13),
                    ..Seen::default()
                },
            ),
            (
                "a kernel SIGKILL to PID 1 that is not teardown is the OOM killer's",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 9, OOM, DELIVERED),
                    exit(11, P1, 1, "app", 9),
                ],
                Seen {
                    terminating_ms: Some(10),
                    kernel_kill_ms: Some(10),
                    pid1_exit_ms: Some(11),
                    ..Seen::default()
                },
            ),
            (
                "an OOM kill of a child leaves the container running",
                vec![
                    exec(0, P1, 1, "app"),
                    exec(1, P2, 2, "worker"),
                    signal(10, P2, 2, "worker", 9, OOM, DELIVERED),
                    exit(11, P2, 2, "worker", 9),
                ],
                Seen::default(),
            ),
            (
                "PID 1 exiting by itself ends the container",
                vec![exec(0, P1, 1, "job"), exit(50, P1, 1, "job", 3 << 8)],
                Seen {
                    terminating_ms: Some(50),
                    pid1_exit_ms: Some(50),
                    ..Seen::default()
                },
            ),
            (
                "a SIGKILL with no SIGTERM before it",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 9, RUNC, DELIVERED),
                    exit(11, P1, 1, "app", 9),
                ],
                Seen {
                    terminating_ms: Some(10),
                    external_kill_ms: Some(10),
                    pid1_exit_ms: Some(11),
                    ..Seen::default()
                },
            ),
        ];
        for (name, events, want) in cases {
            assert_eq!(feed(&events).1, want, "{name}");
        }
    }

    #[test]
    fn the_timeline_shows_handlers_and_duplicate_exits_once() {
        let (c, _) = feed(&[
            exec(0, P1, 1, "app"),
            signal(10, P1, 1, "app", 15, RUNC, DELIVERED),
            deliver(11, P1, 1, "app", 15, 0x5555_0000),
            exit(20, P1, 1, "app", 0),
            exit(20, P1, 1, "app", 0),
        ]);
        let whats: Vec<&str> = c.timeline.iter().map(|e| e.what.as_str()).collect();
        // PID 1's exec is always noted; the duplicate exit is not.
        assert_eq!(
            whats,
            ["exec", "sigterm", "signal_delivered", "container_exit"]
        );
        assert!(
            c.timeline[2]
                .detail
                .ends_with("handled by the process's own handler"),
            "{}",
            c.timeline[2].detail
        );
        assert_eq!(c.timeline[0].container.as_deref(), Some("aaaaaaaaaaaa"));
    }

    #[test]
    fn a_signal_storm_does_not_grow_the_timeline() {
        let mut events = vec![
            exec(0, P1, 1, "app"),
            signal(1, P1, 1, "app", 15, RUNC, DELIVERED),
        ];
        events.extend((0..1000).map(|i| signal(2 + i, P1, 1, "app", 10, RUNC, DELIVERED)));
        let (c, _) = feed(&events);
        assert_eq!(c.timeline.len(), MAX_TIMELINE);
        // PID 1's exec, the SIGTERM and 1,000 SIGUSR1s.
        assert_eq!(c.timeline_dropped, 1002 - MAX_TIMELINE as u64);
    }
}
