//! Pods as an API server (or a proxy in front of one) could send them: any JSON that
//! deserializes into a `Pod` converts to the agent's model or a `ModelError`.
#![no_main]

use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pod) = serde_json::from_slice::<Pod>(data) else {
        return;
    };
    let _ = gracewatch::kube::model::workload(&pod.metadata);
    if let Ok(model) = gracewatch::kube::model::api_pod(&pod) {
        let _ = model.effective_grace_seconds();
    }
});
