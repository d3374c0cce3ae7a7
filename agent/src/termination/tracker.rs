//! The single owner of termination state. Fed attributed kernel events in order, it
//! keeps a state machine per container (running → terminating → exited → finalized),
//! and on [`Tracker::tick`] finalizes containers whose PID 1 is gone, grouping them per
//! pod into termination records (see `record`). Kubernetes updates go into the API's
//! view of the node that the join reads. Time is always passed in.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use super::{
    classify::Code,
    container::{on_deliver, on_exec, on_exit, on_signal, ContainerTrack},
    record::{ApiWait, Records, API_HELD_MAX},
    views,
};
use crate::{
    attribution::{CgroupContainer, CgroupProcess},
    clock::Clock,
    join,
    kernel::TaskEvent,
    kube::{KubeUpdate, NodeView, PodChange},
    metrics::{TerminationMetrics, TrafficMetrics},
    report::{Snapshot, Termination},
    traffic::{self, proc_net::SocketTable, TrafficWatch},
};

/// Longest wait, after PID 1's exit, for the container's other processes to exit.
const SETTLE_CAP_NS: u64 = 10_000_000_000;
/// How long the end of a container placed as its pod's sandbox waits, while the pod lives
/// on, for the status to name it: a sandbox ends only with its pod, but a container that
/// crashes before kubelet reports its id looks like one until kubelet does.
const UNNAMED_WAIT_NS: u64 = 5_000_000_000;
/// Containers finalized lately, remembered so their late events do not start a new state.
const FINISHED_KEPT: usize = 4096;

#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// How long after PID 1's exit (and the last event) a container is finalized, so the
    /// exits of the processes the kernel kills after PID 1 are included.
    pub linger_ns: u64,
    /// Completed terminations kept for `/debug/terminations`.
    pub history: usize,
    /// A pod still present this long past deletion + grace period is stuck.
    pub stuck_margin_ns: u64,
    /// The longest grace a runtime may give a container whose grace is not known
    /// (standalone mode): a signal followed by the end within it is the container's stop
    /// signal, and a container that existed before the agent and ended within it of the
    /// agent's start may have been stopped before the agent could see it.
    pub max_grace_ns: u64,
    /// Where live processes are listed (`/proc` of the host PID namespace), to check
    /// that processes believed alive after PID 1's exit still exist; `None`: never look.
    pub proc_root: Option<std::path::PathBuf>,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        Self {
            linger_ns: 150_000_000,
            history: 256,
            stuck_margin_ns: 30_000_000_000,
            max_grace_ns: 30_000_000_000,
            proc_root: Some(std::path::PathBuf::from("/proc")),
        }
    }
}

pub struct Tracker {
    opts: TrackerOptions,
    /// When the agent started watching (boot clock).
    started_ns: u64,
    clock: Clock,
    metrics: Arc<TerminationMetrics>,
    containers: HashMap<u64, ContainerTrack>,
    /// Containers finalized recently, so their late events do not start a new state.
    finished: HashSet<u64>,
    finished_order: VecDeque<u64>,
    records: Records,
    view: NodeView,
    /// Terminating pods' addresses watched in the kernel, and what was counted there.
    traffic: TrafficWatch,
    traffic_metrics: Option<Arc<TrafficMetrics>>,
    dirty: bool,
    /// Pods whose STUCK_TERMINATING was announced (for its Event), bounded.
    stuck_announced: HashSet<String>,
}

impl Tracker {
    /// A tracker that started watching at `started_ns` (boot clock).
    pub fn new(
        opts: TrackerOptions,
        clock: Clock,
        metrics: Arc<TerminationMetrics>,
        started_ns: u64,
    ) -> Self {
        let records = Records::new(opts.history);
        Self {
            opts,
            started_ns,
            clock,
            metrics,
            containers: HashMap::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            records,
            view: NodeView::default(),
            traffic: TrafficWatch::default(),
            traffic_metrics: None,
            dirty: true,
            stuck_announced: HashSet::new(),
        }
    }

    /// Where each pod's traffic figures go when its record completes.
    pub fn with_traffic_metrics(mut self, m: Arc<TrafficMetrics>) -> Self {
        self.traffic_metrics = Some(m);
        self
    }

    /// The traffic watch (its kernel map writes are applied by the owner of the maps).
    pub fn traffic(&mut self) -> &mut TrafficWatch {
        &mut self.traffic
    }

