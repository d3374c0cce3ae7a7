//! The kernel/user ABI of Gracewatch: every record the probes write to the ring buffer,
//! the read-only configuration user space hands to the probes at load time, and the
//! names of the maps both sides share.
//!
//! Layout rules: `#[repr(C)]`, `Copy`, explicit padding, no `bool`, and a size assertion
//! for each type, so a change on one side that the other does not follow fails to build.
#![no_std]

use core::mem::size_of;

/// Length of `task_struct.comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// Name of the ring buffer map that carries every event.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU array of `u64`, indexed by [`EventKind`]: records lost because the ring was full.
pub const LOST_MAP: &str = "LOST";
/// Per-CPU array of `u64`, indexed by [`EventKind`]: events a probe could not build because
/// a kernel read failed.
pub const PROBE_ERRORS_MAP: &str = "PROBE_ERRORS";
/// Hash map `cgroup id (u64) -> u8`: cgroups user space knows to be containers. Lets a
/// container that shares the host PID namespace (`hostPID: true`) be traced too.
pub const CONTAINER_CGROUPS_MAP: &str = "CONTAINER_CGROUPS";
/// Name of the read-only global holding [`Config`].
pub const CONFIG_GLOBAL: &str = "CONFIG";
/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// What a record is; the first field of every record's header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    SignalGenerate = 1,
    SignalDeliver = 2,
    Exit = 3,
    Exec = 4,
    CgroupMkdir = 5,
    CgroupRmdir = 6,
}

/// Number of slots in [`LOST_MAP`] (slot 0 is unused so a kind is its own index).
pub const EVENT_KIND_SLOTS: u32 = 7;

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::SignalGenerate,
        EventKind::SignalDeliver,
        EventKind::Exit,
        EventKind::Exec,
        EventKind::CgroupMkdir,
        EventKind::CgroupRmdir,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::SignalGenerate),
            2 => Some(Self::SignalDeliver),
            3 => Some(Self::Exit),
            4 => Some(Self::Exec),
            5 => Some(Self::CgroupMkdir),
            6 => Some(Self::CgroupRmdir),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::SignalGenerate => "signal_generate",
            Self::SignalDeliver => "signal_deliver",
            Self::Exit => "exit",
            Self::Exec => "exec",
            Self::CgroupMkdir => "cgroup_mkdir",
            Self::CgroupRmdir => "cgroup_rmdir",
        }
    }

    /// Size in bytes of a record of this kind.
    pub fn record_size(self) -> usize {
        match self {
            Self::SignalGenerate => size_of::<SignalGenerateEvent>(),
            Self::SignalDeliver => size_of::<SignalDeliverEvent>(),
            Self::Exit => size_of::<ExitEvent>(),
            Self::Exec => size_of::<ExecEvent>(),
            Self::CgroupMkdir => size_of::<CgroupMkdirEvent>(),
            Self::CgroupRmdir => size_of::<CgroupRmdirEvent>(),
        }
    }
}

/// First part of every record. "Task" is the process the event is about: the target of
/// a signal, the process that received a signal, exited or exec'd.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Thread group id of the task as seen in its own PID namespace (1 = container init).
    pub ns_tgid: u32,
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, nanoseconds.
    pub ktime_ns: u64,
    /// cgroup v2 id of the task (inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Task's thread group id in the initial PID namespace.
    pub tgid: u32,
    /// Depth of the task's PID namespace (0 = the host's).
    pub ns_level: u32,
    /// Task's command name, NUL padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<EventHeader>() == 48);

/// `signal_generate` result values (enum trace_sig_result in the kernel).
pub mod sig_result {
    pub const DELIVERED: u32 = 0;
    pub const IGNORED: u32 = 1;
    pub const ALREADY_PENDING: u32 = 2;
    pub const OVERFLOW_FAIL: u32 = 3;
    pub const LOSE_INFO: u32 = 4;
}

