//! Gracewatch's kernel programs, built for `bpfel-unknown-none` by `agent/build.rs`.
//!
//! Every program attaches to a tracepoint without tracefs and gets the tracepoint's C
//! arguments (`TP_PROTO`), among them the target `task_struct *`, from which the target's
//! cgroup and PID-namespace identity are read. The signal, exit and exec programs are BTF
//! tracepoints (`tp_btf`), which read those fields with plain loads; the cgroup and
//! traffic programs are raw tracepoints, which read through `bpf_probe_read_kernel`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// On the host this crate is only a library (the ABI); the binary exists for BPF.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("agent-ebpf is built for bpfel-unknown-none by the agent's build script");
}
