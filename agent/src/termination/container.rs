//! One container's termination as it happens: its processes, PID 1, the signals sent to
//! them and what became of those, exits, and the timeline, updated event by event. The
//! facts gathered here are what `classify` judges.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use agent_ebpf::{handler, si_code, sig_result};

use super::classify::{Code, Diagnosis, ExecSession, KernelFacts, SignalFact, SIGKILL, SIGTERM};
use crate::{
    attribution::CgroupContainer,
    clock::{secs, Clock},
    join::Placement,
    kernel::{decode::comm_str, ExitStatus},
    metrics::{Subject, TerminationMetrics},
    report::{signal_name, TimelineEntry},
};

/// What a container runtime's own init calls itself while it sets a container up, in the
/// container's cgroup but before the container's program: runc's stages (`runc:[0:PARENT]`,
/// `runc:[1:CHILD]`, `runc:[2:INIT]`), `exe` before runc renames itself, crun.
fn is_runtime_init(comm: &str) -> bool {
    comm.starts_with("runc") || comm == "exe" || comm == "crun"
}

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
    /// Host pid of the exec session it belongs to: it (or an ancestor) entered the
    /// container from outside.
    session: Option<u32>,
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
    /// The stop signal the pod spec names (`lifecycle.stopSignal`), if not SIGTERM.
    spec_stop_signal: Option<u32>,
    /// How soon after another signal the end must follow for that signal to be taken as
    /// the container's stop signal: the longest grace it could have had.
    stop_window_ns: u64,
    pub(super) pid1: Option<u32>,
    pub(super) procs: HashMap<u32, Proc>,
    pub(super) facts: KernelFacts,
    pub(super) terminating_since: Option<u64>,
    pub(super) timeline: Vec<TimelineEntry>,
    pub(super) timeline_dropped: u64,
    pub(super) last_exit_ns: Option<u64>,
    pub(super) last_event_ns: u64,
    pub(super) gone: bool,
    /// It was there when the agent started: its termination may have begun unseen.
    pub(super) existed_before_agent: bool,
    /// Processes whose exit was recorded lately (to drop duplicate exit records).
    recent_exits: VecDeque<u32>,
    /// PID-namespace depth of PID 1 (0: the container shares the host's).
    pid1_ns_level: Option<u32>,
    /// ORPHANED_PROCESSES findings, made when the container is finalized.
    pub(super) orphans: Vec<Diagnosis>,
}

impl ContainerTrack {
    /// `max_grace_ns`: the longest grace a runtime may give a container whose grace the
    /// agent does not know (standalone mode).
    pub(super) fn new(
        container: Arc<CgroupContainer>,
        placement: Placement,
        max_grace_ns: u64,
    ) -> Self {
        Self {
            container,
            subject: placement.subject,
            name: placement.name,
            sandbox: placement.sandbox,
            spec_stop_signal: placement.stop_signal,
            stop_window_ns: placement.stop_window_ns.unwrap_or(max_grace_ns),
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
            existed_before_agent: false,
            recent_exits: VecDeque::new(),
            pid1_ns_level: None,
        }
    }

