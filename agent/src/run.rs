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
    engine::Engines,
    export::http::{self, HttpState},
    kernel::{drain, LoadOptions, Probes},
    kube::{self, KubeError},
    metrics::Metrics,
    pipeline::Pipeline,
    report::Snapshot,
    termination::{Tracker, TrackerOptions},
};

/// The probes wake the reader only when a quarter of the ring is used; in between it
/// drains the ring this often while records flow, which bounds how late an event is seen.
const RING_POLL: Duration = Duration::from_millis(10);
/// How often the ring timer fires when nothing came for [`QUIET_AFTER`]. The tick drains
/// the ring too, and the probes wake the reader at once for the exit of a container's
/// PID 1, so on an idle node the agent wakes about once a second instead of a hundred
/// times.
const RING_POLL_QUIET: Duration = Duration::from_secs(5);
const QUIET_AFTER: Duration = Duration::from_secs(1);
/// The tracker's tick while a container is ending (its record is due within the
/// linger), so an exit reaches `/metrics` within a few hundred milliseconds.
const TICK_BUSY: Duration = Duration::from_millis(50);
/// The tick when no container is ending: stuck-pod gauges and series expiry only need
/// seconds.
const TICK_IDLE: Duration = Duration::from_secs(1);
/// Kernel-side counters (lost records, probe errors, per-program run time) are read this
/// often (a few syscalls per program), the wall clock resampled and forgotten cgroups
/// dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How often the cgroup tree is walked although the kernel reports every cgroup.
const SAFETY_WALK: Duration = Duration::from_secs(300);

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
            max_grace_ns: args.max_grace_seconds.saturating_mul(1_000_000_000),
            ..TrackerOptions::default()
        },
        Clock::sample(),
        metrics.termination.clone(),
        boot_now_ns(),
    )
    .with_traffic_metrics(metrics.traffic.clone());
    metrics
        .termination
        .set_series_ttl_ns(args.series_ttl_seconds.saturating_mul(1_000_000_000));
    let mut pipeline = Pipeline::new(Attributor::new(resolver), tracker, &metrics);
    // Standalone: container names from the engines' sockets, where there are any.
    let (engines, mut engine_rx) = Engines::new(&args.engine_sockets);
    if args.standalone {
        pipeline = pipeline.with_engines(engines);
    } else {
        drop(engines);
    }
    let (kube_tx, mut kube_rx) = mpsc::channel(4096);
    let mut events_tx = None;
    let watchers = match kube_client {
        Some((client, node)) => {
            tracing::info!(node = %node, "watching this node's pods, their endpoints and kubelet events");
            let mut tasks = Vec::new();
            if args.emit_events {
                let (tx, task) =
                    kube::events::spawn(client.clone(), node.clone(), metrics.kube.clone());
                events_tx = Some(tx);
                tasks.push(task);
            }
            tasks.extend(kube::watch::spawn(
                client,
                node,
                kube_tx,
                metrics.kube.clone(),
            ));
            tasks
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
    let tick = tokio::time::sleep(TICK_IDLE);
    tokio::pin!(tick);
    let mut poll = RingPoll::new();
    // One timer, moved on each poll: a new one per loop would re-register with the
    // timer wheel (and wake the driver) every time round.
    let ring_timer = tokio::time::sleep_until(poll.next());
    tokio::pin!(ring_timer);
    // Cgroups are learned from the kernel as they come and go; a walk is only a safety
    // net, and runs at once when cgroup records were lost in a full ring.
    let mut safety_walk =
        tokio::time::interval_at(tokio::time::Instant::now() + SAFETY_WALK, SAFETY_WALK);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("ring buffer poll")?;
                let drained = drain(guard.get_inner_mut(), |r| pipeline.handle_record(r));
                poll.saw(drained.records);
                // Left ready when the budget ran out, so the next poll returns at once.
                if drained.emptied {
                    guard.clear_ready();
                }
                pipeline.sync_kernel_map(&mut probes);
                hurry(tick.as_mut(), &mut pipeline);
            }
            _ = &mut ring_timer => {
                let drained = drain(ring.get_mut(), |r| pipeline.handle_record(r));
                poll.polled(drained.records);
                ring_timer.as_mut().reset(poll.next());
                pipeline.sync_kernel_map(&mut probes);
                hurry(tick.as_mut(), &mut pipeline);
            }
            Some(update) = kube_rx.recv() => {
                // What the kernel saw before this API change is handled first: records
                // wait in the ring until the next poll, a watch event does not.
                let drained = drain(ring.get_mut(), |r| pipeline.handle_record(r));
                poll.saw(drained.records);
                pipeline.refresh_traffic(&mut probes);
                pipeline.tracker().kube(update, boot_now_ns());
                pipeline.sync_kernel_map(&mut probes);
                hurry(tick.as_mut(), &mut pipeline);
            }
            _ = &mut tick => {
                let drained = drain(ring.get_mut(), |r| pipeline.handle_record(r));
                poll.saw(drained.records);
                pipeline.sync_kernel_map(&mut probes);
                let now = boot_now_ns();
                pipeline.tracker().tick(now);
                for t in pipeline.tracker().take_completed() {
                    if let Some(tx) = &events_tx {
                        if tx.try_send(t).is_err() {
                            metrics.kube.event("created", "dropped");
                        }
                    }
                }
                if let Some(s) = pipeline.tracker().snapshot(now) {
                    snap_tx.send_replace(s);
                }
                let every = if pipeline.tracker().ending() { TICK_BUSY } else { TICK_IDLE };
                tick.as_mut().reset(tokio::time::Instant::now() + every);
            }
            Some(named) = engine_rx.recv() => {
                pipeline.tracker().engine_named(named.cgroup_id, &named.name);
            }
            _ = safety_walk.tick() => walk(&mut pipeline, &mut probes),
            _ = housekeeping.tick() => {
                // Picks up a stepped wall clock.
                pipeline.tracker().set_clock(Clock::sample());
                pipeline.maintain();
                if probes.export_counters(&metrics.kernel) {
                    tracing::warn!("cgroup records were lost in a full ring; walking the cgroup tree");
                    walk(&mut pipeline, &mut probes);
                }
            }
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

/// When to drain the ring next: often while records flow, rarely when the node is quiet.
struct RingPoll {
    at: tokio::time::Instant,
    last_record: tokio::time::Instant,
}

impl RingPoll {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        Self {
            at: now + RING_POLL,
            last_record: now,
        }
    }

    fn next(&self) -> tokio::time::Instant {
        self.at
    }

    /// Records were handled outside a poll.
    fn saw(&mut self, records: usize) {
        if records > 0 {
            self.last_record = tokio::time::Instant::now();
        }
    }

    /// A poll handled `records`; the next one is due after the interval that fits.
    fn polled(&mut self, records: usize) {
        self.saw(records);
        let now = tokio::time::Instant::now();
        let quiet = now.duration_since(self.last_record) >= QUIET_AFTER;
        self.at = now + if quiet { RING_POLL_QUIET } else { RING_POLL };
    }
}

/// Brings the tick forward when a container started ending since it was set.
fn hurry(tick: std::pin::Pin<&mut tokio::time::Sleep>, pipeline: &mut Pipeline) {
    let soon = tokio::time::Instant::now() + TICK_BUSY;
    if tick.deadline() > soon && pipeline.tracker().ending() {
        tick.reset(soon);
    }
}

/// Walks the cgroup tree and mirrors what it found into the kernel's container map.
fn walk(pipeline: &mut Pipeline, probes: &mut Probes) {
    if let Err(e) = pipeline.rescan() {
        tracing::warn!(error = %e, "cgroup walk failed");
    }
    pipeline.sync_kernel_map(probes);
}
