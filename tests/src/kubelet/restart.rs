//! kubelet's restarts of a container in a pod that lives on, through CRI: a failed
//! liveness probe (`Unhealthy` Events at each failure, then `Killing` "… failed liveness
//! probe, will be restarted", `StopContainer` with the pod's grace), or a container that
//! ended by itself (a crash, an exit, an OOM kill) restarted after a back-off (`BackOff`
//! Event, status `waiting: CrashLoopBackOff` with kubelet's "back-off … restarting failed
//! container" message). Then a new container (the next attempt) is created and started,
//! and the status shows it running, with `restartCount` one higher and the old run in
//! `lastState.terminated` (its container id among it).

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{kill::StopReport, objects, Node, PodContainer, RunningPod};
use crate::{apiserver::Resource, runc::Stamp};

/// How long a container that should end by itself may take.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The probe whose failures make kubelet restart a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Liveness,
    Startup,
}

impl Probe {
    /// As kubelet names it in Events ("Liveness probe failed", "failed liveness probe").
    fn name(self) -> &'static str {
        match self {
            Probe::Liveness => "Liveness",
            Probe::Startup => "Startup",
        }
    }
}

/// What the emulator did for one restart, on its own clock.
#[derive(Debug)]
pub struct RestartReport {
    pub old_id: String,
    pub new_id: String,
    /// The first Unhealthy Event (liveness restarts).
    pub first_failure: Option<Stamp>,
    /// The Killing Event (liveness restarts).
    pub killing: Option<Stamp>,
    /// StopContainer (liveness restarts).
    pub stop: Option<StopReport>,
    /// The old run's exit code and reason as the runtime reports them.
    pub exit_code: i32,
    pub reason: String,
    pub restart_count: i64,
}

impl Node {
    /// kubelet's liveness probe of `name` fails `failures` times, `period` apart; kubelet
    /// kills the container (SIGTERM, the pod's grace, SIGKILL) and starts it again.
    pub fn fail_liveness(
        &self,
        pod: &mut RunningPod,
        name: &str,
        failures: u32,
        period: Duration,
    ) -> Result<RestartReport> {
        self.fail_probe(pod, name, Probe::Liveness, failures, period)
    }

    /// `probe` of `name` fails `failures` times, `period` apart; kubelet kills the
    /// container and starts it again.
    pub fn fail_probe(
        &self,
        pod: &mut RunningPod,
        name: &str,
        probe: Probe,
        failures: u32,
        period: Duration,
    ) -> Result<RestartReport> {
        let mut first_failure = None;
        for i in 0..failures {
            if i > 0 {
                sleep(period);
            }
            let at = Stamp::now();
            first_failure.get_or_insert(at);
            self.event(
                pod,
                name,
                ("Warning", "Unhealthy"),
                &format!(
                    "{} probe failed: HTTP probe failed with statuscode: 500",
                    probe.name()
                ),
            )?;
        }
        let killing = Stamp::now();
        self.event(
            pod,
            name,
            ("Normal", "Killing"),
            &format!(
                "Container {name} failed {} probe, will be restarted",
                probe.name().to_ascii_lowercase()
            ),
        )?;
        let (_, old) = find(pod, name)?;
        let (stop, _) = self.stop_container(old, pod.def.grace_seconds.max(2))?;
        let (exit_code, reason) = (stop.exit_code, stop.reason.clone());
        let mut report = self.start_again(pod, name, exit_code, &reason)?;
        report.first_failure = first_failure;
        report.killing = Some(killing);
        report.stop = Some(stop);
        Ok(report)
    }