    /// The socket table of a pod's network namespace, read through one of its processes.
    fn socket_table(&self, uid: &str) -> Option<SocketTable> {
        let mut tracks: Vec<&ContainerTrack> = self
            .containers
            .values()
            .filter(|c| c.container.cgroup.pod_uid.as_deref() == Some(uid))
            .collect();
        // The sandbox holds the network namespace longest.
        tracks.sort_by_key(|c| !c.sandbox);
        tracks
            .iter()
            .flat_map(|c| c.live_tgids())
            .find_map(|pid| SocketTable::of_pid(pid).ok())
    }

    /// Marks a watched pod's first stop signal and last exit after a kernel event.
    fn traffic_moments(&mut self, cgroup_id: u64) {
        let Some(c) = self.containers.get(&cgroup_id) else {
            return;
        };
        let Some(uid) = c.container.cgroup.pod_uid.clone() else {
            return;
        };
        if c.sandbox || !self.traffic.is_watched(&uid) {
            return;
        }
        if let Some(s) = &c.facts.stop_signal {
            self.traffic.sigterm(&uid, s.at_ns);
        }
        let members = || {
            self.containers
                .values()
                .filter(|o| !o.sandbox && o.container.cgroup.pod_uid.as_deref() == Some(&uid))
        };
        if members().all(|o| o.facts.pid1_exit_ns.is_some()) {
            if let Some(last) = members().filter_map(|o| o.facts.pid1_exit_ns).max() {
                self.traffic.exit(&uid, last);
            }
        }
    }

