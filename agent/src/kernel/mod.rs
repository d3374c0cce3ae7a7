//! The kernel side as user space sees it: finding struct offsets in BTF, loading and
//! attaching the probes, draining the ring buffer, decoding its records, and the
//! kernel-side counters (lost records, probe errors, run statistics).

pub mod btf;
pub mod decode;
pub mod drain;
pub mod loader;

pub use decode::{decode, CgroupEvent, DecodeError, ExitStatus, KernelEvent, TaskEvent};
pub use drain::drain;
pub use loader::{LoadOptions, Probes};

/// Everything that can go wrong between this process and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read kernel BTF from {path}: {reason} (the agent needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    Btf { path: String, reason: String },
    #[error("kernel BTF has no usable {field}: {reason}")]
    BtfField { field: String, reason: String },
    #[error("loading the BPF programs failed: {source}{hint}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
        hint: String,
    },
    #[error("program {program}: {source}{hint}")]
    Program {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
        hint: String,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("BPF map {name}: {source}")]
    MapIo {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("BPF object has no {what} named {name} (agent and probes out of step?)")]
    Missing { what: &'static str, name: String },
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingSize(u32),
    #[error("ring buffer: {0}")]
    Ring(#[from] std::io::Error),
}
