//! How a container ended and what went wrong, as pure functions of the facts the tracker
//! gathered. Nothing here reads state or clocks, so every rule is unit-tested directly.

use serde::Serialize;

use crate::{
    kernel::ExitStatus,
    report::{plural, signal_name},
};

pub const SIGKILL: u32 = 9;
pub const SIGTERM: u32 = 15;

/// How a container's PID 1 ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exited after SIGTERM, before any SIGKILL.
    Graceful,
    /// SIGKILLed from outside the container after SIGTERM (the grace period ran out).
    ForcedKill,
    /// SIGKILLed from outside with no SIGTERM first.
    KilledWithoutSigterm,
    /// Exited with no termination signal from outside.
    SelfExit,
    /// Died of a signal other than SIGTERM/SIGKILL (SIGSEGV, SIGABRT, ...).
    Crashed,
    /// SIGKILLed by the kernel's OOM killer.
    OomKilled,
    /// Not enough was seen (PID 1's exit, or why it died).
    Unknown,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Self::Graceful,
        Self::ForcedKill,
        Self::KilledWithoutSigterm,
        Self::SelfExit,
        Self::Crashed,
        Self::OomKilled,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Graceful => "graceful",
            Self::ForcedKill => "forced_kill",
            Self::KilledWithoutSigterm => "killed_without_sigterm",
            Self::SelfExit => "self_exit",
            Self::Crashed => "crashed",
            Self::OomKilled => "oom_killed",
            Self::Unknown => "unknown",
        }
    }
}

/// A signal as the classifier needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalFact {
    pub at_ns: u64,
    pub sig: u32,
    pub sender_comm: String,
    pub sender_tgid: u32,
    /// The kernel dropped it: the target had no handler (and, as a namespace's init,
    /// ignores what it does not handle).
    pub ignored: bool,
}

impl SignalFact {
    pub fn name(&self) -> String {
        signal_name(self.sig)
    }
}

/// A program that entered the container from outside (an exec preStop hook or probe,
/// `kubectl exec`), with everything it started: its processes never count against PID 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecSession {
    /// Host pid of the program that entered.
    pub root_tgid: u32,
    pub comm: String,
    pub started_ns: u64,
    pub ended_ns: Option<u64>,
    /// How the program that entered ended.
    pub exit: Option<ExitStatus>,
}

/// Exec sessions remembered per container (exec probes start one every few seconds).
pub const MAX_EXEC_SESSIONS: usize = 8;

/// Everything the kernel showed about one container's end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFacts {
    pub pid1_comm: Option<String>,
    pub pid1_exit: Option<ExitStatus>,
    pub pid1_exit_ns: Option<u64>,
    /// The first signal from outside the container that asked PID 1 to stop: SIGTERM, or
    /// the container's stop signal (the pod spec's `lifecycle.stopSignal`, or the
    /// image's STOPSIGNAL, seen as the last other signal before the end; see
    /// `stop_candidate`).
    pub stop_signal: Option<SignalFact>,
    /// The latest signal other than SIGTERM and SIGKILL sent to PID 1 from outside while
    /// no stop signal is known. It becomes the stop signal if the end (PID 1's exit, or a
    /// SIGKILL from outside) follows within the grace a runtime could have given;
    /// otherwise it was something else (a reload, a log rotation).
    pub stop_candidate: Option<SignalFact>,
    /// The stop signal (or a later one of the same number) reached PID 1 and the kernel
    /// reported it ignored.
    pub stop_ignored_by_pid1: bool,
    /// First SIGKILL from outside the container to PID 1 (runtime, kubelet, a person).
    pub external_sigkill: Option<SignalFact>,
    /// A SIGKILL raised by the kernel itself (SI_KERNEL) that was not the PID-namespace
    /// teardown following PID 1's death: the OOM killer.
    pub kernel_sigkill: Option<SignalFact>,
    /// The termination may have begun before the agent was watching (the pod was deleted
    /// before the agent started; or, standalone, the container existed before the agent
    /// and ended within the longest grace of its start): the absence of an early stop
    /// signal proves nothing.
    pub partial: bool,
    /// Processes (by name) that were alive when the stop signal reached PID 1, never
    /// received a signal themselves, and were then SIGKILLed (by the runtime or by the
    /// kernel when PID 1 died): they had no chance to shut down.
    pub killed_unwarned: Vec<String>,
    /// The latest exec sessions, oldest first (at most [`MAX_EXEC_SESSIONS`]).
    pub exec_sessions: Vec<ExecSession>,
}

impl KernelFacts {
    pub fn exec_session_started(&mut self, s: ExecSession) {
        if self.exec_sessions.len() >= MAX_EXEC_SESSIONS {
            self.exec_sessions.remove(0);
        }
        self.exec_sessions.push(s);
    }