    /// A process of the container. `ran_program`: it exec'd a program in the container,
    /// or was found running there; only such a process may stand in for PID 1.
    pub(super) fn add_proc(
        &mut self,
        tgid: u32,
        ns_tgid: u32,
        ns_level: u32,
        comm: String,
        ran_program: bool,
    ) {
        // PID 1 of its own namespace is the container's init. A container sharing the host
        // PID namespace has none: the first program run in it stands in, but never the
        // runtime's own init, which passes through a new container's cgroup first.
        let own_init = ns_tgid == 1 && ns_level > 0;
        let stand_in = ns_level == 0 && ran_program && !is_runtime_init(&comm);
        if own_init && self.pid1_ns_level == Some(0) && self.pid1 != Some(tgid) {
            // A stand-in was chosen before the real init showed itself: what it did is
            // not the container's end.
            self.reset_pid1();
        }
        if self.pid1.is_none() && (own_init || stand_in) {
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
                session: None,
            });
            p.comm = comm;
        }
    }

    fn reset_pid1(&mut self) {
        self.pid1 = None;
        self.pid1_ns_level = None;
        self.facts = KernelFacts::default();
        self.terminating_since = None;
        self.timeline.clear();
        self.timeline_dropped = 0;
        self.last_exit_ns = None;
    }

    /// Whether processes other than PID 1 are still believed alive.
    pub(super) fn others_alive(&self) -> bool {
        self.procs.keys().any(|t| Some(*t) != self.pid1)
    }

    /// Moves the container to where the join now places it (pod names can arrive after
    /// its first events). Its metric handles are rebuilt only when its labels change.
    pub(super) fn replace(&mut self, placement: Placement) {
        if !self.subject.same_as(&placement.subject) {
            // Entries written before the status named it (as the sandbox) follow it.
            let (before, after) = (
                self.subject.container().to_string(),
                placement.subject.container().to_string(),
            );
            for e in &mut self.timeline {
                if e.container.as_deref() == Some(before.as_str()) {
                    e.container = Some(after.clone());
                }
            }
            self.subject = placement.subject;
        }
        self.name = placement.name;
        self.sandbox = placement.sandbox;
        self.spec_stop_signal = placement.stop_signal;
        if let Some(window) = placement.stop_window_ns {
            self.stop_window_ns = window;
        }
    }

    /// The name entries and diagnoses use: the container's name, else its short id.
    pub(super) fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.subject.container().to_string())
    }

    /// Forgets processes other than PID 1 that no longer exist in `/proc`: a process in
    /// the container's cgroup but in the host's PID namespace whose exit the kernel filter
    /// let through as the host's, because it exited before the agent marked the cgroup
    /// (a container living for milliseconds). Called only while waiting for the rest of
    /// an ended container to go.
    pub(super) fn forget_vanished(&mut self, proc_root: &std::path::Path) {
        let pid1 = self.pid1;
        self.procs
            .retain(|tgid, _| Some(*tgid) == pid1 || proc_root.join(tgid.to_string()).exists());
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

    /// A container that was there before the agent started and ended, without a stop
    /// signal the agent saw, within the longest grace of the start: it may well have been
    /// asked to stop before the agent could see it, so what it lacks is unknown, not
    /// absent.
    pub(super) fn check_started_before(
        &mut self,
        agent_started_ns: u64,
        window_ns: u64,
        clock: &Clock,
    ) {
        if !self.existed_before_agent || self.facts.stop_signal.is_some() {
            return;
        }
        let end = self
            .facts
            .external_sigkill
            .as_ref()
            .map(|k| k.at_ns)
            .or(self.facts.pid1_exit_ns);
        if end.is_none_or(|e| e > agent_started_ns.saturating_add(window_ns)) {
            return;
        }
        self.facts.partial = true;
        self.note(
            agent_started_ns,
            "agent_started",
            format!(
                "the agent started {:.3}s before this container ended; the container already existed, so a stop signal sent before then was not seen and the outcome is unknown",
                end.unwrap_or(agent_started_ns).saturating_sub(agent_started_ns) as f64 / 1e9
            ),
            clock,
        );
        self.timeline.sort_by_key(|e| e.at_ns);
    }

    fn recording(&self) -> bool {
        self.terminating_since.is_some()
    }
}

fn fact(s: &agent_ebpf::SignalGenerateEvent) -> SignalFact {
    SignalFact {
        at_ns: s.header.ktime_ns,
        sig: s.sig,
        sender_comm: comm_str(&s.sender_comm),
        sender_tgid: s.sender_tgid,
        ignored: s.result == sig_result::IGNORED,
    }
}