    /// `name` ends by itself (its script exits, crashes or runs out of memory); kubelet
    /// reports it, waits `back_off` (shown in the status and a BackOff Event) and
    /// starts it again.
    pub fn restart_after_exit(
        &self,
        pod: &mut RunningPod,
        name: &str,
        back_off: Duration,
    ) -> Result<RestartReport> {
        let (_, old) = find(pod, name)?;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while !old.exited() {
            if Instant::now() > deadline {
                bail!("container {name} did not end by itself within {EXIT_TIMEOUT:?}");
            }
            sleep(Duration::from_millis(5));
        }
        let old_id = old.id().to_string();
        let cri = self.runtime.cri()?;
        // The runtime reports the exit once its shim has reaped PID 1.
        let status = loop {
            let s = cri.container_status(&old_id)?.status;
            if s.finished_at > 0 || Instant::now() > deadline {
                break s;
            }
            sleep(Duration::from_millis(5));
        };
        let (ns, pod_name) = (pod.def.namespace.clone(), pod.def.name.clone());
        let message = format!(
            "back-off {} restarting failed container={name} pod={pod_name}_{ns}({})",
            go_duration(back_off),
            pod.uid
        );
        self.api.modify(Resource::Pods, &ns, &pod_name, |p| {
            if let Some(statuses) = p["status"]["containerStatuses"].as_array_mut() {
                for st in statuses.iter_mut().filter(|st| st["name"] == name) {
                    st["ready"] = json!(false);
                    st["lastState"] = json!({"terminated": {"exitCode": status.exit_code,
                        "reason": status.reason, "containerID": format!("containerd://{old_id}"),
                        "finishedAt": objects::rfc3339(status.finished_at.unsigned_abs(), true)}});
                    st["state"] =
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}});
                }
            }
        })?;
        self.event(
            pod,
            name,
            ("Warning", "BackOff"),
            &format!(
                "Back-off restarting failed container {name} in pod {pod_name}_{ns}({})",
                pod.uid
            ),
        )?;
        sleep(back_off);
        self.start_again(pod, name, status.exit_code, &status.reason)
    }

    /// The next attempt of `name`: created, started, reported running with the old run
    /// in `lastState` and `restartCount` one higher.
    fn start_again(
        &self,
        pod: &mut RunningPod,
        name: &str,
        exit_code: i32,
        reason: &str,
    ) -> Result<RestartReport> {
        let (i, old) = find(pod, name)?;
        let old_id = old.id().to_string();
        let attempt = old.attempt + 1;
        let def = pod.containers[i].0.clone();
        let cri = self.runtime.cri()?;
        let finished_at = cri.container_status(&old_id)?.status.finished_at;
        let log_dir = self
            .runtime
            .pod_log_dir(&pod.def.namespace, &pod.def.name, &pod.uid)?;
        let sandbox_config = objects::sandbox_config(&pod.def, &pod.uid, &log_dir);
        let config = objects::container_config_attempt(&pod.def, &pod.uid, &def, attempt);
        let new_id = cri
            .create_container(&pod.sandbox_id, config, sandbox_config)
            .with_context(|| format!("CreateContainer {name} attempt {attempt}"))?;
        cri.start_container(&new_id)?;
        let (mut container, status) = self.wait_exec(&new_id)?;
        container.attempt = attempt;
        let mut restart_count = 0;
        let (ns, pod_name) = (pod.def.namespace.clone(), pod.def.name.clone());
        self.api.modify(Resource::Pods, &ns, &pod_name, |p| {
            if let Some(statuses) = p["status"]["containerStatuses"].as_array_mut() {
                for st in statuses.iter_mut().filter(|st| st["name"] == name) {
                    restart_count = st["restartCount"].as_i64().unwrap_or(0) + 1;
                    st["restartCount"] = json!(restart_count);
                    st["containerID"] = json!(format!("containerd://{new_id}"));
                    st["ready"] = json!(true);
                    st["lastState"] = json!({"terminated": {"exitCode": exit_code, "reason": reason,
                        "containerID": format!("containerd://{old_id}"),
                        "finishedAt": objects::rfc3339(finished_at.unsigned_abs(), true)}});
                    st["state"] = json!({"running": {"startedAt": objects::rfc3339(status.started_at.unsigned_abs(), true)}});
                }
            }
        })?;
        pod.containers[i].1 = container;
        Ok(RestartReport {
            old_id,
            new_id,
            first_failure: None,
            killing: None,
            stop: None,
            exit_code,
            reason: reason.to_string(),
            restart_count,
        })
    }
}

fn find<'a>(pod: &'a RunningPod, name: &str) -> Result<(usize, &'a PodContainer)> {
    pod.containers
        .iter()
        .enumerate()
        .find(|(_, (d, _))| d.name == name)
        .map(|(i, (_, c))| (i, c))
        .with_context(|| format!("pod {} has no container {name}", pod.def.name))
}

/// A duration as Go prints it in kubelet's messages (`200ms`, `10s`, `1m20s`).
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match (s / 60, s % 60, ms % 1000) {
        (0, s, 0) => format!("{s}s"),
        (0, s, frac) => format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0')),
        (m, s, _) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_prints_them() {
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
    }
}