    /// The first session that started in `[from, to]` (boot clock).
    pub fn exec_session_between(&self, from: u64, to: u64) -> Option<&ExecSession> {
        self.exec_sessions
            .iter()
            .find(|s| (from..=to).contains(&s.started_ns))
    }

    /// Makes the stop candidate the stop signal if the container's end, at `end_ns`, came
    /// within `window_ns` of it. Returns the promoted signal.
    pub fn promote_stop_candidate(&mut self, end_ns: u64, window_ns: u64) -> Option<&SignalFact> {
        if self.stop_signal.is_some() {
            return None;
        }
        let c = self.stop_candidate.take()?;
        if end_ns.saturating_sub(c.at_ns) > window_ns || c.at_ns > end_ns {
            return None;
        }
        self.stop_ignored_by_pid1 |= c.ignored;
        self.stop_signal = Some(c);
        self.stop_signal.as_ref()
    }

    pub fn sigterm_to_exit_ns(&self) -> Option<u64> {
        let term = self.stop_signal.as_ref()?.at_ns;
        Some(self.pid1_exit_ns?.saturating_sub(term))
    }
}

pub fn outcome(f: &KernelFacts) -> Outcome {
    let Some(exit) = f.pid1_exit else {
        return Outcome::Unknown;
    };
    match exit.signal().map(u32::from) {
        Some(SIGKILL) => {
            if f.kernel_sigkill.is_some() {
                Outcome::OomKilled
            } else if let Some(kill) = &f.external_sigkill {
                match &f.stop_signal {
                    Some(term) if term.at_ns <= kill.at_ns => Outcome::ForcedKill,
                    _ if f.partial => Outcome::Unknown,
                    _ => Outcome::KilledWithoutSigterm,
                }
            } else {
                Outcome::Unknown
            }
        }
        _ if f.stop_signal.is_some() => Outcome::Graceful,
        _ if f.partial => Outcome::Unknown,
        Some(_) => Outcome::Crashed,
        None => Outcome::SelfExit,
    }
}

/// Diagnosis codes, stable: dashboards and people grep for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    SigtermIgnored,
    ShellDidNotForwardSigterm,
    ForcedKill,
    OomKilled,
    PrestopExceededGrace,
    EndpointRemovedAfterSigterm,
    StuckTerminating,
    OrphanedProcesses,
    LivenessKilled,
    CrashLoop,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SigtermIgnored => "SIGTERM_IGNORED",
            Self::ShellDidNotForwardSigterm => "SHELL_DID_NOT_FORWARD_SIGTERM",
            Self::ForcedKill => "FORCED_KILL",
            Self::OomKilled => "OOM_KILLED",
            Self::PrestopExceededGrace => "PRESTOP_EXCEEDED_GRACE",
            Self::EndpointRemovedAfterSigterm => "ENDPOINT_REMOVED_AFTER_SIGTERM",
            Self::StuckTerminating => "STUCK_TERMINATING",
            Self::OrphanedProcesses => "ORPHANED_PROCESSES",
            Self::LivenessKilled => "LIVENESS_KILLED",
            Self::CrashLoop => "CRASH_LOOP",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    pub code: Code,
    pub message: String,
}

const SHELLS: [&str; 8] = ["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox"];

