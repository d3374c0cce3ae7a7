//! Loads the probes into the kernel with their configuration, attaches them, and owns the
//! maps user space reads (ring buffer, lost counters) and writes (container cgroups).

use std::path::Path;

use agent_ebpf::{
    Addr, Config, EventKind, TrafficCounters, WatchMarks, CONFIG_GLOBAL, CONTAINER_CGROUPS_MAP,
    EVENTS_MAP, FLAG_EXIT_GROUP_DEAD_ARG, FLAG_TRACE_HOST, LOST_MAP, PROBE_ERRORS_MAP, TRAFFIC_MAP,
    WATCHED_ADDRS_MAP, WATCH_COUNT_MAP,
};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{BtfTracePoint, RawTracePoint},
    Ebpf, EbpfLoader,
};

use super::{btf, KernelError};
use crate::metrics::KernelMetrics;

/// The compiled probes, embedded at build time by `build.rs`.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gracewatch-probes"));

/// How a program attaches to its tracepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A raw tracepoint: the arguments are plain words, kernel memory is read by helper.
    Raw,
    /// A BTF tracepoint (`tp_btf`): loaded against the tracepoint's type in the kernel's
    /// BTF, so the verifier lets the program read the fields of its arguments directly.
    Btf,
}

/// (program name in the object, tracepoint it attaches to, how)
pub const PROGRAMS: [(&str, &str, Attach); 9] = [
    ("signal_generate", "signal_generate", Attach::Btf),
    ("signal_deliver", "signal_deliver", Attach::Btf),
    ("sched_process_exit", "sched_process_exit", Attach::Btf),
    ("sched_process_exec", "sched_process_exec", Attach::Btf),
    ("cgroup_mkdir", "cgroup_mkdir", Attach::Raw),
    ("cgroup_rmdir", "cgroup_rmdir", Attach::Raw),
    ("inet_sock_set_state", "inet_sock_set_state", Attach::Raw),
    ("tcp_probe", "tcp_probe", Attach::Raw),
    ("tcp_send_reset", "tcp_send_reset", Attach::Raw),
];

/// A running total per event kind, as the kernel-side counters keep them.
pub type PerKind = [(EventKind, u64); EventKind::ALL.len()];

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Signal numbers to trace.
    pub signals: Vec<u32>,
    /// Trace host processes too (benchmarks only: everything reaches user space).
    pub trace_host: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: agent_ebpf::DEFAULT_RING_BYTES,
            signals: agent_ebpf::DEFAULT_SIGNALS.to_vec(),
            trace_host: false,
        }
    }
}

/// The loaded, attached probes and the maps user space uses.
pub struct Probes {
    // Dropping the Ebpf detaches the programs, so it lives as long as the probes.
    ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    probe_errors: PerCpuArray<MapData, u64>,
    containers: HashMap<MapData, u64, u8>,
    watched: HashMap<MapData, Addr, WatchMarks>,
    traffic: PerCpuHashMap<MapData, Addr, TrafficCounters>,
    watch_count: Array<MapData, u32>,
    /// cgroup records lost or failed so far (to tell when a walk must fill the gap).
    cgroup_records_lost: u64,
}

