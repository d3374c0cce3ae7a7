//! Process exit probe: one record per thread group, with the exit code.

use agent_ebpf::{EventKind, ExitEvent, FLAG_EXIT_GROUP_DEAD_ARG};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use super::{conf, emit, emit_now, probe_error, task_header, Kptr};

/// `sched:sched_process_exit`, TP_PROTO(struct task_struct *p[, bool group_dead]);
/// `current` is `p`. The exit code is not a tracepoint field: it is `p->exit_code`, set by
/// do_exit() before the tracepoint fires. Whether the thread group died is the
/// `group_dead` argument where the kernel passes it (user space finds out from BTF), so
/// a thread's exit costs no read; older kernels' is read from `p->signal->live` (already
/// decremented).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::Exit);
            e
        }
    }
}

fn try_exit(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let task = Kptr::new(ctx.arg(0))?;
    // The flag is a constant to the verifier: on a kernel without the argument, the branch
    // that reads it is never verified.
    let group_dead = if conf!(flags) & FLAG_EXIT_GROUP_DEAD_ARG != 0 {
        ctx.arg::<u64>(1) as u8 != 0
    } else {
        let signal = task.ptr(conf!(offsets.task_signal))?;
        signal.get::<i32>(conf!(offsets.signal_live)) == 0
    };
    if !group_dead {
        return Ok(());
    }
    let Some(header) = task_header(EventKind::Exit, task)? else {
        return Ok(());
    };
    let pid1 = header.ns_tgid == 1;
    let record = ExitEvent {
        header,
        exit_code: task.get(conf!(offsets.task_exit_code)),
        _pad: 0,
    };
    if pid1 {
        emit_now(EventKind::Exit, record);
    } else {
        emit(EventKind::Exit, record);
    }
    Ok(())
}
