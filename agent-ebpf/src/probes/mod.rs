//! Maps, configuration and the helpers every probe shares: reading a task's identity
//! through BTF-derived offsets, the container filter, and emitting records.

mod cgroup;
mod exec;
mod exit;
mod signal;
mod traffic;

use agent_ebpf::{Config, EventHeader, EventKind, COMM_LEN, EVENT_KIND_SLOTS, FLAG_TRACE_HOST};
use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated},
    macros::map,
    maps::{ring_buf::RingBufEntry, HashMap, PerCpuArray, RingBuf},
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(agent_ebpf::DEFAULT_RING_BYTES, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_SLOTS, 0);

#[map]
static PROBE_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_SLOTS, 0);

/// Counts an event of `kind` the probe had to give up on.
#[inline(always)]
pub(crate) fn probe_error(kind: EventKind) {
    if let Some(slot) = PROBE_ERRORS.get_ptr_mut(kind as u32) {
        unsafe { *slot += 1 };
    }
}

#[map]
static CONTAINER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(16384, 0);

#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::ZERO;

/// Reads one field of [`CONFIG`]; volatile so the compiler cannot fold the compiled-in
/// zero (user space rewrites the value at load time).
macro_rules! conf {
    ($($field:ident).+) => {
        unsafe { core::ptr::read_volatile(&crate::probes::CONFIG.$($field).+) }
    };
}
pub(crate) use conf;

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub(crate) fn read_at<T>(base: u64, off: u32) -> Result<T, i32> {
    if base == 0 {
        return Err(-1);
    }
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }
}

/// A task's own `struct pid` and the depth of its PID namespace (every thread of a group
/// is in its leader's namespace): two reads, all a filter needs.
#[inline(always)]
pub(crate) fn pid_level(task: u64) -> Result<(u64, u32), i32> {
    let pid: u64 = read_at(task, conf!(offsets.task_thread_pid))?;
    let level: u32 = read_at(pid, conf!(offsets.pid_level))?;
    // A PID namespace is at most 32 deep; the bound also keeps the offset sane.
    Ok((pid, level & 31))
}

/// The thread group id of `task` in its namespace at `level`. `pid` is the task's own
/// `struct pid`, which is the group's when the task `leads` its group; otherwise the
/// leader's is read.
#[inline(always)]
pub(crate) fn ns_tgid(task: u64, pid: u64, level: u32, leads: bool) -> Result<u32, i32> {
    let pid = if leads {
        pid
    } else {
        let leader: u64 = read_at(task, conf!(offsets.task_group_leader))?;
        read_at(leader, conf!(offsets.task_thread_pid))?
    };
    let off =
        conf!(offsets.pid_numbers) + level * conf!(offsets.upid_size) + conf!(offsets.upid_nr);
    let nr: i32 = read_at(pid, off)?;
    Ok(nr as u32)
}

/// cgroup v2 id of any task: `task->cgroups->dfl_cgrp->kn->id`.
#[inline(always)]
pub(crate) fn task_cgroup_id(task: u64) -> Result<u64, i32> {
    let cset: u64 = read_at(task, conf!(offsets.task_cgroups))?;
    let cgrp: u64 = read_at(cset, conf!(offsets.css_set_dfl_cgrp))?;
    let kn: u64 = read_at(cgrp, conf!(offsets.cgroup_kn))?;
    read_at(kn, conf!(offsets.kernfs_node_id))
}

/// Whether events about a task in this PID namespace depth and cgroup reach user space:
/// tasks in a non-initial PID namespace, or in a cgroup user space marked as a container.
#[inline(always)]
pub(crate) fn is_traced(ns_level: u32, cgroup_id: u64) -> bool {
    if conf!(flags) & FLAG_TRACE_HOST != 0 || ns_level > 0 {
        return true;
    }
    unsafe { CONTAINER_CGROUPS.get(&cgroup_id).is_some() }
}

/// Header for an event about the current task, or `None` when it is not traced. Costs
/// two reads for a task that is filtered out, three for a traced group leader.
#[inline(always)]
pub(crate) fn current_header(kind: EventKind) -> Result<Option<EventHeader>, i32> {
    let cgroup_id = unsafe { generated::bpf_get_current_cgroup_id() };
    let task = unsafe { generated::bpf_get_current_task() };
    let (pid, ns_level) = pid_level(task)?;
    if !is_traced(ns_level, cgroup_id) {
        return Ok(None);
    }
    current_task_header(kind, cgroup_id, task, pid, ns_level).map(Some)
}

/// Header for an event of `kind` about `cgroup_id` (not the current task's: a cgroup
/// being made or removed), naming the current task that changed it; never filtered.
#[inline(always)]
pub(crate) fn header_about(kind: EventKind, cgroup_id: u64) -> Result<EventHeader, i32> {
    let task = unsafe { generated::bpf_get_current_task() };
    let (pid, ns_level) = pid_level(task)?;
    current_task_header(kind, cgroup_id, task, pid, ns_level)
}

/// The header naming the current `task`, whose own `struct pid` and namespace depth
/// are already read.
#[inline(always)]
fn current_task_header(
    kind: EventKind,
    cgroup_id: u64,
    task: u64,
    pid: u64,
    ns_level: u32,
) -> Result<EventHeader, i32> {
    let pid_tgid = unsafe { generated::bpf_get_current_pid_tgid() };
    let tgid = (pid_tgid >> 32) as u32;
    let ns_tgid = ns_tgid(task, pid, ns_level, pid_tgid as u32 == tgid)?;
    let comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    Ok(EventHeader {
        kind: kind as u32,
        ns_tgid,
        ktime_ns: unsafe { generated::bpf_ktime_get_boot_ns() },
        cgroup_id,
        tgid,
        ns_level,
        comm,
    })
}

/// `bpf_ringbuf_submit` flags and the `bpf_ringbuf_query` selector (uapi bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Space in the ring for a record of `kind`, or `None` (counted as lost) when it is full.
#[inline(always)]
pub(crate) fn reserve<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        if let Some(slot) = LOST.get_ptr_mut(kind as u32) {
            unsafe { *slot += 1 };
        }
    }
    entry
}

/// Hands a filled record to user space. The reader is woken only once enough is waiting:
/// a wake-up per record (an interrupt, a context switch) costs far more than the record.
#[inline(always)]
pub(crate) fn submit<T: 'static>(entry: RingBufEntry<T>) {
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA) >= conf!(wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// Writes a record to the ring buffer, counting it as lost when the ring is full.
#[inline(always)]
pub(crate) fn emit<T: 'static>(kind: EventKind, record: T) {
    if let Some(mut entry) = reserve::<T>(kind) {
        entry.write(record);
        submit(entry);
    }
}

/// Like [`emit`], but wakes the reader at once: for records that end something a user
/// waits to see (a container's PID 1 exiting), which come at the rate containers end,
/// not at the rate of a storm.
#[inline(always)]
pub(crate) fn emit_now<T: 'static>(kind: EventKind, record: T) {
    if let Some(mut entry) = reserve::<T>(kind) {
        entry.write(record);
        submit_now(entry);
    }
}

/// Hands a filled record to user space and wakes the reader at once (see [`emit_now`]).
#[inline(always)]
pub(crate) fn submit_now<T: 'static>(entry: RingBufEntry<T>) {
    entry.submit(BPF_RB_FORCE_WAKEUP);
}
