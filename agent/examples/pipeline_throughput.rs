//! User-space hot-path throughput on one core: decode → attribute → track, fed synthetic
//! ring records shaped like a container exec/exit storm with signals mixed in. Reports
//! events/s, with decode alone as the baseline measured in the same run.
//!
//! `cargo run --release -p agent --example pipeline_throughput`

use std::{mem::size_of, time::Instant};

use agent_ebpf::{EventHeader, EventKind, ExecEvent, ExitEvent, SignalGenerateEvent, COMM_LEN};
use gracewatch::{
    attribution::{Attributor, Resolver},
    clock::Clock,
    kernel::decode,
    metrics::Metrics,
    pipeline::Pipeline,
    termination::{Tracker, TrackerOptions},
};

const CONTAINERS: u64 = 50;
const EVENTS: usize = 3_000_000;
const ROUNDS: usize = 5;

fn bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: plain repr(C) integer structs.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn header(kind: EventKind, i: u64) -> EventHeader {
    let mut comm = [0u8; COMM_LEN];
    comm[..4].copy_from_slice(b"true");
    EventHeader {
        kind: kind as u32,
        ktime_ns: 1_000_000 + i * 1000,
        cgroup_id: 1000 + i % CONTAINERS,
        tgid: 10_000 + (i / 2 % 30_000) as u32,
        ns_tgid: 2 + (i / 2 % 30_000) as u32,
        ns_level: 1,
        comm,
    }
}

fn records() -> Vec<Vec<u8>> {
    (0..EVENTS as u64)
        .map(|i| match i % 10 {
            9 => bytes(&SignalGenerateEvent {
                header: header(EventKind::SignalGenerate, i),
                sig: 10,
                code: 0,
                result: 0,
                sender_tgid: 5,
                sender_cgroup_id: 1,
                sender_comm: [0; COMM_LEN],
            }),
            n if n % 2 == 0 => bytes(&ExecEvent {
                header: header(EventKind::Exec, i),
                parent_tgid: 2,
                entered: 0,
            }),
            _ => bytes(&ExitEvent {
                header: header(EventKind::Exit, i),
                exit_code: 0,
                _pad: 0,
            }),
        })
        .collect()
}

fn main() {
    let recs = records();
    let mut decode_rates = Vec::new();
    let mut pipeline_rates = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let mut ok = 0usize;
        for r in &recs {
            ok += usize::from(decode(std::hint::black_box(r)).is_ok());
        }
        assert_eq!(ok, EVENTS);
        decode_rates.push(EVENTS as f64 / t.elapsed().as_secs_f64());

        let metrics = Metrics::new("bench");
        let mut attributor = Attributor::new(Resolver::with_root(std::env::temp_dir()));
        for c in 0..CONTAINERS {
            let path = format!(
                "/kubepods/besteffort/pod6f1c2d3e-1111-2222-3333-{:012x}/{:064x}",
                c, c
            );
            attributor
                .insert(1000 + c, &path)
                .expect("container path parses");
        }
        let tracker = Tracker::new(
            TrackerOptions::default(),
            Clock::sample(),
            metrics.termination.clone(),
            0,
        );
        let mut p = Pipeline::new(attributor, tracker, &metrics);
        let t = Instant::now();
        for r in &recs {
            p.handle_record(r);
        }
        pipeline_rates.push(EVENTS as f64 / t.elapsed().as_secs_f64());
        let text = metrics.encode().expect("metrics");
        for reason in ["not_container", "unknown_cgroup"] {
            let series = format!("gracewatch_unattributed_events_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&series), "every event attributed ({reason})");
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let d = median(&mut decode_rates);
    let p = median(&mut pipeline_rates);
    println!("user-space pipeline, {EVENTS} records x {ROUNDS} rounds, one core (median):");
    println!("  decode only (baseline):        {:>12.0} events/s", d);
    println!("  decode + attribute + track:    {:>12.0} events/s  ({:.2}x the baseline's cost per event, target >= 1,000,000/s)", p, d / p);
}
