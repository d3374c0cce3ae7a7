//! The Events the agent writes (`--emit-events`): one events.k8s.io/v1 Event on the pod
//! per diagnosis of a completed record, reporting controller `gracewatch.io/agent`,
//! reporting instance the node, reason the diagnosis code in CamelCase
//! (`SIGTERM_IGNORED` → `SigtermIgnored`), note the diagnosis text. Repeats of a reason
//! on a pod become an Event series (kube-runtime's `Recorder` patches the series), and
//! writes are rate-limited per pod and per node (token buckets), so a crash-looping pod
//! cannot flood the API server. A failed or skipped write is counted, never fatal.

use std::{collections::HashMap, sync::Arc, time::Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Client,
};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{metrics::KubeMetrics, report::Termination};

pub const REPORTING_CONTROLLER: &str = "gracewatch.io/agent";
/// The API server refuses a longer note.
const MAX_NOTE: usize = 1024;
/// Per pod: a burst of this many Events, then one per [`POD_REFILL_S`].
const POD_BURST: f64 = 5.0;
const POD_REFILL_S: f64 = 60.0;
/// Per node: a burst of this many Events, then one per [`NODE_REFILL_S`].
const NODE_BURST: f64 = 25.0;
const NODE_REFILL_S: f64 = 2.0;
/// Pods whose bucket is remembered.
const POD_BUCKETS: usize = 1024;
/// Records waiting to be written.
pub const QUEUE: usize = 256;

/// `SIGTERM_IGNORED` → `SigtermIgnored`.
pub fn reason(code: &str) -> String {
    code.split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut chars = lower.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// A note the API server accepts: at most 1024 bytes, cut at a character boundary.
pub fn note(text: &str) -> String {
    if text.len() <= MAX_NOTE {
        return text.to_string();
    }
    let mut end = MAX_NOTE - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at_s: f64,
}

impl Bucket {
    fn full(burst: f64, at_s: f64) -> Self {
        Self {
            tokens: burst,
            at_s,
        }
    }

    fn refill(&mut self, burst: f64, refill_s: f64, now_s: f64) {
        let gained = (now_s - self.at_s).max(0.0) / refill_s;
        self.tokens = (self.tokens + gained).min(burst);
        self.at_s = now_s;
    }
}

/// Token buckets per pod and for the node; time in seconds, passed in.
#[derive(Default)]
pub struct Limits {
    node: Option<Bucket>,
    pods: HashMap<String, Bucket>,
}

impl Limits {
    /// Whether one more Event about pod `uid` may be written at `now_s`; takes a token
    /// from both buckets if so.
    pub fn allow(&mut self, uid: &str, now_s: f64) -> bool {
        let node = self
            .node
            .get_or_insert_with(|| Bucket::full(NODE_BURST, now_s));
        node.refill(NODE_BURST, NODE_REFILL_S, now_s);
        if self.pods.len() >= POD_BUCKETS && !self.pods.contains_key(uid) {
            // Full buckets carry no state worth keeping.
            self.pods.retain(|_, b| {
                b.refill(POD_BURST, POD_REFILL_S, now_s);
                b.tokens < POD_BURST
            });
            if self.pods.len() >= POD_BUCKETS {
                return false;
            }
        }
        let pod = self
            .pods
            .entry(uid.to_string())
            .or_insert_with(|| Bucket::full(POD_BURST, now_s));
        pod.refill(POD_BURST, POD_REFILL_S, now_s);
        if node.tokens < 1.0 || pod.tokens < 1.0 {
            return false;
        }
        node.tokens -= 1.0;
        pod.tokens -= 1.0;
        true
    }
}

/// The Events one completed record asks for: (reference, reason, note).
pub fn events_of(t: &Termination) -> Vec<(ObjectReference, String, String)> {
    let (Some(ns), Some(name), Some(uid)) = (&t.namespace, &t.pod, &t.uid) else {
        return Vec::new();
    };
    t.diagnoses
        .iter()
        .map(|d| {
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(ns.clone()),
                name: Some(name.clone()),
                uid: Some(uid.clone()),
                field_path: d
                    .container
                    .as_ref()
                    .map(|c| format!("spec.containers{{{c}}}")),
                ..Default::default()
            };
            (reference, reason(&d.code), note(&d.message))
        })
        .collect()
}