/// Processes other than PID 1 alive when PID 1 is asked to stop: those that then die of
/// SIGKILL without a signal of their own were never warned.
/// A stop signal PID 1 ignored and then outlived by more than the grace a runtime gives
/// (a stray `docker kill -s TERM` to an init without a handler) was no termination: when
/// another stop comes at `now_ns`, the termination starts over from it, so its times and
/// diagnoses are not measured from the stray signal. The timeline keeps one entry for it.
fn forget_outlived_stop(c: &mut ContainerTrack, now_ns: u64, clock: &Clock) {
    let Some(stray) = c.facts.stop_signal.clone() else {
        return;
    };
    if !stray.ignored || now_ns.saturating_sub(stray.at_ns) <= c.stop_window_ns {
        return;
    }
    c.facts.stop_signal = None;
    c.facts.stop_candidate = None;
    c.facts.stop_ignored_by_pid1 = false;
    c.terminating_since = None;
    c.timeline.clear();
    c.timeline_dropped = 0;
    for p in c.procs.values_mut() {
        p.alive_at_sigterm = false;
        p.got_sigterm = false;
    }
    let detail = format!(
        "{} from {} (host pid {}) at {} was ignored by PID 1, which ran on for {:.1}s: not a termination; this one starts it",
        signal_name(stray.sig),
        stray.sender_comm,
        stray.sender_tgid,
        clock.rfc3339(stray.at_ns),
        now_ns.saturating_sub(stray.at_ns) as f64 / 1e9
    );
    c.note(now_ns, "stop_signal_outlived", detail, clock);
}

fn mark_alive_at_stop(c: &mut ContainerTrack) {
    let pid1 = c.pid1;
    for (tgid, p) in c.procs.iter_mut().filter(|(tgid, _)| Some(**tgid) != pid1) {
        p.alive_at_sigterm = true;
        // Programs rename themselves after exec (busybox applets exec /proc/self/exe):
        // the name now is the one people know.
        if let Some(now) = live_comm(*tgid) {
            p.comm = now;
        }
    }
}

