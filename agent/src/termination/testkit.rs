//! Kernel events for unit tests of the termination rules: one container, pids that no
//! real process can have, times in milliseconds.

use std::sync::Arc;

use agent_ebpf::{
    si_code, EventHeader, EventKind, ExecEvent, ExitEvent, SignalDeliverEvent, SignalGenerateEvent,
    COMM_LEN,
};

use crate::{
    attribution::{cgroup_path, CgroupContainer},
    kernel::TaskEvent,
};

pub const CG: u64 = 4242;
// Above the kernel's PID_MAX_LIMIT: no real process (whose /proc the tracker may read)
// can have these pids.
pub const P1: u32 = 5_000_100;
pub const P2: u32 = 5_000_101;
pub const P3: u32 = 5_000_102;
pub const MS: u64 = 1_000_000;
/// A sender outside the container: (tgid, cgroup id, si_code), as `runc kill` sends.
pub const RUNC: (u32, u64, i32) = (7, 1, si_code::SI_USER);

pub fn container() -> Arc<CgroupContainer> {
    let path = format!(
        "/kubepods/besteffort/pod6f1c2d3e-1111-2222-3333-444455556666/{}",
        "a".repeat(64)
    );
    Arc::new(CgroupContainer {
        cgroup_id: CG,
        cgroup: cgroup_path::parse(&path).expect("path"),
        path,
    })
}

pub fn comm(name: &str) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

pub fn header(kind: EventKind, at_ms: u64, tgid: u32, ns_tgid: u32, name: &str) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        ktime_ns: at_ms * MS,
        cgroup_id: CG,
        tgid,
        ns_tgid,
        ns_level: 1,
        comm: comm(name),
    }
}

/// A program exec'd in the container by a process of its own (or its init's first exec).
pub fn exec(at_ms: u64, tgid: u32, ns_tgid: u32, name: &str) -> TaskEvent {
    exec_by(at_ms, tgid, ns_tgid, name, PARENT_OUTSIDE, ns_tgid == 1)
}

/// Where runc lives: the parent of a container's init and of exec'd programs.
pub const PARENT_OUTSIDE: u32 = 6;

/// A program exec'd by `parent`; `entered`: the parent is outside the container.
pub fn exec_by(
    at_ms: u64,
    tgid: u32,
    ns_tgid: u32,
    name: &str,
    parent: u32,
    entered: bool,
) -> TaskEvent {
    TaskEvent::Exec(ExecEvent {
        header: header(EventKind::Exec, at_ms, tgid, ns_tgid, name),
        parent_tgid: parent,
        entered: u32::from(entered),
    })
}

/// A signal to `tgid`; `from` is (sender tgid, sender cgroup, si_code).
pub fn signal(
    at_ms: u64,
    tgid: u32,
    ns_tgid: u32,
    name: &str,
    sig: u32,
    from: (u32, u64, i32),
    result: u32,
) -> TaskEvent {
    TaskEvent::Signal(SignalGenerateEvent {
        header: header(EventKind::SignalGenerate, at_ms, tgid, ns_tgid, name),
        sig,
        code: from.2,
        result,
        sender_tgid: from.0,
        sender_cgroup_id: from.1,
        sender_comm: comm(if from.1 == CG { name } else { "runc" }),
    })
}

pub fn deliver(
    at_ms: u64,
    tgid: u32,
    ns_tgid: u32,
    name: &str,
    sig: u32,
    handler: u64,
) -> TaskEvent {
    TaskEvent::Deliver(SignalDeliverEvent {
        header: header(EventKind::SignalDeliver, at_ms, tgid, ns_tgid, name),
        sig,
        _pad: 0,
        sa_handler: handler,
    })
}

pub fn exit(at_ms: u64, tgid: u32, ns_tgid: u32, name: &str, code: u32) -> TaskEvent {
    TaskEvent::Exit(ExitEvent {
        header: header(EventKind::Exit, at_ms, tgid, ns_tgid, name),
        exit_code: code,
        _pad: 0,
    })
}