/// `si_code` values the classifier cares about.
pub mod si_code {
    /// Sent by kill(2) and friends.
    pub const SI_USER: i32 = 0;
    /// Sent by the kernel (OOM killer, PID namespace teardown).
    pub const SI_KERNEL: i32 = 0x80;
    /// Sent by sigqueue(3).
    pub const SI_QUEUE: i32 = -1;
    /// Sent by tkill/tgkill.
    pub const SI_TKILL: i32 = -6;
}

/// A signal was generated for a task: who sent which signal, and what became of it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalGenerateEvent {
    pub header: EventHeader,
    pub sig: u32,
    /// `si_code` (SI_USER for NOINFO, SI_KERNEL for PRIV, as the tracepoint reports).
    pub code: i32,
    /// A [`sig_result`] value.
    pub result: u32,
    /// Thread group id (initial PID namespace) of the sender, `current` when the signal
    /// was generated.
    pub sender_tgid: u32,
    pub sender_cgroup_id: u64,
    pub sender_comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<SignalGenerateEvent>() == 88);

/// Disposition values of `sa_handler`.
pub mod handler {
    pub const SIG_DFL: u64 = 0;
    pub const SIG_IGN: u64 = 1;
}

/// A task dequeued a signal and is about to act on it (run a handler, die, stop).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalDeliverEvent {
    pub header: EventHeader,
    pub sig: u32,
    pub _pad: u32,
    /// `sa_handler` at delivery: [`handler::SIG_DFL`], [`handler::SIG_IGN`] or an address.
    pub sa_handler: u64,
}
const _: () = assert!(size_of::<SignalDeliverEvent>() == 64);

/// The last thread of a thread group exited (one record per process).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task_struct.exit_code`: `status << 8` for exit(status), the signal number (plus
    /// 0x80 for a core dump) for a death by signal.
    pub exit_code: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExitEvent>() == 56);

/// A task exec'd a new program (the header says which task and what it is called now).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Thread group id (initial PID namespace) of the task's parent.
    pub parent_tgid: u32,
    /// 1 when the parent is outside the task's PID namespace or cgroup: the program was
    /// started from outside the container (runc exec: an exec hook or probe, `kubectl
    /// exec`), or it is the container's own init.
    pub entered: u32,
}
const _: () = assert!(size_of::<ExecEvent>() == 56);

/// Longest cgroup path a [`CgroupMkdirEvent`] carries, with its NUL. Runtime-made paths
/// are 70-200 bytes; a longer one arrives cut and user space falls back to a walk.
pub const CGROUP_PATH_LEN: usize = 512;

/// A cgroup was created in the cgroup v2 hierarchy. The header's `cgroup_id` is the new
/// cgroup's; its task fields are the creator's (runc, systemd, ...). Learning containers
/// from this, rather than from walks, resolves containers that die within milliseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupMkdirEvent {
    pub header: EventHeader,
    /// Bytes of `path` the kernel wrote, NUL included ([`CGROUP_PATH_LEN`]: maybe cut).
    pub path_len: u32,
    pub _pad: u32,
    /// Path relative to the hierarchy's root, starting with `/`, NUL terminated.
    pub path: [u8; CGROUP_PATH_LEN],
}
const _: () = assert!(size_of::<CgroupMkdirEvent>() == 48 + 8 + CGROUP_PATH_LEN);

/// A cgroup v2 directory was removed (the header's `cgroup_id` is the removed cgroup's).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupRmdirEvent {
    pub header: EventHeader,
}
const _: () = assert!(size_of::<CgroupRmdirEvent>() == 48);

