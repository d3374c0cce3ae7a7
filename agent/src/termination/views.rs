//! What the tracker shows while terminations are under way: views of open records and
//! of containers still terminating, pods being deleted, and which of those are stuck
//! (with the reasons). Also keeps the terminating / stuck pod gauges.

use std::{collections::HashMap, sync::Arc};

use super::{
    model::{DiagnosisEntry, State, Termination},
    pod_classify::{stuck_diagnosis, StuckFacts},
    pods::{PodState, MAX_GRACE_SECONDS},
    record::{record_key, summary, timeline_of},
    tracker::Tracker,
};
use crate::export::metrics::NamespaceLabels;

impl Tracker {
    fn is_stuck(&self, p: &PodState, now_ns: u64) -> Option<f64> {
        let deletion = p.deletion_ns?;
        if p.removed_ns.is_some() {
            return None;
        }
        let grace = p.info.effective_grace_seconds().clamp(0, MAX_GRACE_SECONDS) as u64;
        let due = deletion.saturating_add(grace * 1_000_000_000);
        let deadline = due.saturating_add(self.opts.stuck_margin_ns);
        (now_ns > deadline).then(|| (now_ns - due) as f64 / 1e9)
    }

    fn stuck_facts(&self, p: &PodState, overdue_seconds: f64) -> StuckFacts {
        let mut alive = Vec::new();
        for c in self.containers.values() {
            if c.info.cgroup.pod_uid.as_deref() != Some(p.info.uid.as_str())
                || c.facts.pid1_exit.is_some()
            {
                continue;
            }
            for tgid in c.live_tgids() {
                // The live name and state; a process already gone is not listed.
                let Ok(st) = procfs::process::Process::new(tgid as i32).and_then(|pr| pr.stat())
                else {
                    continue;
                };
                alive.push(format!("{} (pid {tgid}, state {})", st.comm, st.state));
            }
        }
        StuckFacts {
            overdue_seconds,
            finalizers: p.info.finalizers.clone(),
            alive,
            not_terminated: p
                .info
                .containers
                .iter()
                .filter(|c| c.kind == crate::kube::ContainerKind::App && c.terminated.is_none())
                .map(|c| c.name.clone())
                .collect(),
        }
    }

    /// Terminations still under way, oldest first.
    pub(super) fn in_progress(&self, now_ns: u64) -> Vec<Arc<Termination>> {
        let mut views: HashMap<String, Termination> = self
            .records
            .open_views()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for c in self
            .containers
            .values()
            .filter(|c| c.terminating_since.is_some())
        {
            let v = views
                .entry(record_key(&c.info).to_string())
                .or_insert_with(|| empty(c.info.cgroup.pod_uid.clone()));
            v.containers.push(summary(c, None));
            v.timeline.extend(timeline_of(c, &self.clock));
        }
        for p in self.pods.terminating() {
            views
                .entry(p.info.uid.clone())
                .or_insert_with(|| empty(Some(p.info.uid.clone())));
        }
        let mut out: Vec<(u64, Termination)> = views
            .into_iter()
            .map(|(key, mut v)| {
                let mut start = self.records.open_started(&key);
                if let Some(p) = self.pods.get(&key) {
                    v.namespace = Some(p.info.namespace.clone());
                    v.pod = Some(p.info.name.clone());
                    v.grace_period_seconds = Some(p.info.effective_grace_seconds() as f64);
                    start = p.deletion_ns.or(start);
                    v.timeline
                        .extend(p.timeline_since(start.unwrap_or(0)).cloned());
                    if let Some(overdue) = self.is_stuck(p, now_ns) {
                        let d = stuck_diagnosis(&self.stuck_facts(p, overdue));
                        v.diagnoses.push(DiagnosisEntry {
                            code: d.code.as_str().into(),
                            container: None,
                            message: d.message,
                        });
                    }
                }
                let start = start
                    .or_else(|| v.timeline.iter().map(|e| e.at_ns).min())
                    .unwrap_or(0);
                v.started_at = Some(self.clock.rfc3339(start));
                v.timeline.sort_by_key(|e| e.at_ns);
                (start, v)
            })
            .collect();
        out.sort_by_key(|(start, _)| *start);
        out.into_iter().map(|(_, v)| Arc::new(v)).collect()
    }

    pub(super) fn update_pod_gauges(&mut self, now_ns: u64) {
        let mut terminating: HashMap<String, i64> = HashMap::new();
        let mut stuck: HashMap<String, i64> = HashMap::new();
        for p in self.pods.terminating() {
            *terminating.entry(p.info.namespace.clone()).or_default() += 1;
            if self.is_stuck(p, now_ns).is_some() {
                *stuck.entry(p.info.namespace.clone()).or_default() += 1;
                // A stuck pod's view changes as time passes.
                self.dirty = true;
            }
        }
        for ns in std::mem::take(&mut self.gauge_namespaces) {
            terminating.entry(ns.clone()).or_default();
            stuck.entry(ns).or_default();
        }
        for (ns, n) in &terminating {
            let l = NamespaceLabels {
                namespace: ns.clone(),
            };
            self.metrics.terminating_pods.get_or_create(&l).set(*n);
            self.metrics
                .stuck_terminating_pods
                .get_or_create(&l)
                .set(stuck.get(ns).copied().unwrap_or(0));
        }
        self.gauge_namespaces = terminating.into_keys().collect();
    }
}

fn empty(uid: Option<String>) -> Termination {
    Termination {
        namespace: None,
        pod: None,
        uid,
        state: State::InProgress,
        started_at: None,
        finished_at: None,
        grace_period_seconds: None,
        containers: vec![],
        timeline: vec![],
        diagnoses: vec![],
    }
}