/// The container ended at `end_ns` (PID 1 exited, or was SIGKILLed from outside): a
/// signal sent to PID 1 shortly before is what the runtime asked it to stop with.
fn promote_stop_candidate(
    c: &mut ContainerTrack,
    end_ns: u64,
    metrics: &TerminationMetrics,
    clock: &Clock,
) {
    let Some(stop) = c
        .facts
        .promote_stop_candidate(end_ns, c.stop_window_ns)
        .cloned()
    else {
        return;
    };
    if stop.ignored {
        metrics.sigterm_ignored(&c.subject);
    }
    let since = c
        .terminating_since
        .map_or(stop.at_ns, |t| t.min(stop.at_ns));
    c.terminating_since = Some(since);
    let target = c.facts.pid1_comm.clone().unwrap_or_else(|| "?".into());
    c.note(
        stop.at_ns,
        "stop_signal",
        format!(
            "{} from {} (host pid {}, outside the container) to {target} (PID 1): {}; taken as the container's stop signal, since the end followed {:.3}s later",
            stop.name(),
            stop.sender_comm,
            stop.sender_tgid,
            if stop.ignored { "ignored" } else { "delivered" },
            end_ns.saturating_sub(stop.at_ns) as f64 / 1e9
        ),
        clock,
    );
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
        c.add_proc(h.tgid, h.ns_tgid, h.ns_level, comm_str(&h.comm), false);
    }
    let to_pid1 = c.is_pid1(h.tgid);
    if to_pid1 {
        refresh_pid1_comm(c, &h.comm);
    }
    let external = s.sender_cgroup_id != c.container.cgroup_id;
    // A process that entered from outside (`kubectl exec … kill 1`, an exec hook) sends
    // from inside the container's cgroup, on an outsider's behalf.
    let from_session = !external
        && c.procs
            .get(&s.sender_tgid)
            .is_some_and(|p| p.session.is_some());
    let pid1_alive = c.facts.pid1_exit.is_none();
    // The kernel kills the rest of a PID namespace from its init once that has exited
    // (its exit event comes first): teardown, not a kill.
    let teardown = s.sig == SIGKILL
        && s.code == si_code::SI_KERNEL
        && !to_pid1
        && c.is_pid1(s.sender_tgid)
        && !pid1_alive;
    let kernel_kill = s.sig == SIGKILL && s.code == si_code::SI_KERNEL && !teardown;
    // SIGTERM, or the stop signal the pod spec names, asks PID 1 to stop.
    let is_stop = s.sig == SIGTERM || Some(s.sig) == c.spec_stop_signal;
    // Anyone but PID 1 itself asks it to stop: the runtime, an exec session, a watchdog
    // process of the container's own.
    let asks_stop = is_stop && to_pid1 && (external || !c.is_pid1(s.sender_tgid));
    if asks_stop && pid1_alive {
        forget_outlived_stop(c, h.ktime_ns, clock);
    }
    let warned = c.facts.stop_signal.is_some() || c.facts.stop_candidate.is_some();
    match s.sig {
        _ if asks_stop && c.facts.stop_signal.is_none() => {
            c.facts.stop_signal = Some(fact(s));
            c.facts.stop_candidate = None;
            if c.terminating_since.is_none() {
                note_recent_sessions(c, h.ktime_ns, c.stop_window_ns, clock);
            }
            c.terminating_since.get_or_insert(h.ktime_ns);
            mark_alive_at_stop(c);
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
            promote_stop_candidate(c, h.ktime_ns, metrics, clock);
            c.terminating_since.get_or_insert(h.ktime_ns);
        }
        SIGKILL => {}
        // Another signal to PID 1 from outside may be an image's STOPSIGNAL: whether it
        // was is known when (if) the end follows.
        _ if to_pid1 && external && c.facts.stop_signal.is_none() => {
            c.facts.stop_candidate = Some(fact(s));
            mark_alive_at_stop(c);
        }
        _ if !to_pid1 && warned && pid1_alive => {
            if let Some(p) = c.procs.get_mut(&h.tgid) {
                p.got_sigterm = true;
            }
        }
        _ => {}
    }
    if is_stop && to_pid1 && s.result == sig_result::IGNORED {
        c.facts.stop_ignored_by_pid1 = true;
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
            } else if from_session {
                "inside the container, in an exec session"
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
    c.add_proc(h.tgid, h.ns_tgid, h.ns_level, comm.clone(), true);
    // Started from outside (and not the container's init): an exec session begins. A
    // program a session's process exec'd belongs to that session.
    // runc's own init (`exe`) passes through on its way to the program it runs.
    let session = if e.entered != 0 && !c.is_pid1(h.tgid) && !is_runtime_init(&comm) {
        c.facts.exec_session_started(ExecSession {
            root_tgid: h.tgid,
            comm: comm.clone(),
            started_ns: h.ktime_ns,
            ended_ns: None,
            exit: None,
        });
        Some(h.tgid)
    } else {
        c.procs.get(&e.parent_tgid).and_then(|p| p.session)
    };
    if let Some(p) = c.procs.get_mut(&h.tgid) {
        p.session = session;
    }
    if c.recording() || c.is_pid1(h.tgid) {
        let role = if c.is_pid1(h.tgid) {
            "PID 1"
        } else {
            "process"
        };
        let (what, detail) = if session == Some(h.tgid) {
            (
                "exec_session_started",
                format!("{comm} entered the container from outside (an exec: a hook, a probe or kubectl exec; pid {} in container)", h.ns_tgid),
            )
        } else {
            let how = if session.is_some() {
                " in an exec session"
            } else {
                ""
            };
            (
                "exec",
                format!("{role} exec'd {comm}{how} (pid {} in container)", h.ns_tgid),
            )
        };
        c.note(h.ktime_ns, what, detail, clock);
    }
}

