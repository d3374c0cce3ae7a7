//! Finds, in the running kernel's BTF, the byte offsets of the kernel struct fields the
//! probes read (see `agent_ebpf::KernelOffsets`). Doing this at start-up instead of
//! compiling offsets in keeps one build of the probes correct across kernels.

use std::path::Path;

use agent_ebpf::KernelOffsets;
use btf_rs::{Btf, Type};

use super::KernelError;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What the probes need to know of the running kernel's layout.
#[derive(Clone, Copy, Debug)]
pub struct KernelLayout {
    pub offsets: KernelOffsets,
    /// `sched_process_exit` passes `group_dead` (Linux 6.x): see
    /// `agent_ebpf::FLAG_EXIT_GROUP_DEAD_ARG`.
    pub exit_passes_group_dead: bool,
}

/// Resolves every offset in [`KernelOffsets`], and the exit tracepoint's arguments, from
/// a BTF file.
pub fn kernel_layout(path: &Path) -> Result<KernelLayout, KernelError> {
    let btf = Btf::from_file(path).map_err(|e| KernelError::Btf {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let r = Resolver { btf: &btf };
    Ok(KernelLayout {
        offsets: r.offsets()?,
        exit_passes_group_dead: r.tracepoint_args("sched_process_exit") == Some(2),
    })
}

impl Resolver<'_> {
    fn offsets(&self) -> Result<KernelOffsets, KernelError> {
        let r = self;
        let sigaction = r.offset("k_sigaction", "sa")?;
        Ok(KernelOffsets {
            task_tgid: r.offset("task_struct", "tgid")?,
            task_comm: r.offset("task_struct", "comm")?,
            task_exit_code: r.offset("task_struct", "exit_code")?,
            task_group_leader: r.offset("task_struct", "group_leader")?,
            task_real_parent: r.offset("task_struct", "real_parent")?,
            task_thread_pid: r.offset("task_struct", "thread_pid")?,
            task_signal: r.offset("task_struct", "signal")?,
            task_cgroups: r.offset("task_struct", "cgroups")?,
            pid_level: r.offset("pid", "level")?,
            pid_numbers: r.offset("pid", "numbers")?,
            upid_size: r.struct_size("upid")?,
            upid_nr: r.offset("upid", "nr")?,
            signal_live: r.offset("signal_struct", "live")?,
            css_set_dfl_cgrp: r.offset("css_set", "dfl_cgrp")?,
            cgroup_kn: r.offset("cgroup", "kn")?,
            cgroup_root: r.offset("cgroup", "root")?,
            cgroup_root_hierarchy_id: r.offset("cgroup_root", "hierarchy_id")?,
            task_pid: r.offset("task_struct", "pid")?,
            kernfs_node_id: r.offset("kernfs_node", "id")?,
            ksigaction_handler: sigaction + r.offset("sigaction", "sa_handler")?,
            skc_family: r.offset("sock_common", "skc_family")?,
            skc_rcv_saddr: r.offset("sock_common", "skc_rcv_saddr")?,
            skc_v6_rcv_saddr: r.offset("sock_common", "skc_v6_rcv_saddr")?,
            skb_len: r.offset("sk_buff", "len")?,
            skb_data: r.offset("sk_buff", "data")?,
            skb_head: r.offset("sk_buff", "head")?,
            skb_network_header: r.offset("sk_buff", "network_header")?,
            skc_num: r.offset("sock_common", "skc_num")?,
        })
    }

    /// How many arguments raw tracepoint `name` passes: its `btf_trace_<name>` typedef is
    /// a pointer to a function taking the context, then the arguments. `None` when the
    /// BTF does not describe it.
    fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let types = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?;
        let Some(Type::Typedef(t)) = types.into_iter().next() else {
            return None;
        };
        let Type::Ptr(p) = self.btf.resolve_chained_type(&t).ok()? else {
            return None;
        };
        let Type::FuncProto(f) = self.btf.resolve_chained_type(&p).ok()? else {
            return None;
        };
        f.parameters.len().checked_sub(1)
    }
}

