//! Turns ring-buffer records into typed events, checking length and values first. A
//! record that fails a check is an error with a reason, counted by the caller; it is
//! never guessed at.

use std::mem::size_of;

use agent_ebpf::{
    CgroupMkdirEvent, CgroupRmdirEvent, EventHeader, EventKind, ExecEvent, ExitEvent,
    SignalDeliverEvent, SignalGenerateEvent, CGROUP_PATH_LEN,
};

/// One decoded kernel event: about a task (what termination tracking follows) or about a
/// cgroup (what attribution learns from).
#[derive(Clone, Debug)]
pub enum KernelEvent {
    Task(TaskEvent),
    Cgroup(CgroupEvent),
}

impl KernelEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Task(t) => t.kind(),
            Self::Cgroup(CgroupEvent::Created { .. }) => EventKind::CgroupMkdir,
            Self::Cgroup(CgroupEvent::Removed { .. }) => EventKind::CgroupRmdir,
        }
    }
}

/// A cgroup of the v2 hierarchy appeared or went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupEvent {
    /// `path` is relative to the hierarchy's root; `None` when the kernel's copy was cut
    /// (longer than the record holds) or unreadable: the caller must find it another way.
    Created {
        id: u64,
        path: Option<String>,
    },
    Removed {
        id: u64,
    },
}

/// An event about a task; the payloads are the ABI structs, copied out of the ring.
#[derive(Clone, Copy, Debug)]
pub enum TaskEvent {
    Signal(SignalGenerateEvent),
    Deliver(SignalDeliverEvent),
    Exit(ExitEvent),
    Exec(ExecEvent),
}

impl TaskEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            Self::Signal(e) => &e.header,
            Self::Deliver(e) => &e.header,
            Self::Exit(e) => &e.header,
            Self::Exec(e) => &e.header,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Self::Signal(_) => EventKind::SignalGenerate,
            Self::Deliver(_) => EventKind::SignalDeliver,
            Self::Exit(_) => EventKind::Exit,
            Self::Exec(_) => EventKind::Exec,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte header")]
    Truncated { len: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind} record has {len} bytes, expected {expected}")]
    WrongLength {
        kind: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("signal number {0} out of range 1..=64")]
    BadSignal(u32),
    #[error("signal_generate result {0} is not one the kernel defines (0..=4)")]
    BadResult(u32),
    #[error("cgroup_mkdir path length {0} is over the record's {CGROUP_PATH_LEN} bytes")]
    BadPathLength(u32),
}

impl DecodeError {
    /// Bounded label for `gracewatch_decode_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::UnknownKind(_) => "unknown_kind",
            Self::WrongLength { .. } => "wrong_length",
            Self::BadSignal(_) => "bad_signal",
            Self::BadResult(_) => "bad_result",
            Self::BadPathLength(_) => "bad_path_length",
        }
    }
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<KernelEvent, DecodeError> {
    let need = size_of::<EventHeader>();
    if buf.len() < need {
        return Err(DecodeError::Truncated {
            len: buf.len(),
            need,
        });
    }
    let raw_kind = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let kind = EventKind::from_u32(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
    let expected = kind.record_size();
    if buf.len() != expected {
        return Err(DecodeError::WrongLength {
            kind: kind.name(),
            len: buf.len(),
            expected,
        });
    }
    let event = match kind {
        EventKind::SignalGenerate => {
            let e: SignalGenerateEvent = read(buf);
            check_signal(e.sig)?;
            if e.result > agent_ebpf::sig_result::LOSE_INFO {
                return Err(DecodeError::BadResult(e.result));
            }
            TaskEvent::Signal(e)
        }
        EventKind::SignalDeliver => {
            let e: SignalDeliverEvent = read(buf);
            check_signal(e.sig)?;
            TaskEvent::Deliver(e)
        }
        EventKind::Exit => TaskEvent::Exit(read(buf)),
        EventKind::Exec => TaskEvent::Exec(read(buf)),
        EventKind::CgroupMkdir => {
            let e: CgroupMkdirEvent = read(buf);
            return Ok(KernelEvent::Cgroup(CgroupEvent::Created {
                id: e.header.cgroup_id,
                path: cgroup_path(&e)?,
            }));
        }
        EventKind::CgroupRmdir => {
            let e: CgroupRmdirEvent = read(buf);
            return Ok(KernelEvent::Cgroup(CgroupEvent::Removed {
                id: e.header.cgroup_id,
            }));
        }
    };
    Ok(KernelEvent::Task(event))
}

/// The path a mkdir record carries: `None` when it may be cut (the kernel filled the whole
/// buffer), was unreadable (length 0) or is not UTF-8 (no runtime makes such names).
fn cgroup_path(e: &CgroupMkdirEvent) -> Result<Option<String>, DecodeError> {
    let len = e.path_len as usize;
    if len > CGROUP_PATH_LEN {
        return Err(DecodeError::BadPathLength(e.path_len));
    }
    if len == 0 || len == CGROUP_PATH_LEN {
        return Ok(None);
    }
    let bytes = &e.path[..len - 1];
    Ok(std::str::from_utf8(bytes)
        .ok()
        .filter(|p| p.starts_with('/'))
        .map(str::to_owned))
}

fn check_signal(sig: u32) -> Result<(), DecodeError> {
    if (1..=64).contains(&sig) {
        Ok(())
    } else {
        Err(DecodeError::BadSignal(sig))
    }
}

/// Copies a `T` out of `buf`, whose length the caller checked equals `size_of::<T>()`.
fn read<T: Copy>(buf: &[u8]) -> T {
    debug_assert_eq!(buf.len(), size_of::<T>());
    // SAFETY: the length was checked, read_unaligned has no alignment requirement, and
    // every T here is a repr(C) struct of integers for which any bit pattern is valid.
    unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) }
}

