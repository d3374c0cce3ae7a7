//! Process exit probe: one record per thread group, with the exit code.

use agent_ebpf::{EventKind, ExitEvent};
use aya_ebpf::{helpers::generated, macros::raw_tracepoint, programs::RawTracePointContext};

use super::{conf, current_header, emit, emit_now, probe_error, read_at};

/// `sched:sched_process_exit`, TP_PROTO(struct task_struct *p[, bool group_dead]);
/// `current` is `p`. The exit code is not a tracepoint field: it is `p->exit_code`, set by
/// do_exit() before the tracepoint fires. Whether the thread group died is read from
/// `p->signal->live` (already decremented) rather than the `group_dead` argument, which
/// older kernels do not pass.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::Exit);
            e
        }
    }
}

fn try_exit(_ctx: &RawTracePointContext) -> Result<(), i32> {
    let task = unsafe { generated::bpf_get_current_task() };
    let signal: u64 = read_at(task, conf!(offsets.task_signal))?;
    let live: i32 = read_at(signal, conf!(offsets.signal_live))?;
    if live != 0 {
        return Ok(());
    }
    let Some(header) = current_header(EventKind::Exit)? else {
        return Ok(());
    };
    let pid1 = header.ns_tgid == 1;
    let record = ExitEvent {
        header,
        exit_code: read_at(task, conf!(offsets.task_exit_code))?,
        _pad: 0,
    };
    if pid1 {
        emit_now(EventKind::Exit, record);
    } else {
        emit(EventKind::Exit, record);
    }
    Ok(())
}
