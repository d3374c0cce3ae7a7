//! Cgroup probes: which cgroups appear and disappear in the cgroup v2 hierarchy, with
//! their paths, so user space knows a container's cgroup from the moment runc creates it
//! (even one whose PID 1 dies within milliseconds) without walking the tree.

use agent_ebpf::{CgroupMkdirEvent, CgroupRmdirEvent, EventKind};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use super::{conf, emit, header_about, probe_error, read_at, reserve, submit_now};

/// `cgroup:cgroup_mkdir`, TP_PROTO(struct cgroup *cgrp, const char *path). The kernel
/// builds `path` (relative to the hierarchy's root) only while the tracepoint is enabled.
/// Only the default (v2) hierarchy, `cgrp->root->hierarchy_id == 0`, is reported: v1
/// hierarchies on hybrid hosts mirror the same paths with ids user space cannot use.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    match try_mkdir(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::CgroupMkdir);
            e
        }
    }
}

/// `cgroup:cgroup_rmdir`, TP_PROTO(struct cgroup *cgrp, const char *path).
#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    match try_rmdir(&ctx) {
        Ok(()) => 0,
        Err(e) => {
            probe_error(EventKind::CgroupRmdir);
            e
        }
    }
}

/// The id of a cgroup of the default hierarchy, `None` for a v1 hierarchy's.
#[inline(always)]
fn v2_cgroup_id(cgrp: u64) -> Result<Option<u64>, i32> {
    let root: u64 = read_at(cgrp, conf!(offsets.cgroup_root))?;
    let hierarchy: i32 = read_at(root, conf!(offsets.cgroup_root_hierarchy_id))?;
    if hierarchy != 0 {
        return Ok(None);
    }
    let kn: u64 = read_at(cgrp, conf!(offsets.cgroup_kn))?;
    Ok(Some(read_at(kn, conf!(offsets.kernfs_node_id))?))
}

fn try_mkdir(ctx: &RawTracePointContext) -> Result<(), i32> {
    let cgrp = ctx.arg::<u64>(0);
    let path = ctx.arg::<u64>(1);
    let Some(id) = v2_cgroup_id(cgrp)? else {
        return Ok(());
    };
    let header = header_about(EventKind::CgroupMkdir, id)?;
    // Filled in place: the record is too large for the BPF stack.
    let Some(mut entry) = reserve::<CgroupMkdirEvent>(EventKind::CgroupMkdir) else {
        return Ok(());
    };
    let record = entry.as_mut_ptr();
    let len = unsafe {
        (*record).header = header;
        (*record)._pad = 0;
        match bpf_probe_read_kernel_str_bytes(path as *const u8, &mut (*record).path) {
            // The bytes read, plus the NUL the helper wrote after them.
            Ok(bytes) => bytes.len() as u32 + 1,
            Err(_) => 0,
        }
    };
    unsafe { (*record).path_len = len };
    // A new container cgroup must reach the kernel's map of container cgroups before the
    // processes of a container that lives for milliseconds are filtered as the host's;
    // cgroups are created at the rate containers start, so waking the reader is cheap.
    submit_now(entry);
    Ok(())
}

fn try_rmdir(ctx: &RawTracePointContext) -> Result<(), i32> {
    let Some(id) = v2_cgroup_id(ctx.arg::<u64>(0))? else {
        return Ok(());
    };
    let header = header_about(EventKind::CgroupRmdir, id)?;
    emit(EventKind::CgroupRmdir, CgroupRmdirEvent { header });
    Ok(())
}
