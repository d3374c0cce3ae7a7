//! What is shown while terminations are under way: views of open records, of containers
//! still terminating and of pods being deleted, with the stuck ones diagnosed; and the
//! terminating / stuck pod counts. Functions of read-only state and the time passed in.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{
    container::ContainerTrack,
    pod_classify::stuck_diagnosis,
    record::{report, timeline_of, Records},
};
use crate::{
    clock::Clock,
    join::{self, StuckFacts},
    kube::{ApiPodState, NodeView},
    report::{DiagnosisEntry, Termination},
};

/// Live processes of a pod's containers whose PID 1 has not exited, as "name (pid N,
/// state S)", read from /proc now (a process already gone is not listed).
fn live_processes<'a>(
    containers: impl Iterator<Item = &'a ContainerTrack>,
    uid: &str,
) -> Vec<String> {
    let mut alive = Vec::new();
    for c in containers {
        if c.container.cgroup.pod_uid.as_deref() != Some(uid) || c.facts.pid1_exit.is_some() {
            continue;
        }
        for tgid in c.live_tgids() {
            let Ok(st) = procfs::process::Process::new(tgid as i32).and_then(|pr| pr.stat()) else {
                continue;
            };
            alive.push(format!("{} (pid {tgid}, state {})", st.comm, st.state));
        }
    }
    alive
}

/// Terminations still under way, oldest first.
pub(super) fn in_progress(
    records: &Records,
    containers: &HashMap<u64, ContainerTrack>,
    view: &NodeView,
    clock: &Clock,
    now_ns: u64,
    stuck_margin_ns: u64,
) -> Vec<Arc<Termination>> {
    let mut views: HashMap<String, Termination> = records
        .open_views()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for c in containers
        .values()
        .filter(|c| c.terminating_since.is_some())
    {
        let v = views
            .entry(join::record_key(&c.container))
            .or_insert_with(|| Termination::in_progress(c.container.cgroup.pod_uid.clone()));
        v.containers.push(report(c, None));
        v.timeline.extend(timeline_of(c, clock));
    }
    for p in view.terminating() {
        views
            .entry(p.pod.uid.clone())
            .or_insert_with(|| Termination::in_progress(Some(p.pod.uid.clone())));
    }
    let seen = seen_until(view, now_ns);
    let mut out: Vec<(u64, Termination)> = views
        .into_iter()
        .map(|(key, mut v)| {
            let mut start = records.open_started(&key);
            if let Some(p) = view.get(join::key_pod_uid(&key)) {
                start = p.deletion_ns.or(start);
                with_pod(&mut v, p, containers, start, clock, seen, stuck_margin_ns);
            } else {
                v.timeline.sort_by_key(|e| e.at_ns);
            }
            let start = start
                .or_else(|| v.timeline.iter().map(|e| e.at_ns).min())
                .unwrap_or(0);
            v.started_at = Some(clock.rfc3339(start));
            (start, v)
        })
        .collect();
    out.sort_by_key(|(start, _)| *start);
    out.into_iter().map(|(_, v)| Arc::new(v)).collect()
}

/// The API's side of a termination under way: names, grace, its timeline, and whether it
/// is stuck.
fn with_pod(
    v: &mut Termination,
    p: &ApiPodState,
    containers: &HashMap<u64, ContainerTrack>,
    start: Option<u64>,
    clock: &Clock,
    now_ns: u64,
    stuck_margin_ns: u64,
) {
    v.namespace = Some(p.pod.namespace.clone());
    v.pod = Some(p.pod.name.clone());
    v.grace_period_seconds = Some(p.pod.effective_grace_seconds() as f64);
    join::merge_timeline(&mut v.timeline, Some(p), None, start.unwrap_or(0), clock);
    if let Some(overdue) = join::overdue_seconds(p, now_ns, stuck_margin_ns) {
        let alive = live_processes(containers.values(), &p.pod.uid);
        let d = stuck_diagnosis(&StuckFacts::new(p, overdue, alive));
        v.diagnoses.push(DiagnosisEntry {
            code: d.code.as_str().into(),
            container: None,
            message: d.message,
        });
    }
}

/// Until when the API's word about the node's pods is known: now, or when the pods watch
/// went down. A pod is stuck only if it was still there when last seen past its
/// deadline: while the API server is unreachable its removal cannot be seen, and every
/// pod being deleted would otherwise turn "stuck" as the outage goes on.
fn seen_until(view: &NodeView, now_ns: u64) -> u64 {
    view.api_down_since()
        .map_or(now_ns, |down| down.min(now_ns))
}

/// Terminating and stuck pods per namespace.
pub(super) fn terminating_by_namespace(
    view: &NodeView,
    now_ns: u64,
    stuck_margin_ns: u64,
) -> BTreeMap<String, (i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let seen = seen_until(view, now_ns);
    for p in view.terminating() {
        let n = out.entry(p.pod.namespace.clone()).or_default();
        n.0 += 1;
        if join::overdue_seconds(p, seen, stuck_margin_ns).is_some() {
            n.1 += 1;
        }
    }
    out
}