/// How a process ended, from `task_struct.exit_code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit(status)
    Exited(u8),
    /// Killed by a signal (core dumped when `core` is set).
    Signaled { signal: u8, core: bool },
}

impl ExitStatus {
    pub fn from_exit_code(code: u32) -> Self {
        let sig = (code & 0x7f) as u8;
        if sig == 0 {
            Self::Exited(((code >> 8) & 0xff) as u8)
        } else {
            Self::Signaled {
                signal: sig,
                core: code & 0x80 != 0,
            }
        }
    }

    pub fn exit_code(self) -> Option<u8> {
        match self {
            Self::Exited(c) => Some(c),
            Self::Signaled { .. } => None,
        }
    }

    pub fn signal(self) -> Option<u8> {
        match self {
            Self::Exited(_) => None,
            Self::Signaled { signal, .. } => Some(signal),
        }
    }
}

/// A NUL-padded kernel `comm` as text (lossy, never fails).
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_ebpf::COMM_LEN;

    fn header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..2].copy_from_slice(b"sh");
        EventHeader {
            kind: kind as u32,
            ktime_ns: 123,
            cgroup_id: 42,
            tgid: 1000,
            ns_tgid: 1,
            ns_level: 1,
            comm,
        }
    }

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value of plain integers.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn signal(sig: u32, result: u32) -> SignalGenerateEvent {
        SignalGenerateEvent {
            header: header(EventKind::SignalGenerate),
            sig,
            code: 0,
            result,
            sender_tgid: 77,
            sender_cgroup_id: 1,
            sender_comm: *b"runc\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn decodes_a_signal_record() {
        let ev = decode(&bytes(&signal(15, 1))).expect("decode");
        let KernelEvent::Task(TaskEvent::Signal(s)) = ev else {
            panic!("wrong kind {ev:?}")
        };
        assert_eq!((s.sig, s.result, s.header.ns_tgid), (15, 1, 1));
        assert_eq!(comm_str(&s.sender_comm), "runc");
        assert_eq!(comm_str(&s.header.comm), "sh");
    }

    #[test]
    fn decodes_exit_and_exec() {
        let exit = ExitEvent {
            header: header(EventKind::Exit),
            exit_code: 0x500,
            _pad: 0,
        };
        let KernelEvent::Task(TaskEvent::Exit(e)) = decode(&bytes(&exit)).expect("exit") else {
            panic!("not an exit")
        };
        assert_eq!(
            ExitStatus::from_exit_code(e.exit_code),
            ExitStatus::Exited(5)
        );
        let exec = ExecEvent {
            header: header(EventKind::Exec),
            parent_tgid: 9,
            entered: 1,
        };
        assert!(
            matches!(decode(&bytes(&exec)), Ok(KernelEvent::Task(TaskEvent::Exec(e))) if e.header.tgid == 1000)
        );
    }

    fn mkdir(path: &[u8], path_len: u32) -> CgroupMkdirEvent {
        let mut e = CgroupMkdirEvent {
            header: header(EventKind::CgroupMkdir),
            path_len,
            _pad: 0,
            path: [0; CGROUP_PATH_LEN],
        };
        e.path[..path.len()].copy_from_slice(path);
        e
    }

    #[test]
    fn decodes_cgroup_records() {
        let p = b"/kubepods/besteffort/pod1/abc";
        let got = decode(&bytes(&mkdir(p, p.len() as u32 + 1))).expect("mkdir");
        assert_eq!(
            got.kind(),
            EventKind::CgroupMkdir,
            "the kind of a cgroup record"
        );
        let KernelEvent::Cgroup(CgroupEvent::Created { id, path }) = got else {
            panic!("not a mkdir: {got:?}")
        };
        assert_eq!(
            (id, path.as_deref()),
            (42, Some("/kubepods/besteffort/pod1/abc"))
        );
        // Cut by the kernel, unreadable, relative or not UTF-8: the path is unknown.
        let full = vec![b'a'; CGROUP_PATH_LEN - 1];
        for (path, len) in [
            (&full[..], CGROUP_PATH_LEN as u32),
            (&b""[..], 0),
            (&b"kubepods"[..], 9),
            (&b"/\xff\xfe"[..], 4),
        ] {
            let got = decode(&bytes(&mkdir(path, len))).expect("mkdir");
            assert!(
                matches!(
                    got,
                    KernelEvent::Cgroup(CgroupEvent::Created { path: None, .. })
                ),
                "{got:?}"
            );
        }
        assert_eq!(
            decode(&bytes(&mkdir(b"/x", CGROUP_PATH_LEN as u32 + 1))).unwrap_err(),
            DecodeError::BadPathLength(CGROUP_PATH_LEN as u32 + 1)
        );
        let rmdir = CgroupRmdirEvent {
            header: header(EventKind::CgroupRmdir),
        };
        assert!(matches!(
            decode(&bytes(&rmdir)),
            Ok(KernelEvent::Cgroup(CgroupEvent::Removed { id: 42 }))
        ));
    }

    #[test]
    fn truncated_records_are_rejected() {
        let full = bytes(&signal(15, 0));
        for len in 0..size_of::<EventHeader>() {
            assert_eq!(
                decode(&full[..len]).unwrap_err(),
                DecodeError::Truncated { len, need: 48 }
            );
        }
        let err = decode(&full[..full.len() - 1]).unwrap_err();
        assert_eq!(err.metric_label(), "wrong_length");
    }

    #[test]
    fn garbage_is_rejected_not_guessed() {
        let mut b = bytes(&signal(15, 0));
        b[0..4].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(decode(&b).unwrap_err(), DecodeError::UnknownKind(99));
        assert_eq!(
            decode(&bytes(&signal(0, 0))).unwrap_err(),
            DecodeError::BadSignal(0)
        );
        assert_eq!(
            decode(&bytes(&signal(65, 0))).unwrap_err(),
            DecodeError::BadSignal(65)
        );
        assert_eq!(
            decode(&bytes(&signal(9, 7))).unwrap_err(),
            DecodeError::BadResult(7)
        );
        // An xorshift stream of random records never panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..20_000usize {
            let len = i % 130;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&buf);
        }
    }

    #[test]
    fn exit_codes_follow_the_kernel_encoding() {
        assert_eq!(ExitStatus::from_exit_code(0), ExitStatus::Exited(0));
        assert_eq!(ExitStatus::from_exit_code(0x300).exit_code(), Some(3));
        assert_eq!(ExitStatus::from_exit_code(9).signal(), Some(9));
        assert_eq!(
            ExitStatus::from_exit_code(0x8b),
            ExitStatus::Signaled {
                signal: 11,
                core: true
            }
        );
    }
}
