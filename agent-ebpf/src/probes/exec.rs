//! Exec probe: which programs run in a container (its entrypoint, exec hooks, children),
//! and whether each was started from inside the container or entered it from outside.

use agent_ebpf::{EventKind, ExecEvent};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use super::{
    conf, emit, probe_error, task_cgroup_id, task_header, task_pid_level, task_tgid, Kptr,
};

/// `sched:sched_process_exec`, TP_PROTO(struct task_struct *p, pid_t old_pid,
/// struct linux_binprm *bprm); `current` is `p`, whose comm is already the new program's.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    match try_exec(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::Exec);
            e
        }
    }
}

fn try_exec(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let task = Kptr::new(ctx.arg(0))?;
    let Some(header) = task_header(EventKind::Exec, task)? else {
        return Ok(());
    };
    // Read only for traced tasks: whether the parent is outside the task's PID namespace
    // (a lower level) or cgroup tells a program started from outside the container. The
    // parent's cgroup only when the namespaces do not already tell.
    let parent = task.ptr(conf!(offsets.task_real_parent))?;
    let (_, parent_level) = task_pid_level(parent)?;
    let entered = parent_level < header.ns_level || task_cgroup_id(parent)? != header.cgroup_id;
    emit(
        EventKind::Exec,
        ExecEvent {
            header,
            parent_tgid: task_tgid(parent),
            entered: u32::from(entered),
        },
    );
    Ok(())
}
