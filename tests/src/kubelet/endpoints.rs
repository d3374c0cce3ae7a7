//! The EndpointSlice controller's part in a deletion: it marks the pod's endpoint
//! terminating after the lag the scenario chooses (kube-proxy and friends follow at their
//! own pace), and removes it once the pod is gone from the API.

use std::{
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::json;

use super::{objects, Node, RunningPod};
use crate::{apiserver::Resource, runc::Stamp};

impl Node {
    /// Marks the endpoint terminating after `lag`, removes it once the pod is gone.
    pub(super) fn endpoint_controller(
        &self,
        pod: &RunningPod,
        lag: Duration,
        removed: mpsc::Receiver<()>,
    ) -> anyhow::Result<Option<Stamp>> {
        let Some(service) = &pod.def.service else {
            return Ok(None);
        };
        let slice = objects::slice_name(&pod.def, service);
        let ns = pod.def.namespace.as_str();
        let deadline = Instant::now() + lag;
        let mut marked = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if marked.is_none() && left.is_zero() {
                self.api.modify(Resource::EndpointSlices, ns, &slice, |s| {
                    s["endpoints"][0]["conditions"] =
                        json!({"ready": false, "serving": false, "terminating": true});
                })?;
                marked = Some(Stamp::now());
            }
            let wait = if marked.is_none() {
                left
            } else {
                Duration::from_secs(60)
            };
            match removed.recv_timeout(wait) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if marked.is_none() {
                        // The pod went before the lag ran out: the controller still
                        // marks it terminating first, then drops it.
                        sleep(deadline.saturating_duration_since(Instant::now()));
                        continue;
                    }
                    self.api.delete(Resource::EndpointSlices, ns, &slice)?;
                    return Ok(marked);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}
