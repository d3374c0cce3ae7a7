//! Request targets from any client on the network: every one the HTTP parser accepts
//! gets an answer (a status code), never a panic.
#![no_main]

use std::sync::{atomic::AtomicBool, Arc, LazyLock};

use gracewatch::export::http::{HttpState, Router};
use gracewatch::metrics::Metrics;
use gracewatch::report::Snapshot;
use hyper::{Method, Request};
use libfuzzer_sys::fuzz_target;

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    let (tx, snapshot) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    // The receiver outlives the sender: the last snapshot stays readable.
    std::mem::forget(tx);
    Router::new(Arc::new(HttpState {
        metrics: Arc::new(Metrics::new("fuzz")),
        snapshot,
        ready: Arc::new(AtomicBool::new(true)),
    }))
});

fuzz_target!(|data: &[u8]| {
    let (method, target) = match data.split_first() {
        Some((m, rest)) if m % 2 == 0 => (Method::GET, rest),
        Some((_, rest)) => (Method::HEAD, rest),
        None => return,
    };
    let Ok(req) = Request::builder().method(method).uri(target).body(()) else {
        return;
    };
    let resp = ROUTER.respond(&req);
    assert!(resp.status().as_u16() >= 200);
});