/// Starts the writer; completed records sent to the returned queue get their Events.
pub fn spawn(
    client: Client,
    node: String,
    metrics: Arc<KubeMetrics>,
) -> (mpsc::Sender<Arc<Termination>>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Arc<Termination>>(QUEUE);
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: REPORTING_CONTROLLER.into(),
            instance: Some(node),
        },
    );
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut limits = Limits::default();
        // (pod uid, reason) → when last written: a repeat within kube-runtime's series
        // window (6 minutes) is a series update.
        let mut written: HashMap<(String, String), f64> = HashMap::new();
        while let Some(t) = rx.recv().await {
            for (reference, reason, note) in events_of(&t) {
                let now_s = started.elapsed().as_secs_f64();
                let uid = reference.uid.clone().unwrap_or_default();
                let key = (uid.clone(), reason.clone());
                let kind = match written.get(&key) {
                    Some(at) if now_s - at < 360.0 => "series",
                    _ => "created",
                };
                if !limits.allow(&uid, now_s) {
                    metrics.event(kind, "rate_limited");
                    continue;
                }
                let ev = Event {
                    type_: EventType::Warning,
                    reason: reason.clone(),
                    note: Some(note),
                    action: "Diagnosed".into(),
                    secondary: None,
                };
                match recorder.publish(&ev, &reference).await {
                    Ok(()) => {
                        metrics.event(kind, "ok");
                        if written.len() >= 4096 {
                            written.retain(|_, at| now_s - *at < 360.0);
                        }
                        written.insert(key, now_s);
                    }
                    Err(e) => {
                        metrics.event(kind, "error");
                        tracing::warn!(reason, error = %super::describe(&e), "cannot write an Event");
                    }
                }
            }
        }
    });
    (tx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_camel_case() {
        let cases = [
            ("SIGTERM_IGNORED", "SigtermIgnored"),
            ("FORCED_KILL", "ForcedKill"),
            ("SHELL_DID_NOT_FORWARD_SIGTERM", "ShellDidNotForwardSigterm"),
            ("PRESTOP_EXCEEDED_GRACE", "PrestopExceededGrace"),
            (
                "ENDPOINT_REMOVED_AFTER_SIGTERM",
                "EndpointRemovedAfterSigterm",
            ),
            ("STUCK_TERMINATING", "StuckTerminating"),
            ("CRASH_LOOP", "CrashLoop"),
            ("LIVENESS_KILLED", "LivenessKilled"),
        ];
        for (code, want) in cases {
            assert_eq!(reason(code), want);
        }
    }

    #[test]
    fn notes_are_cut_to_what_the_api_accepts() {
        assert_eq!(note("short"), "short");
        let long = "é".repeat(1000);
        let n = note(&long);
        assert!(n.len() <= MAX_NOTE && n.ends_with("..."), "{}", n.len());
    }

    #[test]
    fn a_crash_looping_pod_cannot_flood_the_api_server() {
        let mut l = Limits::default();
        let allowed = (0..100).filter(|_| l.allow("pod-a", 0.0)).count();
        assert_eq!(allowed, POD_BURST as usize);
        // A minute later, one more.
        assert!(l.allow("pod-a", POD_REFILL_S));
        assert!(!l.allow("pod-a", POD_REFILL_S));
        // The node's bucket caps all pods together.
        let mut l = Limits::default();
        let allowed = (0..100)
            .filter(|i| l.allow(&format!("pod-{i}"), 0.0))
            .count();
        assert_eq!(allowed, NODE_BURST as usize);
        assert!(l.allow("pod-x", NODE_REFILL_S));
        assert!(!l.allow("pod-y", NODE_REFILL_S));
    }
}
