//! Maps, configuration and the helpers every probe shares: reading a task's identity
//! through BTF-derived offsets, the container filter, and emitting records.
//!
//! The traced-event probes are BTF tracepoints (`tp_btf`): the verifier knows the type of
//! their `task_struct *` arguments, so a field is a plain load ([`Kptr`]) rather than a
//! `bpf_probe_read_kernel` call. The cgroup and traffic probes are raw tracepoints and
//! read through the helper ([`read_at`]).

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

/// Like [`task_pid_level`], for a raw tracepoint: two helper reads.
#[inline(always)]
fn pid_level(task: u64) -> Result<(u64, u32), i32> {
    let pid: u64 = read_at(task, conf!(offsets.task_thread_pid))?;
    let level: u32 = read_at(pid, conf!(offsets.pid_level))?;
    // A PID namespace is at most 32 deep; the bound also keeps the offset sane.
    Ok((pid, level & 31))
}

/// Like [`task_ns_tgid`], for a raw tracepoint.
#[inline(always)]
fn ns_tgid(task: u64, pid: u64, level: u32, leads: bool) -> Result<u32, i32> {
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

/// A kernel pointer whose BTF type the verifier knows: a `tp_btf` argument, the current
/// task from `bpf_get_current_task_btf`, or a pointer field read through one of those.
/// Its fields are plain loads, which the verifier turns into fault-tolerant kernel loads
/// (~1 ns, against ~60-120 ns for a helper call). The verifier accepts such a load only at
/// an offset it knows: the offsets come from [`CONFIG`], a frozen read-only map whose
/// values it reads as constants.
#[derive(Clone, Copy)]
pub(crate) struct Kptr(*const u8);

impl Kptr {
    #[inline(always)]
    pub(crate) fn new(p: *const u8) -> Result<Self, i32> {
        if p.is_null() {
            Err(-1)
        } else {
            Ok(Self(p))
        }
    }

    /// The field of type `T` at byte offset `off`.
    #[inline(always)]
    pub(crate) fn get<T: Copy>(self, off: u32) -> T {
        unsafe { core::ptr::read(self.0.add(off as usize).cast::<T>()) }
    }

    /// The pointer field at `off`, an error when it is NULL. Checked before anything is
    /// read through it: the verifier refuses arithmetic on a pointer that may be NULL.
    #[inline(always)]
    pub(crate) fn ptr(self, off: u32) -> Result<Kptr, i32> {
        Kptr::new(self.get(off))
    }
}

/// A task's own `struct pid` and the depth of its PID namespace (every thread of a group
/// is in its leader's namespace): all a filter needs.
#[inline(always)]
pub(crate) fn task_pid_level(task: Kptr) -> Result<(Kptr, u32), i32> {
    let pid = task.ptr(conf!(offsets.task_thread_pid))?;
    let level: u32 = pid.get(conf!(offsets.pid_level));
    // A PID namespace is at most 32 deep.
    Ok((pid, level & 31))
}

/// `pid->numbers[level].nr`: the id in the namespace `level` deep. A load must be at an
/// offset the verifier knows, so the depths containers have (the host's, a container's,
/// containers in containers) each get their own; deeper ones are read by the helper.
#[inline(always)]
fn upid_nr(pid: Kptr, level: u32) -> Result<u32, i32> {
    let at =
        |n: u32| conf!(offsets.pid_numbers) + n * conf!(offsets.upid_size) + conf!(offsets.upid_nr);
    let nr: i32 = match level {
        0 => pid.get(at(0)),
        1 => pid.get(at(1)),
        2 => pid.get(at(2)),
        3 => pid.get(at(3)),
        n => read_at(pid.0 as u64, at(n))?,
    };
    Ok(nr as u32)
}

/// The thread group id of `task` in its namespace at `level`. `pid` is the task's own
/// `struct pid`, which is the group's when the task `leads` its group; otherwise the
/// leader's is read.
#[inline(always)]
fn task_ns_tgid(task: Kptr, pid: Kptr, level: u32, leads: bool) -> Result<u32, i32> {
    let pid = if leads {
        pid
    } else {
        let leader = task.ptr(conf!(offsets.task_group_leader))?;
        leader.ptr(conf!(offsets.task_thread_pid))?
    };
    upid_nr(pid, level)
}

/// cgroup v2 id of a task: `task->cgroups->dfl_cgrp->kn->id`, what
/// `bpf_get_current_cgroup_id` reads for the current task.
#[inline(always)]
pub(crate) fn task_cgroup_id(task: Kptr) -> Result<u64, i32> {
    let cset = task.ptr(conf!(offsets.task_cgroups))?;
    let cgrp = cset.ptr(conf!(offsets.css_set_dfl_cgrp))?;
    let kn = cgrp.ptr(conf!(offsets.cgroup_kn))?;
    Ok(kn.get(conf!(offsets.kernfs_node_id)))
}

/// A task's thread group id in the initial PID namespace.
#[inline(always)]
pub(crate) fn task_tgid(task: Kptr) -> u32 {
    task.get(conf!(offsets.task_tgid))
}

/// A task's command name: two 8-byte loads.
#[inline(always)]
pub(crate) fn task_comm(task: Kptr) -> [u8; COMM_LEN] {
    let off = conf!(offsets.task_comm);
    let words: [u64; 2] = [task.get(off), task.get(off + 8)];
    unsafe { core::mem::transmute::<[u64; 2], [u8; COMM_LEN]>(words) }
}

/// The current task, typed for the verifier.
#[inline(always)]
pub(crate) fn current_task() -> Result<Kptr, i32> {
    Kptr::new(unsafe { generated::bpf_get_current_task_btf() }.cast::<u8>())
}

/// Header for an event of `kind` about `task`, or `None` when the task is not traced.
/// The filter needs the namespace depth and the cgroup; the rest is read only for a
/// traced task.
#[inline(always)]
pub(crate) fn task_header(kind: EventKind, task: Kptr) -> Result<Option<EventHeader>, i32> {
    let (pid, ns_level) = task_pid_level(task)?;
    let cgroup_id = task_cgroup_id(task)?;
    if !is_traced(ns_level, cgroup_id) {
        return Ok(None);
    }
    let tgid = task_tgid(task);
    let thread: u32 = task.get(conf!(offsets.task_pid));
    let ns_tgid = task_ns_tgid(task, pid, ns_level, thread == tgid)?;
    Ok(Some(EventHeader {
        kind: kind as u32,
        ns_tgid,
        ktime_ns: unsafe { generated::bpf_ktime_get_boot_ns() },
        cgroup_id,
        tgid,
        ns_level,
        comm: task_comm(task),
    }))
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