/// Exec sessions that started in the last `lookback_ns` before `at_ns` (an exec preStop
/// hook runs before the stop signal): onto the timeline when the termination begins.
fn note_recent_sessions(c: &mut ContainerTrack, at_ns: u64, lookback_ns: u64, clock: &Clock) {
    let from = at_ns.saturating_sub(lookback_ns);
    let recent: Vec<ExecSession> = c
        .facts
        .exec_sessions
        .iter()
        .filter(|s| s.started_ns >= from && s.started_ns <= at_ns)
        .cloned()
        .collect();
    for s in recent {
        c.note(
            s.started_ns,
            "exec_session_started",
            format!(
                "{} entered the container from outside (an exec: a hook, a probe or kubectl exec; host pid {})",
                s.comm, s.root_tgid
            ),
            clock,
        );
        if let (Some(end), Some(exit)) = (s.ended_ns, s.exit) {
            c.note(
                end,
                "exec_session_ended",
                format!(
                    "{} {} after {:.3}s",
                    s.comm,
                    exit_words(exit),
                    secs(end.saturating_sub(s.started_ns))
                ),
                clock,
            );
        }
    }
}

fn exit_words(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("exited with code {code}"),
        ExitStatus::Signaled { signal, core } => format!(
            "killed by {}{}",
            signal_name(u32::from(signal)),
            if core { " (core dumped)" } else { "" }
        ),
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

pub(super) fn on_exit(
    c: &mut ContainerTrack,
    e: &agent_ebpf::ExitEvent,
    metrics: &TerminationMetrics,
    clock: &Clock,
) {
    let h = &e.header;
    let status = ExitStatus::from_exit_code(e.exit_code);
    if c.pid1.is_none() && h.ns_tgid == 1 && h.ns_level > 0 {
        // Its init, known only by its exit (an exec record lost, or from before the agent).
        c.add_proc(h.tgid, h.ns_tgid, h.ns_level, comm_str(&h.comm), false);
    }
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
    if let Some(p) = &removed {
        // An exec session's processes are not PID 1's children: not its to warn.
        if p.alive_at_sigterm
            && !p.got_sigterm
            && p.session.is_none()
            && status.signal() == Some(SIGKILL as u8)
        {
            c.facts.killed_unwarned.push(comm.clone());
        }
    }
    let mut session_ended = false;
    if let Some(session) = c
        .facts
        .exec_sessions
        .iter_mut()
        .rev()
        .find(|s| s.root_tgid == h.tgid && s.ended_ns.is_none())
    {
        session_ended = true;
        session.ended_ns = Some(h.ktime_ns);
        session.exit = Some(status);
        let (comm, took) = (
            session.comm.clone(),
            h.ktime_ns.saturating_sub(session.started_ns),
        );
        if c.recording() {
            c.note(
                h.ktime_ns,
                "exec_session_ended",
                format!("{comm} {} after {:.3}s", exit_words(status), secs(took)),
                clock,
            );
        }
    }
    if is_pid1 {
        refresh_pid1_comm(c, &h.comm);
    }
    let how = exit_words(status);
    if c.is_pid1(h.tgid) {
        promote_stop_candidate(c, h.ktime_ns, metrics, clock);
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
        // A session's end is already on the timeline.
        if !session_ended {
            let detail = format!("{comm} (pid {} in container) {how}", h.ns_tgid);
            c.note(h.ktime_ns, "exit", detail, clock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::TaskEvent, metrics::Metrics};
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

    fn feed(events: &[TaskEvent]) -> (ContainerTrack, Seen) {
        let metrics = Metrics::new("test").termination;
        let clock = Clock::with_offset_ns(0);
        let mut c = ContainerTrack::new(
            container(),
            Placement {
                name: None,
                sandbox: false,
                subject: Subject::standalone("aaaaaaaaaaaa"),
                stop_signal: None,
                stop_window_ns: None,
            },
            30_000 * MS,
        );
        for ev in events {
            match ev {
                TaskEvent::Exec(e) => on_exec(&mut c, e, &clock),
                TaskEvent::Signal(s) => on_signal(&mut c, s, &metrics, &clock),
                TaskEvent::Deliver(d) => on_deliver(&mut c, d, &clock),
                TaskEvent::Exit(e) => on_exit(&mut c, e, &metrics, &clock),
            }
        }
        let ms = |ns: u64| ns / MS;
        let f = &c.facts;
        let seen = Seen {
            terminating_ms: c.terminating_since.map(ms),
            sigterm_ms: f.stop_signal.as_ref().map(|s| ms(s.at_ns)),
            ignored: f.stop_ignored_by_pid1,
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
    fn an_outlived_stop_leaves_one_entry_before_the_stop_that_counts() {
        let (c, _) = feed(&[
            exec(0, P1, 1, "app"),
            signal(10, P1, 1, "app", 15, RUNC, IGNORED),
            exec(20_000, P2, 2, "worker"),
            signal(100_010, P1, 1, "app", 15, RUNC, IGNORED),
        ]);
        let whats: Vec<&str> = c.timeline.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            whats,
            ["stop_signal_outlived", "sigterm"],
            "{:#?}",
            c.timeline
        );
        let said = &c.timeline[0].detail;
        assert!(
            said.starts_with("SIGTERM from runc (host pid 7) at ")
                && said.contains("ignored by PID 1, which ran on for 100.0s"),
            "{said}"
        );
    }

    #[test]
    fn container_state_rules() {
        let cases: Vec<(&str, Vec<TaskEvent>, Seen)> = vec![
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
                "runc's init passing through a new container's cgroup is not its PID 1",
                vec![
                    TaskEvent::Exec(agent_ebpf::ExecEvent {
                        header: agent_ebpf::EventHeader {
                            ns_level: 0,
                            ns_tgid: P2,
                            ..header(agent_ebpf::EventKind::Exec, 0, P2, P2, "exe")
                        },
                        parent_tgid: PARENT_OUTSIDE,
                        entered: 1,
                    }),
                    TaskEvent::Exit(agent_ebpf::ExitEvent {
                        header: agent_ebpf::EventHeader {
                            ns_level: 0,
                            ns_tgid: P2,
                            ..header(agent_ebpf::EventKind::Exit, 5, P2, P2, "runc:[0:PARENT]")
                        },
                        exit_code: 0,
                        _pad: 0,
                    }),
                    exec(6, P1, 1, "job"),
                    exit(50, P1, 1, "job", 3 << 8),
                ],
                Seen {
                    terminating_ms: Some(50),
                    pid1_exit_ms: Some(50),
                    ..Seen::default()
                },
            ),
            (
                "an image's STOPSIGNAL that PID 1 ignores, then SIGKILL: the stop signal",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 3, RUNC, IGNORED),
                    signal(10_010, P1, 1, "app", 9, RUNC, DELIVERED),
                    exit(10_011, P1, 1, "app", 9),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    ignored: true,
                    external_kill_ms: Some(10_010),
                    pid1_exit_ms: Some(10_011),
                    ..Seen::default()
                },
            ),
            (
                "SIGTERM from an exec session (kubectl exec … kill 1) starts the termination",
                vec![
                    exec(0, P1, 1, "app"),
                    exec_by(5, P3, 7, "kill", PARENT_OUTSIDE, true),
                    signal(10, P1, 1, "app", 15, (P3, CG, si_code::SI_USER), DELIVERED),
                    exit(11, P3, 7, "kill", 0),
                    exit(60, P1, 1, "app", 0),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    pid1_exit_ms: Some(60),
                    ..Seen::default()
                },
            ),
            (
                "SIGTERM to PID 1 from a process of the container's own starts it too",
                vec![
                    exec(0, P1, 1, "app"),
                    exec_by(1, P2, 2, "watchdog", P1, false),
                    signal(10, P1, 1, "app", 15, (P2, CG, si_code::SI_USER), DELIVERED),
                    exit(60, P1, 1, "app", 0),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    pid1_exit_ms: Some(60),
                    ..Seen::default()
                },
            ),
            (
                "a SIGTERM PID 1 ignored and outlived (30 s window), then a stop: timed from the stop",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 15, RUNC, IGNORED),
                    signal(100_000, P1, 1, "app", 15, RUNC, IGNORED),
                    signal(110_000, P1, 1, "app", 9, RUNC, DELIVERED),
                    exit(110_001, P1, 1, "app", 9),
                ],
                Seen {
                    terminating_ms: Some(100_000),
                    sigterm_ms: Some(100_000),
                    ignored: true,
                    external_kill_ms: Some(110_000),
                    pid1_exit_ms: Some(110_001),
                    ..Seen::default()
                },
            ),
            (
                "a second SIGTERM within the window is part of the same stop",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 15, RUNC, IGNORED),
                    signal(5_000, P1, 1, "app", 15, RUNC, IGNORED),
                    signal(6_000, P1, 1, "app", 9, RUNC, DELIVERED),
                    exit(6_001, P1, 1, "app", 9),
                ],
                Seen {
                    terminating_ms: Some(10),
                    sigterm_ms: Some(10),
                    ignored: true,
                    external_kill_ms: Some(6_000),
                    pid1_exit_ms: Some(6_001),
                    ..Seen::default()
                },
            ),
            (
                "PID 1 signalling itself is no request to stop",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 15, (P1, CG, si_code::SI_USER), DELIVERED),
                    exit(50_000, P1, 1, "app", 0),
                ],
                Seen {
                    terminating_ms: Some(50_000),
                    pid1_exit_ms: Some(50_000),
                    ..Seen::default()
                },
            ),
            (
                "a SIGHUP long before PID 1 exits was not a stop signal",
                vec![
                    exec(0, P1, 1, "app"),
                    signal(10, P1, 1, "app", 1, RUNC, DELIVERED),
                    exit(50_000, P1, 1, "app", 0),
                ],
                Seen {
                    terminating_ms: Some(50_000),
                    pid1_exit_ms: Some(50_000),
                    ..Seen::default()
                },
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
    fn processes_gone_from_proc_stop_holding_an_ended_container() {
        // A host-namespace process (P2, e.g. the `unshare` that made PID 1) whose exit
        // came before the cgroup was marked in the kernel: only /proc can tell it is gone.
        let (mut c, _) = feed(&[
            exec(0, P1, 1, "app"),
            exec(1, P2, 0, "unshare"),
            exec(2, P3, 0, "helper"),
            exit(300, P1, 1, "app", 3),
        ]);
        assert!(c.others_alive());
        let proc_root = std::env::temp_dir().join(format!("gw-proc-{}", std::process::id()));
        std::fs::create_dir_all(proc_root.join(P3.to_string())).expect("fake /proc");
        c.forget_vanished(&proc_root);
        let left = c.live_tgids();
        std::fs::remove_dir_all(&proc_root).expect("cleanup");
        assert!(
            left.contains(&P3),
            "a process still in /proc is kept: {left:?}"
        );
        assert!(
            !left.contains(&P2),
            "a vanished process is forgotten: {left:?}"
        );
        assert!(c.others_alive());
    }

    #[test]
    fn an_exec_hooks_processes_never_count_against_pid1() {
        // The preStop hook `sh -c "sleep 3"` enters from outside; its sleep is still
        // there when the app, which trapped SIGTERM, exits and the kernel kills the rest.
        let (c, seen) = feed(&[
            exec(0, P1, 1, "app"),
            exec_by(100, P2, 7, "sh", PARENT_OUTSIDE, true),
            exec_by(110, P3, 8, "sleep", P2, false),
            signal(2000, P1, 1, "app", 15, RUNC, DELIVERED),
            exit(2100, P1, 1, "app", 0),
            signal(2101, P3, 8, "sleep", 9, TEARDOWN, DELIVERED),
            exit(2102, P3, 8, "sleep", 9),
            signal(2101, P2, 7, "sh", 9, TEARDOWN, DELIVERED),
            exit(2103, P2, 7, "sh", 9),
        ]);
        assert!(seen.unwarned.is_empty(), "{seen:?}");
        let s = &c.facts.exec_sessions;
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((s[0].root_tgid, s[0].comm.as_str()), (P2, "sh"));
        assert_eq!(s[0].ended_ns, Some(2103 * MS));
        let whats: Vec<&str> = c.timeline.iter().map(|e| e.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "exec",
                "exec_session_started",
                "sigterm",
                "container_exit",
                "sigkill",
                "exit",
                "sigkill",
                "exec_session_ended"
            ],
            "the hook that began before SIGTERM is on the timeline"
        );
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