/// Byte offsets of the kernel struct fields the probes read, found in the running
/// kernel's BTF by user space at start-up. Reading `task_struct` through offsets found
/// at run time, rather than compiled in, keeps one build working across kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_exit_code: u32,
    pub task_group_leader: u32,
    pub task_real_parent: u32,
    pub task_thread_pid: u32,
    pub task_signal: u32,
    pub task_cgroups: u32,
    /// `struct pid.level`
    pub pid_level: u32,
    /// `struct pid.numbers` (array of `struct upid`)
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`
    pub upid_size: u32,
    /// `struct upid.nr`
    pub upid_nr: u32,
    /// `struct signal_struct.live` (atomic_t)
    pub signal_live: u32,
    /// `struct css_set.dfl_cgrp`
    pub css_set_dfl_cgrp: u32,
    /// `struct cgroup.kn`
    pub cgroup_kn: u32,
    /// `struct cgroup.root`
    pub cgroup_root: u32,
    /// `struct cgroup_root.hierarchy_id` (0: the default, v2 hierarchy)
    pub cgroup_root_hierarchy_id: u32,
    /// `struct task_struct.pid` (the thread's id; equal to `tgid` for a group leader)
    pub task_pid: u32,
    /// `struct kernfs_node.id`
    pub kernfs_node_id: u32,
    /// `struct k_sigaction.sa` + `struct sigaction.sa_handler`
    pub ksigaction_handler: u32,
    /// `struct sock_common.skc_family` (u16)
    pub skc_family: u32,
    /// `struct sock_common.skc_rcv_saddr` (IPv4 local address)
    pub skc_rcv_saddr: u32,
    /// `struct sock_common.skc_v6_rcv_saddr` (IPv6 local address, v4-mapped on a
    /// dual-stack socket)
    pub skc_v6_rcv_saddr: u32,
    /// `struct sk_buff.len`
    pub skb_len: u32,
    /// `struct sk_buff.data`
    pub skb_data: u32,
    /// `struct sk_buff.head`
    pub skb_head: u32,
    /// `struct sk_buff.network_header` (u16 offset from `head`)
    pub skb_network_header: u32,
    /// `struct sock_common.skc_num` (local port, host order)
    pub skc_num: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 112);

/// Configuration handed to the probes as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Bit `n` set: signal number `n` is traced.
    pub signal_mask: u64,
    /// Bit set in [`Config::flags`]: trace only tasks in a PID namespace other than the
    /// host's, or in a cgroup of [`CONTAINER_CGROUPS_MAP`].
    pub flags: u64,
    /// Records are submitted without waking the reader until this many bytes wait in the
    /// ring (a wake-up per record costs more than the record); the reader also polls.
    pub wakeup_bytes: u64,
    pub offsets: KernelOffsets,
}
const _: () = assert!(size_of::<Config>() == 136);

/// [`Config::flags`]: trace every task, containers or not (benchmarks and debugging).
pub const FLAG_TRACE_HOST: u64 = 1;
/// [`Config::flags`]: the kernel's `sched_process_exit` tracepoint passes `group_dead`
/// (Linux 6.x): the exit probe need not read `signal->live` for every thread's exit.
pub const FLAG_EXIT_GROUP_DEAD_ARG: u64 = 2;

impl KernelOffsets {
    pub const ZERO: KernelOffsets = KernelOffsets {
        task_tgid: 0,
        task_comm: 0,
        task_exit_code: 0,
        task_group_leader: 0,
        task_real_parent: 0,
        task_thread_pid: 0,
        task_signal: 0,
        task_cgroups: 0,
        pid_level: 0,
        pid_numbers: 0,
        upid_size: 0,
        upid_nr: 0,
        signal_live: 0,
        css_set_dfl_cgrp: 0,
        cgroup_kn: 0,
        cgroup_root: 0,
        cgroup_root_hierarchy_id: 0,
        task_pid: 0,
        kernfs_node_id: 0,
        ksigaction_handler: 0,
        skc_family: 0,
        skc_rcv_saddr: 0,
        skc_v6_rcv_saddr: 0,
        skb_len: 0,
        skb_data: 0,
        skb_head: 0,
        skb_network_header: 0,
        skc_num: 0,
    };
}

impl Config {
    /// The value compiled into the object; user space always overrides it at load.
    pub const ZERO: Config = Config {
        signal_mask: 0,
        flags: 0,
        wakeup_bytes: 0,
        offsets: KernelOffsets::ZERO,
    };
}

/// The signal mask for a list of signal numbers (numbers outside 1..=63 are skipped).
pub const fn signal_mask(signals: &[u32]) -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < signals.len() {
        let s = signals[i];
        if s >= 1 && s < 64 {
            mask |= 1 << s;
        }
        i += 1;
    }
    mask
}

/// Default traced signals: HUP, INT, QUIT, USR1, USR2, TERM, KILL (1, 2, 3, 10, 12, 15, 9).
pub const DEFAULT_SIGNALS: [u32; 7] = [1, 2, 3, 9, 10, 12, 15];

/// Hash map `address -> WatchMarks`: the addresses of terminating pods, written by user
/// space only (when a pod's deletion is seen; removed when the pod is gone). The traffic
/// probes return at once for any other address.
pub const WATCHED_ADDRS_MAP: &str = "WATCHED_ADDRS";
/// Per-CPU hash map `address -> TrafficCounters`: what the traffic probes counted for a
/// watched address (user space sums the CPUs). User space creates the entry (zeroed) with the watch and deletes it with it;
/// the probes only update entries that exist, so a busy pod can never add records.
pub const TRAFFIC_MAP: &str = "TRAFFIC";
/// LRU hash map `struct sock * (u64) -> boot ns`: when an inbound connection to a watched
/// address reached ESTABLISHED, to tell payload on connections opened after the
/// endpoint's removal from payload on keep-alive connections opened before it.
pub const TRAFFIC_SOCKS_MAP: &str = "TRAFFIC_SOCKS";
/// Array of one `u32`: how many addresses are watched (0: every traffic probe returns
/// before touching the socket, so a node with no terminating pod pays one array read).
pub const WATCH_COUNT_MAP: &str = "WATCH_COUNT";
/// Capacity of [`WATCHED_ADDRS_MAP`] and [`TRAFFIC_MAP`].
pub const MAX_WATCHED_ADDRS: u32 = 4096;

/// A pod address as the maps key it: IPv6, with IPv4 as `::ffff:a.b.c.d` (how a
/// dual-stack socket sees an IPv4 peer too).
pub type Addr = [u8; 16];

/// The moments of a watched pod's termination, boot clock ns (0: not yet), written by user
/// space as it observes them; the probes compare each event's time with them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchMarks {
    /// The endpoint left its Services.
    pub removal_ns: u64,
    /// The first SIGTERM (or stop signal) to one of its containers.
    pub sigterm_ns: u64,
    /// Its last container exited.
    pub exit_ns: u64,
    /// Ports the pod listened on at its deletion (0: free slot; all 0: not known, and
    /// every established connection of the address counts as inbound). Payload on a
    /// connection whose opening was not seen counts only when its local port is one of
    /// these, so replies to the pod's own outbound calls are not taken for inbound data.
    pub ports: [u16; MAX_WATCHED_PORTS],
}
const _: () = assert!(size_of::<WatchMarks>() == 40);

/// Listening ports kept per watched address.
pub const MAX_WATCHED_PORTS: usize = 8;

/// Per watched address and CPU, counted by the probes (first/last are boot ns, 0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Inbound connections that reached ESTABLISHED after the removal.
    pub conns_after_removal: u64,
    pub conn_removal_first_ns: u64,
    pub conn_removal_last_ns: u64,
    /// Inbound connections that reached ESTABLISHED after the SIGTERM.
    pub conns_after_sigterm: u64,
    pub conn_sigterm_first_ns: u64,
    pub conn_sigterm_last_ns: u64,
    /// Payload bytes received on inbound connections after the removal (all of them).
    pub bytes_after_removal: u64,
    pub data_first_ns: u64,
    pub data_last_ns: u64,
    /// The part of `bytes_after_removal` that came over connections established before
    /// the removal (keep-alive clients).
    pub keepalive_bytes: u64,
    pub keepalive_first_ns: u64,
    pub keepalive_last_ns: u64,
    /// TCP resets sent from the address after the pod's exit.
    pub resets_after_exit: u64,
    pub reset_first_ns: u64,
    pub reset_last_ns: u64,
}
const _: () = assert!(size_of::<TrafficCounters>() == 120);

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are #[repr(C)], Copy, and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::WatchMarks {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