struct Resolver<'a> {
    btf: &'a Btf,
}

impl Resolver<'_> {
    fn missing(&self, ty: &str, field: &str, why: &str) -> KernelError {
        KernelError::BtfField {
            field: format!("{ty}.{field}"),
            reason: why.to_string(),
        }
    }

    /// The struct named `name` (the one with members, not a forward declaration).
    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, KernelError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| self.missing(name, "*", &e.to_string()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| self.missing(name, "*", "no struct of that name in BTF"))
    }

    fn struct_size(&self, name: &str) -> Result<u32, KernelError> {
        let s = self.find_struct(name)?;
        u32::try_from(s.size()).map_err(|_| self.missing(name, "sizeof", "size overflows u32"))
    }

    /// Byte offset of `field` in struct `ty`, looking through anonymous structs/unions.
    fn offset(&self, ty: &str, field: &str) -> Result<u32, KernelError> {
        let s = self.find_struct(ty)?;
        let bits = self
            .member_bits(&s, field, 0)
            .ok_or_else(|| self.missing(ty, field, "no such member"))?;
        if bits % 8 != 0 {
            return Err(self.missing(ty, field, "member is a bitfield"));
        }
        Ok(bits / 8)
    }

    fn member_bits(&self, s: &btf_rs::Struct, field: &str, base: u32) -> Option<u32> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == field {
                return Some(base + m.bit_offset());
            }
            if name.is_empty() {
                if let Some(inner) = self.anonymous_aggregate(m) {
                    if let Some(bits) = self.member_bits(&inner, field, base + m.bit_offset()) {
                        return Some(bits);
                    }
                }
            }
        }
        None
    }

    /// The struct or union type of an unnamed member, through typedef/const/volatile.
    fn anonymous_aggregate(&self, m: &btf_rs::Member) -> Option<btf_rs::Struct> {
        let mut ty = self.btf.resolve_chained_type(m).ok()?;
        for _ in 0..8 {
            match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(ref t) => ty = self.btf.resolve_chained_type(t).ok()?,
                Type::Const(ref t) => ty = self.btf.resolve_chained_type(t).ok()?,
                Type::Volatile(ref t) => ty = self.btf.resolve_chained_type(t).ok()?,
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel BTF: every offset resolves and the ones whose
    /// value the C ABI fixes come out right.
    #[test]
    fn resolves_running_kernel_offsets() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} not present");
            return;
        }
        let layout = kernel_layout(path).expect("offsets");
        let o = layout.offsets;
        assert!(
            o.task_pid < o.task_tgid,
            "pid comes right before tgid: {o:?}"
        );
        // signal_generate(sig, info, task, group, result) has had five arguments since
        // 3.x; sched_process_exit(p) gained group_dead in 6.x.
        let r = Resolver {
            btf: &Btf::from_file(path).expect("btf"),
        };
        assert_eq!(r.tracepoint_args("signal_generate"), Some(5));
        let exit_args = r.tracepoint_args("sched_process_exit");
        assert!(matches!(exit_args, Some(1 | 2)), "{exit_args:?}");
        assert_eq!(layout.exit_passes_group_dead, exit_args == Some(2));
        assert_eq!(r.tracepoint_args("no_such_tracepoint"), None);
        assert_eq!(o.upid_nr, 0, "struct upid starts with int nr");
        assert_eq!(
            o.upid_size, 16,
            "struct upid is {{int nr; struct pid_namespace *ns}}"
        );
        assert_eq!(
            o.ksigaction_handler, 0,
            "sa_handler is the first field of k_sigaction"
        );
        // sock_common starts with the addresses: daddr, then rcv_saddr.
        assert_eq!(o.skc_rcv_saddr, 4, "{o:?}");
        assert!(o.skb_head < o.skb_data, "{o:?}");
        // In every kernel layout: pid, tgid, …, comm; comm far beyond tgid.
        assert!(o.task_comm > o.task_tgid, "{o:?}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = kernel_layout(Path::new("/nonexistent/btf")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/btf"), "{err}");
    }
}
