//! Signal probes: who sent what to a container process, and what the process did with it.

use agent_ebpf::{
    si_code, EventHeader, EventKind, SignalDeliverEvent, SignalGenerateEvent, COMM_LEN,
};
use aya_ebpf::{helpers::generated, macros::raw_tracepoint, programs::RawTracePointContext};

use super::{
    conf, current_header, emit, is_traced, ns_tgid, pid_level, probe_error, read_at, task_cgroup_id,
};

/// `signal:signal_generate`, TP_PROTO(int sig, struct kernel_siginfo *info,
/// struct task_struct *task, int group, int result). `current` is the sender; the target
/// is `task`, whose pid, comm, namespace identity and cgroup are read from it.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> i32 {
    match try_signal_generate(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::SignalGenerate);
            e
        }
    }
}

fn try_signal_generate(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sig = ctx.arg::<u64>(0) as u32;
    if sig >= 64 || conf!(signal_mask) & (1u64 << sig) == 0 {
        return Ok(());
    }
    let info = ctx.arg::<u64>(1);
    let task = ctx.arg::<u64>(2);
    let (pid, ns_level) = pid_level(task)?;
    let cgroup_id = task_cgroup_id(task)?;
    if !is_traced(ns_level, cgroup_id) {
        return Ok(());
    }
    let tgid: u32 = read_at(task, conf!(offsets.task_tgid))?;
    let thread: u32 = read_at(task, conf!(offsets.task_pid))?;
    let ns_tgid = ns_tgid(task, pid, ns_level, thread == tgid)?;
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are markers, not pointers; report them as
    // the tracepoint's own format does.
    let code = match info {
        0 => si_code::SI_USER,
        1 => si_code::SI_KERNEL,
        p => read_at::<i32>(p, 8)?,
    };
    let sender = unsafe { generated::bpf_get_current_pid_tgid() };
    let header = EventHeader {
        kind: EventKind::SignalGenerate as u32,
        ns_tgid,
        ktime_ns: unsafe { generated::bpf_ktime_get_boot_ns() },
        cgroup_id,
        tgid,
        ns_level,
        comm: read_at(task, conf!(offsets.task_comm))?,
    };
    emit(
        EventKind::SignalGenerate,
        SignalGenerateEvent {
            header,
            sig,
            code,
            result: ctx.arg::<u64>(4) as u32,
            sender_tgid: (sender >> 32) as u32,
            sender_cgroup_id: unsafe { generated::bpf_get_current_cgroup_id() },
            sender_comm: aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        },
    );
    Ok(())
}

/// `signal:signal_deliver`, TP_PROTO(int sig, struct kernel_siginfo *info,
/// struct k_sigaction *ka). `current` is the receiving task; `ka->sa.sa_handler` tells
/// whether it runs a handler, ignores the signal or takes the default action.
#[raw_tracepoint(tracepoint = "signal_deliver")]
pub fn signal_deliver(ctx: RawTracePointContext) -> i32 {
    match try_signal_deliver(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::SignalDeliver);
            e
        }
    }
}

fn try_signal_deliver(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sig = ctx.arg::<u64>(0) as u32;
    if sig >= 64 || conf!(signal_mask) & (1u64 << sig) == 0 {
        return Ok(());
    }
    let Some(header) = current_header(EventKind::SignalDeliver)? else {
        return Ok(());
    };
    let ka = ctx.arg::<u64>(2);
    emit(
        EventKind::SignalDeliver,
        SignalDeliverEvent {
            header,
            sig,
            _pad: 0,
            sa_handler: read_at(ka, conf!(offsets.ksigaction_handler))?,
        },
    );
    Ok(())
}
