//! Signal probes: who sent what to a container process, and what the process did with it.

use agent_ebpf::{si_code, EventKind, SignalDeliverEvent, SignalGenerateEvent};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use super::{
    conf, current_task, emit, probe_error, read_at, task_cgroup_id, task_comm, task_header,
    task_tgid, Kptr,
};

/// `signal:signal_generate`, TP_PROTO(int sig, struct kernel_siginfo *info,
/// struct task_struct *task, int group, int result). `current` is the sender; the target
/// is `task`, whose pid, comm, namespace identity and cgroup are read from it.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate(ctx: BtfTracePointContext) -> i32 {
    match try_signal_generate(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::SignalGenerate);
            e
        }
    }
}

fn try_signal_generate(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sig = ctx.arg::<u64>(0) as u32;
    if sig >= 64 || conf!(signal_mask) & (1u64 << sig) == 0 {
        return Ok(());
    }
    let task = Kptr::new(ctx.arg(2))?;
    let Some(header) = task_header(EventKind::SignalGenerate, task)? else {
        return Ok(());
    };
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are markers, not pointers; report them as
    // the tracepoint's own format does. For that reason the verifier does not type `info`
    // (it may not be a pointer): a real one is read by helper.
    let code = match ctx.arg::<u64>(1) {
        0 => si_code::SI_USER,
        1 => si_code::SI_KERNEL,
        p => read_at::<i32>(p, 8)?,
    };
    let sender = current_task()?;
    emit(
        EventKind::SignalGenerate,
        SignalGenerateEvent {
            header,
            sig,
            code,
            result: ctx.arg::<u64>(4) as u32,
            sender_tgid: task_tgid(sender),
            sender_cgroup_id: task_cgroup_id(sender)?,
            sender_comm: task_comm(sender),
        },
    );
    Ok(())
}

/// `signal:signal_deliver`, TP_PROTO(int sig, struct kernel_siginfo *info,
/// struct k_sigaction *ka). `current` is the receiving task; `ka->sa.sa_handler` tells
/// whether it runs a handler, ignores the signal or takes the default action.
#[btf_tracepoint(function = "signal_deliver")]
pub fn signal_deliver(ctx: BtfTracePointContext) -> i32 {
    match try_signal_deliver(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::SignalDeliver);
            e
        }
    }
}

fn try_signal_deliver(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sig = ctx.arg::<u64>(0) as u32;
    if sig >= 64 || conf!(signal_mask) & (1u64 << sig) == 0 {
        return Ok(());
    }
    let Some(header) = task_header(EventKind::SignalDeliver, current_task()?)? else {
        return Ok(());
    };
    let ka = Kptr::new(ctx.arg(2))?;
    emit(
        EventKind::SignalDeliver,
        SignalDeliverEvent {
            header,
            sig,
            _pad: 0,
            sa_handler: ka.get(conf!(offsets.ksigaction_handler)),
        },
    );
    Ok(())
}
