//! `gracewatch run`: loads the probes, then runs the event loop that drains the ring
//! buffer into the pipeline, finalizes terminations, walks cgroups, exports lost-event
//! counts and publishes snapshots for the HTTP side.

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
    attribution::Resolver,
    cli::RunArgs,
    clock::{boot_now_ns, Clock},
    export::{
        http::{self, HttpState},
        metrics::{KindLabels, ProgramLabels},
        Metrics,
    },
    kernel::{LoadOptions, Probes},
    kube::{self, KubeError},
    pipeline::Pipeline,
    termination::{Snapshot, Tracker, TrackerOptions},
};

/// Records handled per wake-up before the loop looks at its timers again.
const DRAIN_BUDGET: usize = 16 * 1024;
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
        metrics.clone(),
    );
    let mut pipeline = Pipeline::new(resolver, tracker, metrics.clone());
    let (kube_tx, mut kube_rx) = mpsc::channel(4096);
    let watchers = match kube_client {
        Some((client, node)) => {
            tracing::info!(node = %node, "watching this node's pods, their endpoints and kubelet events");
            kube::watch::spawn(client, node, kube_tx, metrics.clone())
        }
        None => {
            drop(kube_tx);
            Vec::new()
        }
    };
    pipeline.rescan().context("initial cgroup walk")?;
    sync_container_map(&mut pipeline, &mut probes);
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
    let mut lost_seen = [0u64; 10];
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer poll")?;
                // Left ready when the budget ran out, so the next poll returns at once.
                if drain(guard.get_inner_mut(), &mut pipeline) {
                    guard.clear_ready();
                }
                sync_container_map(&mut pipeline, &mut probes);
            }
            _ = ring_poll.tick() => {
                drain(ring.get_mut(), &mut pipeline);
                sync_container_map(&mut pipeline, &mut probes);
            }
            Some(update) = kube_rx.recv() => {
                // What the kernel saw before this API change is handled first: records
                // wait in the ring for up to RING_POLL, a watch event does not.
                drain(ring.get_mut(), &mut pipeline);
                pipeline.tracker.kube(update);
            }
            _ = tick.tick() => {
                let now = boot_now_ns();
                pipeline.tracker.tick(now);
                if let Some(s) = pipeline.tracker.snapshot(now) {
                    snap_tx.send_replace(s);
                }
            }
            _ = rescan.tick() => {
                // Picks up a stepped wall clock.
                pipeline.tracker.set_clock(Clock::sample());
                if let Err(e) = pipeline.rescan() {
                    tracing::warn!(error = %e, "cgroup walk failed");
                }
                sync_container_map(&mut pipeline, &mut probes);
            }
            _ = lost_poll.tick() => {
                export_lost(&probes, &metrics, &mut lost_seen);
                export_run_stats(&probes, &metrics);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    export_lost(&probes, &metrics, &mut lost_seen);
    server.abort();
    for w in watchers {
        w.abort();
    }
    Ok(())
}

/// Handles up to [`DRAIN_BUDGET`] records; true when the ring was emptied.
fn drain(rb: &mut aya::maps::RingBuf<aya::maps::MapData>, pipeline: &mut Pipeline) -> bool {
    for _ in 0..DRAIN_BUDGET {
        match rb.next() {
            Some(item) => pipeline.handle_record(&item),
            None => return true,
        }
    }
    false
}

fn sync_container_map(pipeline: &mut Pipeline, probes: &mut Probes) {
    for id in pipeline.added_cgroups.drain(..) {
        if let Err(e) = probes.add_container_cgroup(id) {
            tracing::warn!(error = %e, cgroup_id = id, "cannot mark container cgroup");
        }
    }
    for id in pipeline.removed_cgroups.drain(..) {
        if let Err(e) = probes.remove_container_cgroup(id) {
            tracing::warn!(error = %e, cgroup_id = id, "cannot unmark container cgroup");
        }
    }
}

/// Kernel-side counters (ring-full losses, probe failures) into their metrics, as deltas.
fn export_lost(probes: &Probes, metrics: &Metrics, seen: &mut [u64; 10]) {
    let sources = [
        (probes.lost_counts(), &metrics.bpf_events_lost, 0usize),
        (
            probes.probe_error_counts(),
            &metrics.bpf_probe_errors,
            5usize,
        ),
    ];
    for (counts, family, base) in sources {
        match counts {
            Ok(counts) => {
                for (kind, total) in counts {
                    let slot = &mut seen[base + kind as usize];
                    if total > *slot {
                        family
                            .get_or_create(&KindLabels { kind: kind.name() })
                            .inc_by(total - *slot);
                        *slot = total;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read kernel-side counters"),
        }
    }
}

fn export_run_stats(probes: &Probes, metrics: &Metrics) {
    for (program, runs, ns) in probes.run_stats() {
        let labels = ProgramLabels { program };
        metrics
            .bpf_program_runs
            .get_or_create(&labels)
            .set(runs as i64);
        metrics
            .bpf_program_run_ns
            .get_or_create(&labels)
            .set(ns as i64);
    }
}