impl Probes {
    /// Loads and attaches every probe, returning the probes and the ring to read.
    pub fn load(opts: &LoadOptions) -> Result<(Self, RingBuf<MapData>), KernelError> {
        if opts.ring_bytes < 4096 || !opts.ring_bytes.is_power_of_two() {
            return Err(KernelError::RingSize(opts.ring_bytes));
        }
        raise_memlock_limit();
        let layout = btf::kernel_layout(Path::new(btf::VMLINUX_BTF))?;
        let mut flags = 0;
        if opts.trace_host {
            flags |= FLAG_TRACE_HOST;
        }
        if layout.exit_passes_group_dead {
            flags |= FLAG_EXIT_GROUP_DEAD_ARG;
        }
        let config = Config {
            signal_mask: agent_ebpf::signal_mask(&opts.signals),
            flags,
            // A quarter of the ring: the reader is woken well before it fills, and polls
            // (see `run`) for the rest.
            wakeup_bytes: u64::from(opts.ring_bytes / 4),
            offsets: layout.offsets,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(EVENTS_MAP, opts.ring_bytes)
            .load(PROBES_OBJECT)
            .map_err(|source| KernelError::Load {
                hint: privilege_hint(),
                source: Box::new(source),
            })?;
        // aya's own parse of the kernel BTF, which BTF tracepoints are loaded against.
        let kernel_btf = aya::Btf::from_sys_fs().map_err(|e| KernelError::Btf {
            path: btf::VMLINUX_BTF.to_string(),
            reason: e.to_string(),
        })?;
        for (name, tracepoint, how) in PROGRAMS {
            attach(&mut ebpf, name, tracepoint, how, &kernel_btf)?;
        }
        let ring =
            RingBuf::try_from(take_map(&mut ebpf, EVENTS_MAP)?).map_err(map_err(EVENTS_MAP))?;
        let lost =
            PerCpuArray::try_from(take_map(&mut ebpf, LOST_MAP)?).map_err(map_err(LOST_MAP))?;
        let probe_errors = PerCpuArray::try_from(take_map(&mut ebpf, PROBE_ERRORS_MAP)?)
            .map_err(map_err(PROBE_ERRORS_MAP))?;
        let containers = HashMap::try_from(take_map(&mut ebpf, CONTAINER_CGROUPS_MAP)?)
            .map_err(map_err(CONTAINER_CGROUPS_MAP))?;
        let watched = HashMap::try_from(take_map(&mut ebpf, WATCHED_ADDRS_MAP)?)
            .map_err(map_err(WATCHED_ADDRS_MAP))?;
        let traffic = PerCpuHashMap::try_from(take_map(&mut ebpf, TRAFFIC_MAP)?)
            .map_err(map_err(TRAFFIC_MAP))?;
        let watch_count = Array::try_from(take_map(&mut ebpf, WATCH_COUNT_MAP)?)
            .map_err(map_err(WATCH_COUNT_MAP))?;
        Ok((
            Self {
                ebpf,
                lost,
                probe_errors,
                containers,
                watched,
                traffic,
                watch_count,
                cgroup_records_lost: 0,
            },
            ring,
        ))
    }

    /// Records lost so far because the ring was full, per event kind (summed over CPUs).
    pub fn lost_counts(&self) -> Result<PerKind, KernelError> {
        per_kind(&self.lost, LOST_MAP)
    }

    /// Events the probes gave up on (a kernel read failed), per kind.
    pub fn probe_error_counts(&self) -> Result<PerKind, KernelError> {
        per_kind(&self.probe_errors, PROBE_ERRORS_MAP)
    }

    /// Marks a cgroup as a container's, so tasks in it are traced even when they share the
    /// host PID namespace.
    pub fn add_container_cgroup(&mut self, cgroup_id: u64) -> Result<(), KernelError> {
        self.containers
            .insert(cgroup_id, 1, 0)
            .map_err(map_err(CONTAINER_CGROUPS_MAP))
    }

    pub fn remove_container_cgroup(&mut self, cgroup_id: u64) -> Result<(), KernelError> {
        match self.containers.remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            // Not there (never marked): what removing wanted.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(CONTAINER_CGROUPS_MAP)(e)),
        }
    }

    /// Starts counting a terminating pod's traffic at `addr` (or updates its marks).
    /// Counters start at zero when the address was not watched yet.
    pub fn watch_addr(&mut self, addr: Addr, marks: &WatchMarks) -> Result<(), KernelError> {
        if self.traffic.get(&addr, 0).is_err() {
            let io = |source| KernelError::MapIo {
                name: TRAFFIC_MAP,
                source,
            };
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
            let zero =
                PerCpuValues::try_from(vec![TrafficCounters::default(); cpus]).map_err(io)?;
            self.traffic
                .insert(addr, zero, 0)
                .map_err(map_err(TRAFFIC_MAP))?;
        }
        self.watched
            .insert(addr, *marks, 0)
            .map_err(map_err(WATCHED_ADDRS_MAP))?;
        self.sync_watch_count()
    }

