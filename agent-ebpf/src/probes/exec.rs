//! Exec probe: which programs run in a container (its entrypoint, exec hooks, children),
//! and whether each was started from inside the container or entered it from outside.

use agent_ebpf::{EventKind, ExecEvent};
use aya_ebpf::{helpers::generated, macros::raw_tracepoint, programs::RawTracePointContext};

use super::{conf, current_header, emit, pid_level, probe_error, read_at, task_cgroup_id};

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
    // Read only for traced tasks: whether the parent is outside the task's PID namespace
    // (a lower level) or cgroup tells a program started from outside the container. The
    // parent's cgroup (four reads) only when the namespaces do not already tell.
    let task = unsafe { generated::bpf_get_current_task() };
    let parent: u64 = read_at(task, conf!(offsets.task_real_parent))?;
    let (_, parent_level) = pid_level(parent)?;
    let entered = parent_level < header.ns_level || task_cgroup_id(parent)? != header.cgroup_id;
    emit(
        EventKind::Exec,
        ExecEvent {
            header,
            parent_tgid: read_at(parent, conf!(offsets.task_tgid))?,
            entered: u32::from(entered),
        },
    );
    Ok(())
}
