//! kubelet's `killContainer` for one container, through CRI: the Killing Event, the
//! preStop hook (exec through `ExecSync`, or a sleep), the grace left after it (whole
//! seconds, at least 2), `StopContainer`, and the terminated status from
//! `ContainerStatus` written to the API server.

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{objects, ContainerDef, ContainerReport, Hook, Node, PodContainer, RunningPod};
use crate::apiserver::Resource;
use crate::runc::{state, Stamp};

/// kubelet never gives a container less than this after its preStop hook.
const MIN_GRACE_SECONDS: i64 = 2;
/// How often the emulator looks whether a container's PID 1 is still there.
const POLL: Duration = Duration::from_millis(2);
/// How long a container may take to exit after the runtime's SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(30);

/// What `StopContainer(id, grace)` did, on the emulator's clock. The runtime sends
/// SIGTERM as it handles the call, SIGKILL `grace` later if PID 1 still runs; the
/// emulator cannot see either signal, only when it asked and when PID 1 was gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// The timeout passed (kubelet's grace left after the preStop hook).
    pub grace: Duration,
    /// Just before `StopContainer` was sent.
    pub called: Stamp,
    /// When the emulator saw PID 1 gone (it looks every 2 ms).
    pub exited: Stamp,
    /// When `StopContainer` returned (the runtime has seen the exit).
    pub returned: Stamp,
    /// From `ContainerStatus`, as kubelet reports them.
    pub exit_code: i32,
    pub reason: String,
}

impl StopReport {
    /// PID 1 outlived the grace period: the runtime SIGKILLed it (exit code 137).
    pub fn kill_needed(&self) -> bool {
        self.exit_code == 128 + 9 && self.called_to_exited() >= self.grace
    }

    /// When the runtime sent SIGTERM, as far as the emulator can tell (boot-clock ns):
    /// after `StopContainer` was sent, before PID 1 was gone, and for a SIGKILLed PID 1
    /// at least the grace before its exit (containerd waits the whole grace after its
    /// SIGTERM has gone out). On an idle machine the window is 10-40 ms wide: the
    /// runtime's delay in sending SIGTERM (a fresh `runc kill`), and in sending SIGKILL.
    pub fn sigterm_sent(&self) -> (u64, u64) {
        let grace = if self.kill_needed() {
            self.grace
        } else {
            Duration::ZERO
        };
        let latest = self
            .exited
            .boottime_ns
            .saturating_sub(u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX));
        (self.called.boottime_ns, latest.max(self.called.boottime_ns))
    }

    /// Bounds on SIGTERM → PID 1's exit: at least the grace for a SIGKILLed PID 1, at
    /// most `StopContainer` sent → PID 1 gone.
    pub fn sigterm_to_exit(&self) -> (Duration, Duration) {
        let least = if self.kill_needed() {
            self.grace
        } else {
            Duration::ZERO
        };
        (least, self.called_to_exited())
    }

    fn called_to_exited(&self) -> Duration {
        Duration::from_nanos(
            self.exited
                .boottime_ns
                .saturating_sub(self.called.boottime_ns),
        )
    }
}

impl Node {
    pub(super) fn kill_container(
        &self,
        pod: &RunningPod,
        def: &ContainerDef,
        c: &PodContainer,
        grace: i64,
    ) -> Result<ContainerReport> {
        let cri = self.runtime.cri()?;
        let killing = Stamp::now();
        self.event(
            pod,
            &def.name,
            ("Normal", "Killing"),
            &format!("Stopping container {}", def.name),
        )?;
        let budget = Duration::from_secs(grace.max(0).unsigned_abs());
        let started = Instant::now();
        let prestop = match (&def.prestop, grace > 0) {
            (Some(hook), true) => {
                let begin = Stamp::now();
                match hook {
                    Hook::Sleep(d) => sleep((*d).min(budget)),
                    Hook::Exec(cmd) => {
                        let failure = match cri.exec_sync(c.id(), cmd, budget) {
                            Ok(out) if out.exit_code == 0 => None,
                            Ok(out) => Some(format!(
                                "command {cmd:?} exited with {}: {}",
                                out.exit_code,
                                String::from_utf8_lossy(&out.stderr).trim()
                            )),
                            Err(err) => Some(format!("{err:#}")),
                        };
                        if let Some(msg) = failure {
                            let msg = format!("PreStopHook failed: {msg}");
                            self.event(pod, &def.name, ("Warning", "FailedPreStopHook"), &msg)?;
                        }
                    }
                }
                Some((begin, Stamp::now()))
            }
            _ => None,
        };
        // kubelet: grace - int64(time.Since(start).Seconds()), then the minimum.
        let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX);
        let left = grace.saturating_sub(spent).max(MIN_GRACE_SECONDS);
        let (stop, finished_ns) = self.stop_container(c, left)?;
        let ns = pod.def.namespace.as_str();
        // A force-deleted pod is already gone from the API: nothing to report to.
        if self.api.get(Resource::Pods, ns, &pod.def.name).is_some() {
            self.api.modify(Resource::Pods, ns, &pod.def.name, |p| {
                if let Some(statuses) = p["status"]["containerStatuses"].as_array_mut() {
                    for st in statuses.iter_mut().filter(|st| st["name"] == def.name.as_str()) {
                        st["ready"] = json!(false);
                        st["state"] = json!({"terminated": {"exitCode": stop.exit_code, "reason": stop.reason,
                            "containerID": format!("containerd://{}", c.id()),
                            "finishedAt": objects::rfc3339(finished_ns, true)}});
                    }
                }
            })?;
        }
        Ok(ContainerReport {
            name: def.name.clone(),
            killing,
            prestop,
            stop,
        })
    }

    /// `StopContainer(id, grace)` while watching PID 1, then `ContainerStatus`; also
    /// returns the runtime's `finishedAt` (its clock, ns since the epoch).
    pub(super) fn stop_container(&self, c: &PodContainer, grace: i64) -> Result<(StopReport, u64)> {
        let cri = self.runtime.cri()?;
        let grace_d = Duration::from_secs(grace.unsigned_abs());
        let called = Stamp::now();
        let (exited, returned) = std::thread::scope(|s| -> Result<(Stamp, Stamp)> {
            let stop = s.spawn(|| cri.stop_container(c.id(), grace));
            let deadline = Instant::now() + grace_d + AFTER_KILL;
            let exited = loop {
                if c.exited() {
                    break Stamp::now();
                }
                if stop.is_finished() || Instant::now() > deadline {
                    // StopContainer returns only after the exit: one last look.
                    if c.exited() {
                        break Stamp::now();
                    }
                    match stop.join() {
                        Ok(Err(err)) => return Err(err),
                        Ok(Ok(())) => bail!("StopContainer returned while {} still ran", c.id()),
                        Err(_) => bail!("the StopContainer thread panicked"),
                    }
                }
                sleep(POLL);
            };
            match stop.join() {
                Ok(result) => result.with_context(|| format!("StopContainer {}", c.id()))?,
                Err(_) => bail!("the StopContainer thread panicked"),
            }
            Ok((exited, Stamp::now()))
        })?;
        let status = cri.container_status(c.id())?.status;
        let report = StopReport {
            grace: grace_d,
            called,
            exited,
            returned,
            exit_code: status.exit_code,
            reason: status.reason,
        };
        Ok((report, status.finished_at.unsigned_abs()))
    }
}

impl PodContainer {
    /// Whether PID 1 is gone (or a zombie its shim has not reaped yet).
    pub(super) fn exited(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return true;
        };
        let run_state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(run_state, Some("Z" | "X")) || state::start_time(self.pid) != Some(self.start_time)
    }
}