    /// Stops counting at `addr` and forgets its counters.
    pub fn unwatch_addr(&mut self, addr: Addr) -> Result<(), KernelError> {
        let gone = |r: Result<(), aya::maps::MapError>, name: &'static str| match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(name)(e)),
        };
        gone(self.watched.remove(&addr), WATCHED_ADDRS_MAP)?;
        gone(self.traffic.remove(&addr), TRAFFIC_MAP)?;
        self.sync_watch_count()
    }

    /// What the probes counted at a watched address so far, summed over CPUs.
    pub fn traffic(&self, addr: &Addr) -> Option<TrafficCounters> {
        let per_cpu = self.traffic.get(addr, 0).ok()?;
        Some(crate::traffic::sum_cpus(per_cpu.iter()))
    }

    fn sync_watch_count(&mut self) -> Result<(), KernelError> {
        let n = self.watched.keys().filter(|k| k.is_ok()).count() as u32;
        self.watch_count
            .set(0, n, 0)
            .map_err(map_err(WATCH_COUNT_MAP))
    }

    /// Kernel-side run statistics per program: (name, run count, total run time in ns).
    /// Non-zero only while `kernel.bpf_stats_enabled` is 1.
    pub fn run_stats(&self) -> Vec<(String, u64, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((
                    name.to_string(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ))
            })
            .collect()
    }

    /// The kernel-side counters (records lost to a full ring, events the probes gave up
    /// on, program run statistics) into their metrics. True when cgroup records were lost
    /// since the last call: user space then no longer knows every cgroup.
    pub fn export_counters(&mut self, metrics: &KernelMetrics) -> bool {
        let mut cgroups_lost = false;
        match (self.lost_counts(), self.probe_error_counts()) {
            (Ok(lost), Ok(errors)) => {
                metrics.kernel_totals(&lost, &errors);
                let now: u64 = lost
                    .iter()
                    .chain(errors.iter())
                    .filter(|(k, _)| matches!(k, EventKind::CgroupMkdir | EventKind::CgroupRmdir))
                    .map(|(_, n)| n)
                    .sum();
                cgroups_lost = now > self.cgroup_records_lost;
                self.cgroup_records_lost = now;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read kernel-side counters")
            }
        }
        for (program, runs, ns) in self.run_stats() {
            metrics.program_stats(&program, runs, ns);
        }
        cgroups_lost
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (later ones to the memory
/// cgroup); lift the limit so a large ring buffer loads there. Failure is not fatal: on
/// a newer kernel the limit does not matter, on an older one the load error says so.
fn raise_memlock_limit() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!(error = %e, "cannot raise RLIMIT_MEMLOCK (needs CAP_SYS_RESOURCE)");
    }
}

fn per_kind(map: &PerCpuArray<MapData, u64>, name: &'static str) -> Result<PerKind, KernelError> {
    let mut out = EventKind::ALL.map(|k| (k, 0u64));
    for (kind, total) in out.iter_mut() {
        let per_cpu = map.get(&(*kind as u32), 0).map_err(map_err(name))?;
        *total = per_cpu.iter().sum();
    }
    Ok(out)
}

fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    tracepoint: &str,
    how: Attach,
    kernel_btf: &aya::Btf,
) -> Result<(), KernelError> {
    let program = ebpf.program_mut(name).ok_or_else(|| KernelError::Missing {
        what: "program",
        name: name.to_string(),
    })?;
    let program_err = |source: aya::programs::ProgramError| {
        let what = match how {
            Attach::Raw => format!(
                "raw tracepoint {tracepoint}; it needs a kernel >= 4.17 with that tracepoint"
            ),
            Attach::Btf => format!(
                "BTF tracepoint {tracepoint}; it needs a kernel >= 5.5 with BTF and that \
                 tracepoint, and the verifier's word on the program's reads"
            ),
        };
        KernelError::Program {
            program: name.to_string(),
            source: Box::new(source),
            hint: format!(" (attaching {what}){}", privilege_hint()),
        }
    };
    match how {
        Attach::Raw => {
            let program: &mut RawTracePoint = program.try_into().map_err(program_err)?;
            program.load().map_err(program_err)?;
            program.attach(tracepoint).map_err(program_err)?;
        }
        Attach::Btf => {
            let program: &mut BtfTracePoint = program.try_into().map_err(program_err)?;
            program.load(tracepoint, kernel_btf).map_err(program_err)?;
            program.attach().map_err(program_err)?;
        }
    }
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, KernelError> {
    ebpf.take_map(name).ok_or_else(|| KernelError::Missing {
        what: "map",
        name: name.to_string(),
    })
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map {
        name: name.to_string(),
        source: Box::new(source),
    }
}

/// Says which capabilities are missing, when any are; empty when all are present.
fn privilege_hint() -> String {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Some(eff) = effective_caps() else {
        return String::new();
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return String::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    format!(
        "; this process lacks {} (tracing programs need CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN on kernels before 5.8)",
        missing.join(" and ")
    )
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}