    /// Watched pods whose endpoint left since the last look.
    fn traffic_removals(&mut self) {
        let due: Vec<(String, u64)> = self
            .view
            .terminating()
            .filter(|p| self.traffic.is_watched(&p.pod.uid))
            .filter(|p| {
                self.traffic
                    .get(&p.pod.uid)
                    .is_some_and(|t| t.marks.removal_ns == 0)
            })
            .filter_map(|p| Some((p.pod.uid.clone(), p.endpoint_down_ns?)))
            .collect();
        for (uid, at) in due {
            let table = self.socket_table(&uid);
            self.traffic.removal(&uid, at, table.as_ref());
        }
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// A container found in the cgroup tree, with the processes already in it;
    /// `existed_before_agent`: it was there when the agent started.
    pub fn observe_container(
        &mut self,
        c: Arc<CgroupContainer>,
        procs: &[CgroupProcess],
        existed_before_agent: bool,
    ) {
        if self.finished.contains(&c.cgroup_id) {
            return;
        }
        let max_grace = self.opts.max_grace_ns;
        let Self {
            containers, view, ..
        } = self;
        let track = containers
            .entry(c.cgroup_id)
            .or_insert_with(|| ContainerTrack::new(c.clone(), join::place(view, &c), max_grace));
        track.existed_before_agent |= existed_before_agent;
        let mut sorted: Vec<&CgroupProcess> = procs.iter().collect();
        // The namespace init first; without one (a shared PID namespace) the oldest
        // process stands in for it.
        sorted.sort_by_key(|p| (p.ns_tgid != 1, p.start_time, p.tgid));
        for p in sorted {
            if !track.procs.contains_key(&p.tgid) {
                track.add_proc(p.tgid, p.ns_tgid, p.ns_level, p.comm.clone(), true);
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

    pub fn handle(&mut self, c: &Arc<CgroupContainer>, ev: &TaskEvent) {
        let id = c.cgroup_id;
        if self.finished.contains(&id) {
            return;
        }
        let max_grace = self.opts.max_grace_ns;
        let Self {
            containers,
            view,
            metrics,
            clock,
            dirty,
            ..
        } = self;
        // One lookup on the hot path; the placement is worked out once per container.
        let track = containers
            .entry(id)
            .or_insert_with(|| ContainerTrack::new(c.clone(), join::place(view, c), max_grace));
        track.last_event_ns = track.last_event_ns.max(ev.header().ktime_ns);
        match ev {
            TaskEvent::Exec(e) => on_exec(track, e, clock),
            TaskEvent::Signal(s) => on_signal(track, s, metrics, clock),
            TaskEvent::Deliver(d) => on_deliver(track, d, clock),
            TaskEvent::Exit(e) => on_exit(track, e, metrics, clock),
        }
        *dirty = true;
        if matches!(ev, TaskEvent::Signal(_) | TaskEvent::Exit(_)) && self.traffic.watching() {
            self.traffic_moments(id);
        }
    }

    /// An update from the Kubernetes watchers, applied at `now_ns` (boot clock).
    pub fn kube(&mut self, update: KubeUpdate, now_ns: u64) {
        let clock = self.clock;
        for change in self.view.apply(update, &clock) {
            match change {
                PodChange::None => {}
                PodChange::Updated(uid) => self.replace(&uid),
                PodChange::Deleting(uid) => {
                    self.replace(&uid);
                    if let Some(p) = self.view.get(&uid) {
                        self.records.open_pod(p);
                    }
                    self.watch_traffic(&uid);
                }
                PodChange::Removed(uid) => {
                    // Deleted and removed while the API server was unreachable: the
                    // stops seen meanwhile were the pod's termination, not restarts.
                    if let Some(p) = self
                        .view
                        .get(&uid)
                        .filter(|p| p.gone_unseen.is_some() && p.deletion_ns.is_none())
                    {
                        self.records.pod_gone_unseen(p);
                    }
                    self.try_complete(&uid, now_ns, true);
                    self.traffic.gone(&uid);
                    // Gone: no longer stuck, and a later stuck pod's Event need not
                    // wait for the set to fill and be cleared.
                    self.stuck_announced.remove(&uid);
                }
            }
        }
        if self.traffic.watching() {
            self.traffic_removals();
        }
        self.dirty = true;
    }

    /// A pod's deletion was seen: watch the addresses that are still its own.
    fn watch_traffic(&mut self, uid: &str) {
        let Some(p) = self.view.get(uid) else { return };
        let ips: Vec<String> = p
            .pod
            .ips
            .iter()
            .filter(|ip| self.view.by_ip(ip).is_some_and(|o| o.pod.uid == uid))
            .cloned()
            .collect();
        let host_network = p.pod.host_network;
        if ips.is_empty() && !host_network {
            return;
        }
        let table = self.socket_table(uid);
        self.traffic
            .deleting(uid, &ips, host_network, table.as_ref());
        // Containers' stop signals and exits seen before the deletion was.
        let ids: Vec<u64> = self
            .containers
            .iter()
            .filter(|(_, c)| c.container.cgroup.pod_uid.as_deref() == Some(uid))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.traffic_moments(id);
        }
    }

    /// Pod names may arrive after a container's first events: place its containers anew.
    fn replace(&mut self, uid: &str) {
        let Self {
            containers, view, ..
        } = self;
        for c in containers
            .values_mut()
            .filter(|c| c.container.cgroup.pod_uid.as_deref() == Some(uid))
        {
            let placement = join::place(view, &c.container);
            // A named container never becomes the sandbox: when the status has moved
            // on past its id (a restart), it is still the container it was.
            if placement.sandbox && c.name.is_some() && !c.sandbox {
                continue;
            }
            c.replace(placement);
        }
    }

    /// Completes `key`'s record if nothing holds it; `room`: it may wait for an
    /// unreachable API server (fewer than the most that may are waiting).
    fn try_complete(&mut self, key: &str, now_ns: u64, room: bool) {
        let others_pending = self
            .containers
            .values()
            .any(|o| o.terminating_since.is_some() && join::is_record_key(&o.container, key));
        let traffic = self.traffic.get(key).map(|t| {
            let deletion = self.view.get(key).and_then(|p| p.deletion_ns);
            traffic::report::report(t, deletion, &self.clock)
        });
        if let Some(t) = &traffic {
            self.records.set_traffic(key, t);
        }
        let uid = join::key_pod_uid(key);
        if self.records.try_complete(
            key,
            others_pending,
            self.view.get(uid),
            ApiWait {
                down_since: self.view.api_down_since(),
                room,
            },
            now_ns,
            &self.metrics,
            &self.clock,
        ) {
            self.dirty = true;
            if let Some(f) = traffic.and_then(|t| t.figures) {
                let workload = self
                    .view
                    .get(key)
                    .map(|p| crate::metrics::Workload::new(&p.pod.namespace, &p.pod.workload));
                if let (Some(m), Some(w)) = (&self.traffic_metrics, workload) {
                    m.pod_traffic(&w, &f);
                }
            }
            self.traffic.take(key);
        }
    }

    /// Finalizes containers that are done and refreshes the pod gauges; returns whether
    /// anything changed.
    pub fn tick(&mut self, now_ns: u64) -> bool {
        let linger = self.opts.linger_ns;
        // Before waiting out the cap for processes still believed alive after PID 1,
        // check they still exist (their exits may have been filtered as the host's).
        let proc_root = self.opts.proc_root.as_deref();
        for c in self.containers.values_mut() {
            let Some(proc_root) = proc_root else { break };
            let waiting = c.facts.pid1_exit_ns.is_some()
                && c.others_alive()
                && now_ns.saturating_sub(c.last_event_ns) >= linger;
            if waiting {
                c.forget_vanished(proc_root);
            }
        }
        let view = &self.view;
        let unnamed = |c: &ContainerTrack| {
            c.sandbox
                && c.container
                    .cgroup
                    .pod_uid
                    .as_deref()
                    .and_then(|u| view.get(u))
                    .is_some_and(|p| p.deletion_ns.is_none() && p.removed_ns.is_none())
                && c.facts
                    .pid1_exit_ns
                    .is_some_and(|e| now_ns.saturating_sub(e) < UNNAMED_WAIT_NS)
        };
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
                quiet && (settled || c.gone) && !unnamed(c)
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
            if self.finished_order.len() > FINISHED_KEPT {
                if let Some(old) = self.finished_order.pop_front() {
                    self.finished.remove(&old);
                }
            }
            c.check_orphans();
            c.check_started_before(self.started_ns, self.opts.max_grace_ns, &self.clock);
            let (key, run) = join::record_key_in(&self.view, &c.container, c.sandbox);
            let pod = c
                .container
                .cgroup
                .pod_uid
                .as_deref()
                .and_then(|u| self.view.get(u));
            self.records
                .finalize(c, key, run, pod, &self.metrics, &self.clock, now_ns);
            self.dirty = true;
        }
        // Records (new ones, and those held back, e.g. waiting for a deletion) complete
        // in the order they finished. While the API server is unreachable, the first
        // API_HELD_MAX that need its word wait for it; any more complete without.
        let mut held = 0;
        for key in self.records.open_keys() {
            self.try_complete(&key, now_ns, held < API_HELD_MAX);
            held += usize::from(self.records.held_for_api(&key));
        }
        self.metrics.held_for_api(held);
        let pods = views::terminating_by_namespace(&self.view, now_ns, self.opts.stuck_margin_ns);
        // A stuck pod's view changes as time passes.
        self.dirty |= pods.values().any(|(_, stuck)| *stuck > 0);
        self.metrics.terminating_pods(&pods);
        self.metrics.expire(now_ns);
        self.dirty
    }

    /// A new snapshot when something changed since the last one.
    pub fn snapshot(&mut self, now_ns: u64) -> Option<Arc<Snapshot>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let mut terminations: Vec<Arc<Termination>> = self.records.completed().cloned().collect();
        let under_way = views::in_progress(
            &self.records,
            &self.containers,
            &self.view,
            &self.clock,
            now_ns,
            self.opts.stuck_margin_ns,
        );
        for t in &under_way {
            let stuck = t
                .diagnoses
                .iter()
                .any(|d| d.code == Code::StuckTerminating.as_str());
            if let (true, Some(uid)) = (stuck, &t.uid) {
                if self.stuck_announced.len() >= FINISHED_KEPT {
                    self.stuck_announced.clear();
                }
                if self.stuck_announced.insert(uid.clone()) {
                    self.records.announce(t.clone());
                }
            }
        }
        terminations.extend(under_way);
        Some(Arc::new(Snapshot { terminations }))
    }

    /// Whether a container is ending (its PID 1 exited, or its cgroup went, after
    /// something was seen), so a tick soon may finalize it.
    pub fn ending(&self) -> bool {
        self.containers
            .values()
            .any(|c| c.terminating_since.is_some() && (c.facts.pid1_exit_ns.is_some() || c.gone))
    }

    /// Records completed since the last call (for the Events about them).
    pub fn take_completed(&mut self) -> Vec<Arc<Termination>> {
        self.records.take_new()
    }

    /// An engine's name for a container outside Kubernetes: it names the container in
    /// records and timelines and becomes its `container` label (so a container restarted
    /// under its name keeps its series). Pods' containers are named by the API.
    pub fn engine_named(&mut self, cgroup_id: u64, name: &str) {
        let Some(c) = self.containers.get_mut(&cgroup_id) else {
            return;
        };
        if c.container.cgroup.pod_uid.is_some() || c.name.as_deref() == Some(name) {
            return;
        }
        c.replace(join::Placement {
            name: Some(name.to_string()),
            sandbox: false,
            subject: crate::metrics::Subject::standalone(name),
            stop_signal: None,
            stop_window_ns: None,
        });
        self.dirty = true;
    }

    /// Containers currently tracked (tests, debugging).
    pub fn tracked(&self) -> usize {
        self.containers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::metrics::Metrics;
    use agent_ebpf::{si_code, sig_result};

    fn run(events: &[TaskEvent]) -> Tracker {
        let mut t = Tracker::new(
            TrackerOptions {
                // The test's pids are made up.
                proc_root: None,
                ..TrackerOptions::default()
            },
            Clock::with_offset_ns(0),
            Metrics::new("test").termination,
            0,
        );
        let c = container();
        for e in events {
            t.handle(&c, e);
        }
        t
    }

    /// The testkit container, started at 0, SIGTERMed by the runtime at 1 s, exits 0 at
    /// `exit_ms`.
    fn stopped(t: &mut Tracker, exit_ms: u64) {
        let c = container();
        for e in [
            exec(0, P1, 1, "app"),
            signal(1000, P1, 1, "app", 15, RUNC, sig_result::DELIVERED),
            exit(exit_ms, P1, 1, "app", 0),
        ] {
            t.handle(&c, &e);
        }
    }

    fn last(t: &mut Tracker, now_ms: u64) -> Option<Arc<Termination>> {
        t.tick(now_ms * MS);
        t.snapshot(now_ms * MS)
            .and_then(|s| s.terminations.last().cloned())
    }

    /// The testkit container's pod, its app container at run `id` (restarted `count`
    /// times, the previous run `last`).
    fn pod_update(id: &str, count: i32, last: Option<&str>, at_ms: u64) -> KubeUpdate {
        use crate::kube::model::{sample_pod, ApiPod, ApiTerminated};
        let mut pod = ApiPod {
            ips: vec![],
            ..sample_pod(UID, id, false)
        };
        pod.containers[0].restart_count = count;
        pod.containers[0].last_terminated = last.map(|l| ApiTerminated {
            exit_code: 0,
            reason: Some("Completed".into()),
            container_id: Some(l.into()),
            ..Default::default()
        });
        KubeUpdate::Pod {
            pod: Arc::new(pod),
            at_ns: at_ms * MS,
        }
    }

    #[test]
    fn a_container_restarted_in_the_same_sync_keeps_its_record() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        // (the status names the old run in lastState or not: the new run's higher
        // restartCount shows the old one ended either way; when the record completes)
        for (last, done_ms) in [(Some(a.as_str()), 3_000), (None, 3_000)] {
            let mut t = run(&[]);
            t.kube(pod_update(&a, 0, None, 0), 0);
            t.kube(
                KubeUpdate::KubeletEvent {
                    pod_uid: "6f1c2d3e-1111-2222-3333-444455556666".into(),
                    container: Some("app".into()),
                    reason: "Killing".into(),
                    message: "Container app failed liveness probe, will be restarted".into(),
                    time: None,
                    listed: false,
                    at_ns: 990 * MS,
                },
                990 * MS,
            );
            stopped(&mut t, 1050);
            // kubelet starts the next run in the same sync: the status swaps ids.
            t.kube(pod_update(&b, 1, last, 1100), 1100 * MS);
            assert!(
                last_completed(&mut t, done_ms - 1000).is_none(),
                "waits for the status and Events"
            );
            let term = last_completed(&mut t, done_ms).expect("the old run's record");
            assert_eq!(term.restarted_container.as_deref(), Some("app"), "{term:?}");
            assert_eq!(term.containers[0].name.as_deref(), Some("app"));
            assert_eq!(term.containers[0].outcome.as_deref(), Some("graceful"));
            assert_eq!(term.cause.as_deref(), Some("liveness_probe"));
            assert_eq!(term.restart_count, Some(1));
            let codes: Vec<&str> = term.diagnoses.iter().map(|d| d.code.as_str()).collect();
            assert_eq!(codes, ["LIVENESS_KILLED"]);
        }
    }

    #[test]
    fn quick_restarts_complete_in_the_order_the_runs_ended() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|x| x.repeat(64)).collect();
        let run_of = |i: usize| {
            let path = format!(
                "/kubepods/besteffort/pod6f1c2d3e-1111-2222-3333-444455556666/{}",
                ids[i]
            );
            Arc::new(CgroupContainer {
                cgroup_id: CG + i as u64,
                cgroup: crate::attribution::cgroup_path::parse(&path).expect("path"),
                path,
            })
        };
        let mut t = run(&[]);
        t.kube(pod_update(&ids[0], 0, None, 0), 0);
        // Run 1 crashes at 300 ms, run 2 at 900 ms; the status shows each end at once.
        for (i, (start, end)) in [(0, 300), (500, 900)].into_iter().enumerate() {
            let c = run_of(i);
            t.handle(&c, &exec(start, P1, 1, "app"));
            t.handle(&c, &exit(end, P1, 1, "app", (i as u32 + 1) << 8));
            t.kube(
                pod_update(&ids[i + 1], i as i32 + 1, Some(&ids[i]), end + 50),
                (end + 50) * MS,
            );
        }
        // Both records settle before one tick (the agent was busy): they complete in order.
        t.tick(3_000 * MS);
        let s = t.snapshot(3_000 * MS).expect("snapshot");
        let done: Vec<(Option<i32>, Option<u8>)> = s
            .terminations
            .iter()
            .filter(|t| t.state == crate::report::State::Completed)
            .map(|t| (t.restart_count, t.containers[0].exit_code))
            .collect();
        assert_eq!(done, [(Some(1), Some(1)), (Some(2), Some(2))]);
        // Each run's timeline is its own: run 2's starts after run 1 ended.
        let first_exit = |t: &Termination| {
            t.timeline
                .iter()
                .find(|e| e.what == "container_exit")
                .map(|e| e.at_ns)
        };
        for t in s.terminations.iter().filter(|t| t.restart_count.is_some()) {
            let exit = first_exit(t).expect("its exit");
            assert!(
                t.timeline
                    .iter()
                    .all(|e| e.what != "container_exit" || e.at_ns == exit),
                "one exit per run: {t:#?}"
            );
        }
    }

    #[test]
    fn a_crash_before_the_status_names_the_container_is_still_its_record() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut t = run(&[]);
        // The status names another run: this one looks like the sandbox for now.
        t.kube(pod_update(&b, 0, None, 0), 0);
        let c = container();
        for e in [exec(0, P1, 1, "app"), exit(50, P1, 1, "app", 3 << 8)] {
            t.handle(&c, &e);
        }
        assert!(last_completed(&mut t, 1500).is_none());
        // kubelet reports it a second later, in lastState.
        t.kube(pod_update(&b, 1, Some(&a), 1600), 1600 * MS);
        let term = last_completed(&mut t, 3200).expect("the crashed run's record");
        assert_eq!(term.restarted_container.as_deref(), Some("app"), "{term:?}");
        assert_eq!(term.cause.as_deref(), Some("crash"));
        assert_eq!(term.containers[0].exit_code, Some(3));
    }

    const UID: &str = "6f1c2d3e-1111-2222-3333-444455556666";

    fn watch_down(t: &mut Tracker, at_ms: u64) {
        t.kube(
            KubeUpdate::PodsWatch {
                up: false,
                at_ns: at_ms * MS,
            },
            at_ms * MS,
        );
    }

    fn relisted(t: &mut Tracker, pods: &[&str], at_ms: u64) {
        t.kube(
            KubeUpdate::PodsListed {
                uids: pods.iter().map(|u| u.to_string()).collect(),
                at_ns: at_ms * MS,
            },
            at_ms * MS,
        );
    }

    #[test]
    fn a_pod_is_not_called_stuck_while_the_api_server_is_unreachable() {
        let a = "a".repeat(64);
        let mut t = run(&[]);
        t.kube(pod_update(&a, 0, None, 0), 0);
        // Deleted at 1 s (grace 30 s, margin 30 s: stuck from 61 s if still there).
        let KubeUpdate::Pod { pod, .. } = pod_update(&a, 0, None, 1_000) else {
            unreachable!()
        };
        let mut deleting = (*pod).clone();
        deleting.deletion_timestamp =
            Some(time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(31));
        deleting.deletion_grace_seconds = Some(30);
        t.kube(
            KubeUpdate::Pod {
                pod: Arc::new(deleting.clone()),
                at_ns: 1_000 * MS,
            },
            1_000 * MS,
        );
        let stuck_at = |t: &mut Tracker, now_ms: u64| {
            t.tick(now_ms * MS);
            t.snapshot(now_ms * MS).is_some_and(|s| {
                s.terminations
                    .iter()
                    .any(|r| r.diagnoses.iter().any(|d| d.code == "STUCK_TERMINATING"))
            })
        };
        watch_down(&mut t, 20_000);
        // Its removal cannot be seen: not stuck as far as anyone knows.
        assert!(!stuck_at(&mut t, 200_000));
        // The relist shows it still there: stuck.
        relisted(&mut t, &[UID], 210_000);
        t.kube(
            KubeUpdate::Pod {
                pod: Arc::new(deleting),
                at_ns: 210_000 * MS,
            },
            210_000 * MS,
        );
        assert!(stuck_at(&mut t, 211_000));
    }

    /// The testkit pod's app: SIGTERM at 1 s, a graceful exit at 1.2 s, while the pods
    /// watch has been down since 0.5 s.
    fn stopped_while_unreachable() -> (Tracker, String) {
        let a = "a".repeat(64);
        let mut t = run(&[]);
        t.kube(pod_update(&a, 0, None, 0), 0);
        watch_down(&mut t, 500);
        stopped(&mut t, 1200);
        (t, format!("{UID}/{a}"))
    }

    #[test]
    fn a_pod_deleted_while_the_api_server_is_unreachable_completes_at_the_relist() {
        let (mut t, run_key) = stopped_while_unreachable();
        // Long past the waits for a deletion (3 s) or a status (10 s): it waits on.
        assert!(last_completed(&mut t, 120_000).is_none());
        assert!(t.records.held_for_api(&run_key));
        // The relist: the pod is gone. Its stop was its termination, not a restart.
        relisted(&mut t, &[], 130_000);
        let term = last_completed(&mut t, 130_050).expect("the pod's record");
        assert_eq!(term.restarted_container, None, "{term:#?}");
        assert_eq!(
            (term.namespace.as_deref(), term.pod.as_deref()),
            (Some("shop"), Some("web-1"))
        );
        assert_eq!(term.grace_period_seconds, Some(30.0));
        assert_eq!(term.containers.len(), 1);
        assert_eq!(term.containers[0].name.as_deref(), Some("app"));
        assert_eq!(term.containers[0].outcome.as_deref(), Some("graceful"));
        assert_eq!(term.containers[0].sigterm_to_exit_seconds, Some(0.2));
        assert_eq!(term.cause.as_deref(), Some("delete"));
        let whats: Vec<&str> = term.timeline.iter().map(|e| e.what.as_str()).collect();
        assert!(
            !whats.contains(&"deletion_requested"),
            "nothing invented: {whats:?}"
        );
        let said = term
            .timeline
            .iter()
            .find(|e| e.what == "api_unreachable")
            .expect("the outage on the timeline");
        assert_eq!(said.at_ns, 500 * MS, "from when the watch went down");
        assert!(said.detail.contains("its deletion"), "{}", said.detail);
        assert!(said.detail.contains("not observed"), "{}", said.detail);
        assert_eq!(whats.iter().filter(|w| **w == "pod_removed").count(), 1);
        assert!(term.diagnoses.is_empty(), "{:?}", term.diagnoses);
        assert!(!t.records.held_for_api(&run_key));
        // One record, not two (the run's and the pod's), even after more ticks.
        t.tick(131_000 * MS);
        t.dirty = true;
        let s = t.snapshot(131_000 * MS).expect("snapshot");
        let done = s
            .terminations
            .iter()
            .filter(|r| r.state == crate::report::State::Completed)
            .count();
        assert_eq!(done, 1, "one record, not two: {:#?}", s.terminations);
    }

    #[test]
    fn a_restart_while_the_api_server_is_unreachable_completes_with_the_status_after() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let mut t = run(&[]);
        t.kube(pod_update(&a, 0, None, 0), 0);
        watch_down(&mut t, 500);
        let c = container();
        for e in [exec(0, P1, 1, "app"), exit(1000, P1, 1, "app", 3 << 8)] {
            t.handle(&c, &e);
        }
        assert!(last_completed(&mut t, 60_000).is_none(), "held");
        assert!(t.records.held_for_api(&format!("{UID}/{a}")));
        // The relist shows the restart (the old run in lastState), then its end.
        t.kube(pod_update(&b, 1, Some(&a), 90_000), 90_000 * MS);
        relisted(&mut t, &[UID], 90_000);
        let term = last_completed(&mut t, 91_600).expect("the run's record");
        assert_eq!(term.restarted_container.as_deref(), Some("app"));
        assert_eq!(term.cause.as_deref(), Some("crash"));
        assert_eq!(term.restart_count, Some(1));
        assert_eq!(term.containers[0].exit_code, Some(3));
        assert!(
            term.timeline.iter().all(|e| e.what != "api_unreachable"),
            "the API had its say: {:?}",
            term.timeline
        );
    }

    #[test]
    fn a_record_waits_for_the_api_server_ten_minutes_at_most() {
        let (mut t, run_key) = stopped_while_unreachable();
        let limit_ms = 1200 + super::super::record::API_WAIT_MAX_NS / MS;
        assert!(last_completed(&mut t, limit_ms - 1).is_none());
        assert!(t.records.held_for_api(&run_key));
        let term = last_completed(&mut t, limit_ms).expect("completed without the API");
        let said = term
            .timeline
            .iter()
            .find(|e| e.what == "api_unreachable")
            .expect("said why");
        assert!(
            said.detail.contains("after waiting 600s"),
            "{}",
            said.detail
        );
        assert!(term.timeline.iter().all(|e| e.what != "deletion_requested"));
    }

    fn last_completed(t: &mut Tracker, now_ms: u64) -> Option<Arc<Termination>> {
        t.tick(now_ms * MS);
        t.snapshot(now_ms * MS).and_then(|s| {
            s.terminations
                .iter()
                .rev()
                .find(|t| t.state == crate::report::State::Completed)
                .cloned()
        })
    }

    #[test]
    fn a_container_from_before_the_agent_killed_soon_after_its_start_is_unknown() {
        let seed = |at_kill_ms: u64| {
            let mut t = run(&[]);
            t.observe_container(
                container(),
                &[CgroupProcess {
                    tgid: P1,
                    ns_tgid: 1,
                    ns_level: 1,
                    start_time: 1,
                    comm: "app".into(),
                }],
                true,
            );
            let c = container();
            for e in [
                signal(at_kill_ms, P1, 1, "app", 9, RUNC, sig_result::DELIVERED),
                exit(at_kill_ms + 1, P1, 1, "app", 9),
            ] {
                t.handle(&c, &e);
            }
            last(&mut t, at_kill_ms + 5000).expect("termination")
        };
        // SIGKILL 2 s after the agent started: the SIGTERM may have come just before it.
        let early = seed(2000);
        assert_eq!(early.containers[0].outcome.as_deref(), Some("unknown"));
        assert!(
            early.timeline.iter().any(|e| e.what == "agent_started"),
            "{:?}",
            early.timeline
        );
        assert!(
            early.diagnoses.is_empty(),
            "nothing invented: {:?}",
            early.diagnoses
        );
        // 40 s after: no grace is that long, so no SIGTERM came.
        let late = seed(40_000);
        assert_eq!(
            late.containers[0].outcome.as_deref(),
            Some("killed_without_sigterm")
        );
    }

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
            last(&mut t, 4500).is_none_or(|t| t.state == crate::report::State::InProgress),
            "java is still dying"
        );
        t.handle(&container(), &exit(5500, P2, 6, "java", 9));
        let term = last(&mut t, 7000).expect("termination");
        assert_eq!(term.state, crate::report::State::Completed);
        assert!(
            term.diagnoses[0].message.contains("(java)"),
            "{:?}",
            term.diagnoses
        );
    }

    fn api_pod(host_network: bool, deleting: bool) -> Arc<crate::kube::ApiPod> {
        Arc::new(crate::kube::ApiPod {
            host_network,
            ..crate::kube::model::sample_pod(UID, &"a".repeat(64), deleting)
        })
    }

    /// A pod through deletion, SIGTERM, exit and removal; the completed record.
    fn pod_lifecycle(host_network: bool) -> (Tracker, Arc<Termination>) {
        let uid = "6f1c2d3e-1111-2222-3333-444455556666";
        let mut t = run(&[exec(0, P1, 1, "app")]);
        let pod = |deleting, at_ns| KubeUpdate::Pod {
            pod: api_pod(host_network, deleting),
            at_ns,
        };
        t.kube(pod(false, 100 * MS), 100 * MS);
        assert!(!t.traffic().is_watched(uid), "not before its deletion");
        t.kube(pod(true, 1000 * MS), 1000 * MS);
        assert_eq!(t.traffic().is_watched(uid), !host_network);
        let c = container();
        t.handle(
            &c,
            &signal(1100, P1, 1, "app", 15, RUNC, sig_result::DELIVERED),
        );
        t.handle(&c, &exit(1200, P1, 1, "app", 0));
        if !host_network {
            let marks = t.traffic().get(uid).expect("watched").marks;
            assert_eq!((marks.sigterm_ns, marks.exit_ns), (1100 * MS, 1200 * MS));
        }
        t.tick(2000 * MS);
        t.kube(
            KubeUpdate::PodRemoved {
                uid: uid.into(),
                at_ns: 3000 * MS,
            },
            3000 * MS,
        );
        assert!(!t.traffic().is_watched(uid), "unwatched once gone");
        let term = last(&mut t, 3100).expect("termination");
        assert_eq!(term.state, crate::report::State::Completed);
        (t, term)
    }

    #[test]
    fn a_deleted_pods_addresses_are_watched_until_it_is_gone() {
        let (_, term) = pod_lifecycle(false);
        assert!(
            !term
                .timeline
                .iter()
                .any(|e| e.what == "traffic_not_measured"),
            "{:?}",
            term.timeline
        );
    }

    #[test]
    fn a_host_network_pods_record_says_its_traffic_was_not_measured() {
        let (_, term) = pod_lifecycle(true);
        let e = term
            .timeline
            .iter()
            .find(|e| e.what == "traffic_not_measured")
            .expect("said in the record");
        assert!(e.detail.starts_with("hostNetwork pod"), "{}", e.detail);
        assert!(!term.diagnoses.iter().any(|d| d.code.contains("TRAFFIC")));
    }
}