pub fn is_shell(comm: &str) -> bool {
    SHELLS.contains(&comm)
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

pub fn diagnoses(f: &KernelFacts) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let comm = f.pid1_comm.as_deref().unwrap_or("?");
    let shell = is_shell(comm);
    let stop = f
        .stop_signal
        .as_ref()
        .map_or_else(|| "SIGTERM".to_string(), SignalFact::name);
    // "SIGTERM", or "SIGQUIT (its stop signal)" when the container asked for another.
    let stop_said = if stop == "SIGTERM" {
        stop.clone()
    } else {
        format!("{stop} (its stop signal)")
    };
    if shell && f.stop_signal.is_some() && !f.killed_unwarned.is_empty() {
        out.push(Diagnosis {
            code: Code::ShellDidNotForwardSigterm,
            message: format!(
                "PID 1 is /bin/{comm} and did not forward {stop_said} to {} ({}): use exec form (`exec app`, or a JSON-array ENTRYPOINT/command) or an init such as tini that forwards signals",
                plural(f.killed_unwarned.len() as u64, "child process", "child processes"),
                f.killed_unwarned.join(", ")
            ),
        });
    }
    if f.stop_ignored_by_pid1 {
        let then = match (&f.external_sigkill, &f.stop_signal) {
            (Some(k), Some(t)) => format!(
                "; it ran on until SIGKILL from {} {} later",
                k.sender_comm,
                secs(k.at_ns.saturating_sub(t.at_ns))
            ),
            _ => String::new(),
        };
        let advice = if shell {
            format!(
                "trap {} in the script and stop the app, or exec the app so it is PID 1",
                stop.trim_start_matches("SIG")
            )
        } else {
            format!("install a {stop} handler that shuts down cleanly, or run under an init such as tini")
        };
        out.push(Diagnosis {
            code: Code::SigtermIgnored,
            message: format!(
                "PID 1 ({comm}) has no {stop} handler; as its PID namespace's init it ignores signals it does not handle, so the kernel dropped {stop_said}{then}: {advice}"
            ),
        });
    }
    match outcome(f) {
        Outcome::ForcedKill => {
            let (kill, term) = (f.external_sigkill.as_ref(), f.stop_signal.as_ref());
            let after = match (kill, term) {
                (Some(k), Some(t)) => secs(k.at_ns.saturating_sub(t.at_ns)),
                _ => "?".into(),
            };
            let by = kill.map(|k| k.sender_comm.as_str()).unwrap_or("?");
            out.push(Diagnosis {
                code: Code::ForcedKill,
                message: format!(
                    "SIGKILLed by {by} {after} after {stop_said}: {comm} did not exit within the grace period; make it exit promptly on {stop} or raise terminationGracePeriodSeconds"
                ),
            });
        }
        Outcome::OomKilled => out.push(Diagnosis {
            code: Code::OomKilled,
            message: format!(
                "the kernel's OOM killer SIGKILLed {comm}: the container hit its memory limit; raise the limit or reduce memory use"
            ),
        }),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(at_ns: u64, sender: &str) -> Option<SignalFact> {
        Some(SignalFact {
            at_ns,
            sig: SIGTERM,
            sender_comm: sender.into(),
            sender_tgid: 100,
            ignored: false,
        })
    }

    fn quit(at_ns: u64, ignored: bool) -> SignalFact {
        SignalFact {
            at_ns,
            sig: 3,
            sender_comm: "runc".into(),
            sender_tgid: 100,
            ignored,
        }
    }

    #[test]
    fn a_stop_signal_plays_sigterms_role() {
        const S: u64 = 1_000_000_000;
        // docker stop on an image with STOPSIGNAL SIGQUIT that it ignores: QUIT, then
        // SIGKILL 10 s later.
        let mut f = killed(9, 11 * S);
        f.stop_candidate = Some(quit(S, true));
        f.external_sigkill = sig(11 * S, "runc");
        assert!(f.promote_stop_candidate(11 * S, 30 * S).is_some());
        assert_eq!(outcome(&f), Outcome::ForcedKill);
        let d = diagnoses(&f);
        let codes: Vec<_> = d.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes, ["SIGTERM_IGNORED", "FORCED_KILL"]);
        assert!(
            d[0].message
                .starts_with("PID 1 (app) has no SIGQUIT handler")
                && d[0].message.contains("dropped SIGQUIT (its stop signal)"),
            "{}",
            d[0].message
        );
        assert!(
            d[1].message
                .starts_with("SIGKILLed by runc 10.000s after SIGQUIT (its stop signal)"),
            "{}",
            d[1].message
        );
        // The same image, exiting on SIGQUIT within the grace: graceful.
        let mut g = exited(0, 2 * S);
        g.stop_candidate = Some(quit(S, false));
        assert!(g.promote_stop_candidate(2 * S, 30 * S).is_some());
        assert_eq!(outcome(&g), Outcome::Graceful);
        assert_eq!(g.sigterm_to_exit_ns(), Some(S));
        // A SIGHUP long before a crash was a reload, not a stop signal.
        let mut h = killed(11, 100 * S);
        h.stop_candidate = Some(quit(S, false));
        assert!(h.promote_stop_candidate(100 * S, 30 * S).is_none());
        assert_eq!(outcome(&h), Outcome::Crashed);
        // A SIGTERM seen first stays the stop signal.
        let mut t = exited(0, 2 * S);
        t.stop_signal = sig(S / 2, "runc");
        t.stop_candidate = Some(quit(S, false));
        assert!(t.promote_stop_candidate(2 * S, 30 * S).is_none());
        assert_eq!(t.stop_signal.as_ref().map(|s| s.sig), Some(SIGTERM));
    }

    fn exited(code: u8, at: u64) -> KernelFacts {
        KernelFacts {
            pid1_comm: Some("app".into()),
            pid1_exit: Some(ExitStatus::Exited(code)),
            pid1_exit_ns: Some(at),
            ..Default::default()
        }
    }

    fn killed(signal: u8, at: u64) -> KernelFacts {
        KernelFacts {
            pid1_exit: Some(ExitStatus::Signaled {
                signal,
                core: false,
            }),
            ..exited(0, at)
        }
    }

    #[test]
    fn sigterm_then_exit_is_graceful() {
        let f = KernelFacts {
            stop_signal: sig(1_000, "runc"),
            ..exited(0, 1_250_000_000)
        };
        assert_eq!(outcome(&f), Outcome::Graceful);
        assert_eq!(f.sigterm_to_exit_ns(), Some(1_249_999_000));
        assert!(diagnoses(&f).is_empty());
    }

    #[test]
    fn ignored_sigterm_then_sigkill_is_a_forced_kill() {
        let f = KernelFacts {
            pid1_comm: Some("sh".into()),
            stop_signal: sig(1_000_000_000, "runc"),
            stop_ignored_by_pid1: true,
            external_sigkill: sig(3_000_000_000, "runc"),
            ..killed(9, 3_000_100_000)
        };
        assert_eq!(outcome(&f), Outcome::ForcedKill);
        let d = diagnoses(&f);
        let codes: Vec<_> = d.iter().map(|d| d.code.as_str()).collect();
        assert_eq!(codes, ["SIGTERM_IGNORED", "FORCED_KILL"]);
        assert!(
            d[0].message
                .contains("until SIGKILL from runc 2.000s later"),
            "{}",
            d[0].message
        );
        assert!(d[1]
            .message
            .starts_with("SIGKILLed by runc 2.000s after SIGTERM"));
    }

    #[test]
    fn shell_that_keeps_its_children_unaware_is_diagnosed() {
        let f = KernelFacts {
            pid1_comm: Some("sh".into()),
            stop_signal: sig(1, "runc"),
            stop_ignored_by_pid1: true,
            external_sigkill: sig(2, "runc"),
            killed_unwarned: vec!["sleep".into()],
            ..killed(9, 3)
        };
        let d = diagnoses(&f);
        assert_eq!(d[0].code, Code::ShellDidNotForwardSigterm);
        assert!(d[0].message.starts_with("PID 1 is /bin/sh and did not forward SIGTERM to 1 child process (sleep): use exec form"));
        // A shell whose children got SIGTERM, or ended on their own, is fine.
        let forwarded = KernelFacts {
            killed_unwarned: vec![],
            ..f.clone()
        };
        assert!(diagnoses(&forwarded)
            .iter()
            .all(|d| d.code != Code::ShellDidNotForwardSigterm));
        // A non-shell PID 1 with children is not a shell problem.
        let app = KernelFacts {
            pid1_comm: Some("java".into()),
            ..f
        };
        assert!(diagnoses(&app)
            .iter()
            .all(|d| d.code != Code::ShellDidNotForwardSigterm));
    }

    #[test]
    fn sigkill_without_sigterm_oom_and_crashes() {
        let f = KernelFacts {
            external_sigkill: sig(5, "runc"),
            ..killed(9, 6)
        };
        assert_eq!(outcome(&f), Outcome::KilledWithoutSigterm);
        let oom = KernelFacts {
            kernel_sigkill: sig(5, "app"),
            ..killed(9, 6)
        };
        assert_eq!(outcome(&oom), Outcome::OomKilled);
        assert_eq!(diagnoses(&oom)[0].code, Code::OomKilled);
        assert_eq!(outcome(&killed(11, 6)), Outcome::Crashed);
        assert_eq!(outcome(&exited(3, 6)), Outcome::SelfExit);
        assert_eq!(
            outcome(&killed(9, 6)),
            Outcome::Unknown,
            "SIGKILL from nowhere seen"
        );
        assert_eq!(outcome(&KernelFacts::default()), Outcome::Unknown);
    }

    #[test]
    fn what_happened_before_the_agent_started_is_not_invented() {
        let f = KernelFacts {
            external_sigkill: sig(5, "runc"),
            partial: true,
            ..killed(9, 6)
        };
        assert_eq!(
            outcome(&f),
            Outcome::Unknown,
            "the SIGTERM may have come before we watched"
        );
        let exited = KernelFacts {
            partial: true,
            ..exited(0, 6)
        };
        assert_eq!(outcome(&exited), Outcome::Unknown);
        let seen = KernelFacts {
            stop_signal: sig(4, "runc"),
            ..f
        };
        assert_eq!(
            outcome(&seen),
            Outcome::ForcedKill,
            "what was seen still counts"
        );
    }

    #[test]
    fn sigterm_after_the_kill_does_not_make_it_forced() {
        let f = KernelFacts {
            stop_signal: sig(9, "runc"),
            external_sigkill: sig(5, "runc"),
            ..killed(9, 10)
        };
        assert_eq!(outcome(&f), Outcome::KilledWithoutSigterm);
    }
}
