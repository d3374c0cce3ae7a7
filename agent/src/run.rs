//! `gracewatch run`: wires the stages together (probes, attribution, the Kubernetes
//! watchers, the tracker, the HTTP server) and runs the event loop that feeds them: ring
//! records and API updates in, timers for finalizing, cgroup walks and kernel counters,
//! snapshots out to the HTTP side.

use std::{
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    io::{unix::AsyncFd, Interest},
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    attribution::{Attributor, Resolver},
    cli::RunArgs,
    clock::{boot_now_ns, Clock},
    export::http::{self, HttpState},
    kernel::{drain, LoadOptions, Probes},
    kube::{self, KubeError},
    metrics::Metrics,
    pipeline::Pipeline,
    report::Snapshot,
    termination::{Tracker, TrackerOptions},
};

/// The probes wake the reader only when a quarter of the ring is used; in between it
/// drains the ring this often, which bounds how late an event is seen.
const RING_POLL: Duration = Duration::from_millis(10);

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mode = if args.standalone {
        "standalone"
    } else {
        "kubernetes"
    };
    // Kubernetes mode fails early and clearly, before anything is loaded.
    let kube_client = if args.standalone {
        None
    } else {
        let node = args
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(KubeError::NodeNameMissing)?;
        let client = kube::client(args.kubeconfig.as_deref()).await?;
        Some((client, node))
    };
    let metrics = Arc::new(Metrics::new(mode));
    let ready = Arc::new(AtomicBool::new(false));
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let http_state = Arc::new(HttpState {
        metrics: metrics.clone(),
        snapshot: snap_rx,
        ready: ready.clone(),
    });
    let server = tokio::spawn(http::serve(listener, http_state));

    let mut signals: Vec<u32> = args.signals.iter().map(|s| s.0).collect();
    signals.extend([9, 15]);
    let load = LoadOptions {
        ring_bytes: args.ring_buffer_bytes,
        signals,
        trace_host: args.trace_host,
    };
    let (mut probes, ring) = Probes::load(&load).context("cannot start the kernel probes")?;
    let resolver = Resolver::new(args.cgroup_root.as_deref())?;
    tracing::info!(cgroup_v2 = %resolver.root().display(), listen = %args.listen, mode, "probes attached");
    let tracker = Tracker::new(
        TrackerOptions {
            history: args.history,
            stuck_margin_ns: args.stuck_margin_seconds.saturating_mul(1_000_000_000),
            ..TrackerOptions::default()
        },
        Clock::sample(),
        metrics.termination.clone(),
    );
    let mut pipeline = Pipeline::new(Attributor::new(resolver), tracker, &metrics);
    let (kube_tx, mut kube_rx) = mpsc::channel(4096);
    let watchers = match kube_client {
        Some((client, node)) => {
            tracing::info!(node = %node, "watching this node's pods, their endpoints and kubelet events");
            kube::watch::spawn(client, node, kube_tx, metrics.kube.clone())
        }
        None => {
            drop(kube_tx);
            Vec::new()
        }
    };
    pipeline.rescan().context("initial cgroup walk")?;
    pipeline.sync_kernel_map(&mut probes);
    ready.store(true, Ordering::Release);

    // SAFETY: the RingBuf owns its map fd and keeps it open for as long as the AsyncFd
    // owns the RingBuf; nothing else closes or replaces it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("ring buffer fd")?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ring_poll = tokio::time::interval(RING_POLL);
    ring_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rescan = tokio::time::interval(Duration::from_secs(2));
    let mut lost_poll = tokio::time::interval(Duration::from_secs(1));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer poll")?;
                // Left ready when the budget ran out, so the next poll returns at once.
                if drain(guard.get_inner_mut(), |r| pipeline.handle_record(r)) {
                    guard.clear_ready();
                }
                pipeline.sync_kernel_map(&mut probes);
            }
            _ = ring_poll.tick() => {
                drain(ring.get_mut(), |r| pipeline.handle_record(r));
                pipeline.sync_kernel_map(&mut probes);
            }
            Some(update) = kube_rx.recv() => {
                // What the kernel saw before this API change is handled first: records
                // wait in the ring for up to RING_POLL, a watch event does not.
                drain(ring.get_mut(), |r| pipeline.handle_record(r));
                pipeline.tracker().kube(update, boot_now_ns());
            }
            _ = tick.tick() => {
                let now = boot_now_ns();
                pipeline.tracker().tick(now);
                if let Some(s) = pipeline.tracker().snapshot(now) {
                    snap_tx.send_replace(s);
                }
            }
            _ = rescan.tick() => {
                // Picks up a stepped wall clock.
                pipeline.tracker().set_clock(Clock::sample());
                if let Err(e) = pipeline.rescan() {
                    tracing::warn!(error = %e, "cgroup walk failed");
                }
                pipeline.sync_kernel_map(&mut probes);
            }
            _ = lost_poll.tick() => probes.export_counters(&metrics.kernel),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    probes.export_counters(&metrics.kernel);
    server.abort();
    for w in watchers {
        w.abort();
    }
    Ok(())
}
