//! Exec probe: which programs run in a container (its entrypoint, exec hooks, children).

use agent_ebpf::{EventKind, ExecEvent};
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use super::{current_header, emit, probe_error};

/// `sched:sched_process_exec`, TP_PROTO(struct task_struct *p, pid_t old_pid,
/// struct linux_binprm *bprm); `current` is `p`, whose comm is already the new program's.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    match try_exec(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::Exec);
            e
        }
    }
}

fn try_exec(_ctx: &RawTracePointContext) -> Result<(), i32> {
    let Some(header) = current_header(EventKind::Exec)? else {
        return Ok(());
    };
    emit(EventKind::Exec, ExecEvent { header });
    Ok(())
}
