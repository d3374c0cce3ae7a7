//! Reads a cgroup path and says which container it belongs to.
//!
//! Owns the knowledge of the cgroup path shapes that kubelet, containerd, CRI-O, Docker
//! and Podman create, for both cgroup drivers. The input is a path relative to the cgroup
//! mount, as the `0::` line of `/proc/<pid>/cgroup` shows it (v1 hierarchies look the same
//! relative to their mount). Pure string work: no I/O, and nothing is allocated but the
//! answer (or the offending segment, copied into an error).
//!
//! Shapes recognised:
//! - systemd driver: `…kubepods[-<qos>]-pod<uid_with_underscores>.slice/<prefix>-<id>.scope`
//!   with prefix `cri-containerd`, `crio`, `docker` or `libpod`, under any parent slices
//!   (kind and nested nodes put `kubelet.slice/kubelet-kubepods.slice/…` in front);
//! - the same as one segment, `kubepods-…-pod<uid>.slice:<prefix>:<id>`: runc's systemd-style
//!   `slice:prefix:name` cgroupsPath used verbatim as a directory name, as containerd with
//!   systemd cgroups leaves it inside some nested nodes;
//! - cgroupfs driver: `kubepods[/burstable|/besteffort]/pod<uid>/<id>`, and CRI-O's
//!   `…/pod<uid>/crio-<id>`;
//! - plain hosts: `docker-<id>.scope`, `docker/<id>`, `libpod-<id>.scope` anywhere, and
//!   Podman's cgroupfs `libpod_parent/libpod-<id>` (conmon sits in `libpod_parent/conmon`).
//!
//! When container cgroups nest (systemd inside a container, Docker in Docker), the deepest
//! container segment wins and the pod fields come from the nearest pod slot above it.
//! A container can name cgroups below its own, so those two answers are only as trustworthy
//! as that delegated subtree; the kubepods part above it is not under the container's control.
//! Anything that is not one of these shapes is an error: attributing an event to the wrong
//! container is worse than not attributing it.

use thiserror::Error;

/// Longest path accepted (`PATH_MAX`). Runtime-made cgroup paths are a few hundred bytes,
/// so anything longer is broken or hostile, and the bound keeps every scan short.
pub const MAX_PATH_LEN: usize = 4096;

/// Length of a container id: 32 random bytes in hex, as containerd, CRI-O, Docker and Podman
/// make them.
const ID_LEN: usize = 64;

/// Runtime prefixes of systemd container scopes, and of the colon form without the dash.
const SCOPE_PREFIXES: [(&str, Runtime); 4] = [
    ("cri-containerd", Runtime::Containerd),
    ("crio", Runtime::Crio),
    ("docker", Runtime::Docker),
    ("libpod", Runtime::Podman),
];

/// conmon, the CRI-O and Podman monitor, lives beside its container; it is not the container.
const CONMON_PREFIXES: [&str; 2] = ["crio-conmon-", "libpod-conmon-"];

/// The container runtime a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    Podman,
}

/// Which cgroup driver created the container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
}

/// Kubernetes QoS class, from the kubepods level the pod sits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path says about the container it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// 64 lowercase hex characters, exactly.
    pub container_id: String,
    /// Kubernetes pod uid in its API form (dashed UUID, or a 32-hex static-pod hash).
    pub pod_uid: Option<String>,
    /// `None` when the path does not say (bare ids under a cgroupfs pod directory).
    pub runtime: Option<Runtime>,
    pub driver: CgroupDriver,
    /// `None` when not under kubepods.
    pub qos: Option<QosClass>,
}

/// Why a path does not name a container.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CgroupPathError {
    #[error("cgroup path is {len} bytes, over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("cgroup path has a NUL byte at offset {offset}")]
    NulByte { offset: usize },
    #[error("cgroup path has control byte {byte:#04x} at offset {offset}")]
    ControlByte { offset: usize, byte: u8 },
    #[error("cgroup path has a non-ASCII byte at offset {offset}")]
    NonAscii { offset: usize },
    #[error("cgroup path has an empty segment at index {index} (`//` or a trailing `/`)")]
    EmptySegment { index: usize },
    #[error("cgroup path has a `.` or `..` segment at index {index}")]
    DotSegment { index: usize },
    #[error("cgroup path does not name a container")]
    NotAContainer,
    #[error("segment `{segment}` is in a container's place but its id is not 64 lowercase hex characters")]
    InvalidContainerId { segment: String },
    #[error("segment `{segment}` looks like a container scope but lacks the `.scope` suffix")]
    MissingScopeSuffix { segment: String },
    #[error("segment `{segment}` is in a pod's place but its uid is neither a lowercase UUID nor a 32-hex static-pod hash")]
    InvalidPodUid { segment: String },
}

/// Parses `path` (relative to the cgroup mount) into the container it belongs to.
pub fn parse(path: &str) -> Result<CgroupIdentity, CgroupPathError> {
    check_bytes(path)?;
    // /proc writes a leading `/`; kubelet and runc configs often spell paths without one.
    let relative = path.strip_prefix('/').unwrap_or(path);
    if relative.is_empty() {
        return Err(CgroupPathError::NotAContainer);
    }
    let mut parent = Parent::Other;
    let mut pod = None;
    let mut found = None;
    for (index, segment) in relative.split('/').enumerate() {
        check_segment(index, segment)?;
        parent = match read_segment(parent, segment)? {
            Step::Container(here, inline_pod) => {
                pod = inline_pod.or(pod);
                found = Some((here, pod));
                Parent::Other
            }
            Step::Pod(slot, next) => {
                pod = Some(slot);
                next
            }
            Step::Parent(next) => next,
        };
    }
    let (container, pod) = found.ok_or(CgroupPathError::NotAContainer)?;
    Ok(container.into_owned(pod))
}

/// What the previous segment was: cgroupfs shapes are only recognisable from their parents.
#[derive(Debug, Clone, Copy)]
enum Parent {
    Other,
    /// `docker`, Docker's cgroupfs parent.
    Docker,
    /// `libpod_parent`, Podman's cgroupfs parent.
    Libpod,
    /// `kubepods`, the cgroupfs root of all pods (Guaranteed pods sit right below it).
    Kubepods,
    /// `kubepods/burstable` or `kubepods/besteffort`.
    KubepodsQos(QosClass),
    /// `…/pod<uid>` under cgroupfs: every child is a container or conmon.
    PodDir,
}

/// A pod slot seen on the way down; the uid is validated but still in its path spelling.
#[derive(Debug, Clone, Copy)]
struct PodSlot<'a> {
    uid: &'a str,
    qos: QosClass,
}

/// A container segment, borrowed from the input until the walk is done.
#[derive(Debug, Clone, Copy)]
struct Found<'a> {
    id: &'a str,
    runtime: Option<Runtime>,
    driver: CgroupDriver,
}

impl Found<'_> {
    fn into_owned(self, pod: Option<PodSlot<'_>>) -> CgroupIdentity {
        CgroupIdentity {
            container_id: self.id.to_owned(),
            // systemd escapes the uid's dashes as underscores; the API spells it with dashes.
            pod_uid: pod.map(|p| p.uid.replace('_', "-")),
            runtime: self.runtime,
            driver: self.driver,
            qos: pod.map(|p| p.qos),
        }
    }
}

/// What one segment turned out to be.
enum Step<'a> {
    /// A container, with the pod the segment itself names (colon form only).
    Container(Found<'a>, Option<PodSlot<'a>>),
    Pod(PodSlot<'a>, Parent),
    Parent(Parent),
}

fn check_bytes(path: &str) -> Result<(), CgroupPathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(CgroupPathError::TooLong {
            len: path.len(),
            max: MAX_PATH_LEN,
        });
    }
    for (offset, &byte) in path.as_bytes().iter().enumerate() {
        match byte {
            0 => return Err(CgroupPathError::NulByte { offset }),
            1..=0x1f | 0x7f => return Err(CgroupPathError::ControlByte { offset, byte }),
            0x80.. => return Err(CgroupPathError::NonAscii { offset }),
            _ => {}
        }
    }
    Ok(())
}

fn check_segment(index: usize, segment: &str) -> Result<(), CgroupPathError> {
    match segment {
        "" => Err(CgroupPathError::EmptySegment { index }),
        "." | ".." => Err(CgroupPathError::DotSegment { index }),
        _ => Ok(()),
    }
}

fn read_segment(parent: Parent, segment: &str) -> Result<Step<'_>, CgroupPathError> {
    if let Some(step) = read_colon_form(segment)? {
        return Ok(step);
    }
    match parent {
        Parent::PodDir => return read_pod_dir_child(segment),
        // Only hex-looking names are taken as ids, so a non-id child that something else
        // created under `docker` is not reported as a broken container.
        Parent::Docker if is_hex_digits(segment) => {
            let id = check_id(segment, segment)?;
            return Ok(container(id, Some(Runtime::Docker), CgroupDriver::Cgroupfs));
        }
        // Podman names the container's cgroup like its systemd scope, without `.scope`.
        Parent::Libpod => {
            if let Some(id) = segment.strip_prefix("libpod-") {
                if !id.starts_with("conmon") {
                    let id = check_id(id, segment)?;
                    return Ok(container(id, Some(Runtime::Podman), CgroupDriver::Cgroupfs));
                }
            }
        }
        _ => {}
    }
    if let Some((id, runtime)) = read_scope(segment)? {
        return Ok(container(id, Some(runtime), CgroupDriver::Systemd));
    }
    if let Some(slot) = read_systemd_pod_slice(segment)? {
        return Ok(Step::Pod(slot, Parent::Other));
    }
    read_cgroupfs_slot(parent, segment)
}

fn container(id: &str, runtime: Option<Runtime>, driver: CgroupDriver) -> Step<'_> {
    Step::Container(
        Found {
            id,
            runtime,
            driver,
        },
        None,
    )
}

/// `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`. Only the exact three-part form
/// with a known runtime counts, so other names that happen to hold a colon are left alone.
fn read_colon_form(segment: &str) -> Result<Option<Step<'_>>, CgroupPathError> {
    let mut parts = segment.split(':');
    let (Some(slice), Some(prefix), Some(id), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let Some(runtime) = runtime_of_prefix(prefix) else {
        return Ok(None);
    };
    if !slice.ends_with(".slice") {
        return Ok(None);
    }
    let pod = read_systemd_pod_slice(slice)?;
    let id = check_id(id, segment)?;
    let found = Found {
        id,
        runtime: Some(runtime),
        driver: CgroupDriver::Systemd,
    };
    Ok(Some(Step::Container(found, pod)))
}

fn runtime_of_prefix(prefix: &str) -> Option<Runtime> {
    SCOPE_PREFIXES
        .iter()
        .find(|(name, _)| *name == prefix)
        .map(|(_, runtime)| *runtime)
}

/// `<prefix>-<id>.scope`, the transient unit systemd creates for each container.
fn read_scope(segment: &str) -> Result<Option<(&str, Runtime)>, CgroupPathError> {
    if CONMON_PREFIXES.iter().any(|p| segment.starts_with(p)) {
        return Ok(None);
    }
    let Some((rest, runtime)) = SCOPE_PREFIXES.iter().find_map(|(name, runtime)| {
        let rest = segment.strip_prefix(name)?.strip_prefix('-')?;
        Some((rest, *runtime))
    }) else {
        return Ok(None);
    };
    match rest.strip_suffix(".scope") {
        Some(id) => Ok(Some((check_id(id, segment)?, runtime))),
        // An id with its suffix cut off; names such as `crio-wipe.service` are left alone.
        None if is_hex_digits(rest) => Err(CgroupPathError::MissingScopeSuffix {
            segment: segment.to_owned(),
        }),
        None => Ok(None),
    }
}

/// Children of a cgroupfs pod directory: `<id>` (containerd, dockershim), `crio-<id>`
/// (CRI-O) or `crio-conmon-<id>`. Nothing else belongs there, so anything else is an error.
fn read_pod_dir_child(segment: &str) -> Result<Step<'_>, CgroupPathError> {
    if segment.starts_with("crio-conmon-") {
        return Ok(Step::Parent(Parent::Other));
    }
    let step = match segment.strip_prefix("crio-") {
        Some(id) => container(
            check_id(id, segment)?,
            Some(Runtime::Crio),
            CgroupDriver::Cgroupfs,
        ),
        None => container(check_id(segment, segment)?, None, CgroupDriver::Cgroupfs),
    };
    Ok(step)
}

/// `[<prefix>-]kubepods[-burstable|-besteffort]-pod<uid>.slice`. systemd itself keeps each
/// slice's name prefixed by its parent's, so the name alone says where the slice sits.
fn read_systemd_pod_slice(segment: &str) -> Result<Option<PodSlot<'_>>, CgroupPathError> {
    let Some(stem) = segment.strip_suffix(".slice") else {
        return Ok(None);
    };
    // Find `-pod` after a kubepods level rather than at the last dash, so that a uid
    // spelled with dashes is reported as invalid instead of hiding the pod.
    let Some((uid, qos)) = stem.match_indices("-pod").find_map(|(at, _)| {
        let qos = kubepods_qos(&stem[..at])?;
        Some((&stem[at + "-pod".len()..], qos))
    }) else {
        return Ok(None);
    };
    check_uid(uid, b'_', segment)?;
    Ok(Some(PodSlot { uid, qos }))
}

/// The QoS class a systemd kubepods slice stem stands for, if it is one.
fn kubepods_qos(stem: &str) -> Option<QosClass> {
    let levels = [
        ("kubepods", QosClass::Guaranteed),
        ("kubepods-burstable", QosClass::Burstable),
        ("kubepods-besteffort", QosClass::BestEffort),
    ];
    levels.iter().find_map(|(name, qos)| {
        let before = stem.strip_suffix(name)?;
        (before.is_empty() || before.ends_with('-')).then_some(*qos)
    })
}

/// cgroupfs: `kubepods`, then an optional QoS directory, then `pod<uid>`.
fn read_cgroupfs_slot(parent: Parent, segment: &str) -> Result<Step<'_>, CgroupPathError> {
    let next = match (parent, segment) {
        (_, "kubepods") => Parent::Kubepods,
        (_, "docker") => Parent::Docker,
        (_, "libpod_parent") => Parent::Libpod,
        (Parent::Kubepods, "burstable") => Parent::KubepodsQos(QosClass::Burstable),
        (Parent::Kubepods, "besteffort") => Parent::KubepodsQos(QosClass::BestEffort),
        (Parent::Kubepods, _) => return read_pod_dir(segment, QosClass::Guaranteed),
        (Parent::KubepodsQos(qos), _) => return read_pod_dir(segment, qos),
        _ => Parent::Other,
    };
    Ok(Step::Parent(next))
}

fn read_pod_dir(segment: &str, qos: QosClass) -> Result<Step<'_>, CgroupPathError> {
    let Some(uid) = segment.strip_prefix("pod") else {
        return Ok(Step::Parent(Parent::Other));
    };
    check_uid(uid, b'-', segment)?;
    Ok(Step::Pod(PodSlot { uid, qos }, Parent::PodDir))
}

fn check_id<'a>(id: &'a str, segment: &str) -> Result<&'a str, CgroupPathError> {
    if id.len() == ID_LEN && id.bytes().all(is_lower_hex) {
        Ok(id)
    } else {
        Err(CgroupPathError::InvalidContainerId {
            segment: segment.to_owned(),
        })
    }
}

/// A dashed (or, in systemd names, underscored) lowercase UUID, or the 32-hex config hash
/// kubelet uses as the uid of a static pod.
fn check_uid(uid: &str, separator: u8, segment: &str) -> Result<(), CgroupPathError> {
    let bytes = uid.as_bytes();
    let valid = match bytes.len() {
        32 => bytes.iter().copied().all(is_lower_hex),
        36 => bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == separator,
            _ => is_lower_hex(b),
        }),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(CgroupPathError::InvalidPodUid {
            segment: segment.to_owned(),
        })
    }
}

fn is_lower_hex(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'a'..=b'f')
}

/// Hex digits of either case: what an id looks like before it is checked.
fn is_hex_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupDriver::{Cgroupfs, Systemd};
    use CgroupPathError as E;

    const ID: &str = concat!(
        "3f8a1c2e9b7d4056",
        "a1e2f3c4b5d6e7f8",
        "091a2b3c4d5e6f70",
        "8192a3b4c5d6e7f8"
    );
    const ID2: &str = concat!(
        "c0ffee00deadbeef",
        "0123456789abcdef",
        "fedcba9876543210",
        "00112233445566aa"
    );
    const UID: &str = "0b8e3a7c-1f2d-4e5a-9b6c-7d8e9f0a1b2c";
    const UID_US: &str = "0b8e3a7c_1f2d_4e5a_9b6c_7d8e9f0a1b2c";
    const STATIC_UID: &str = "6f1d2c3b4a5968778695a4b3c2d1e0f9";

    fn cg(
        id: &str,
        pod_uid: Option<&str>,
        runtime: Option<Runtime>,
        driver: CgroupDriver,
        qos: Option<QosClass>,
    ) -> CgroupIdentity {
        CgroupIdentity {
            container_id: id.to_owned(),
            pod_uid: pod_uid.map(str::to_owned),
            runtime,
            driver,
            qos,
        }
    }

    fn in_pod(
        id: &str,
        runtime: Option<Runtime>,
        driver: CgroupDriver,
        qos: QosClass,
    ) -> CgroupIdentity {
        cg(id, Some(UID), runtime, driver, Some(qos))
    }

    fn bare(id: &str, runtime: Runtime, driver: CgroupDriver) -> CgroupIdentity {
        cg(id, None, Some(runtime), driver, None)
    }

    fn expect(path: &str, want: CgroupIdentity) {
        assert_eq!(parse(path), Ok(want), "path: {path}");
    }

    fn reject(path: &str, want: CgroupPathError) {
        assert_eq!(parse(path), Err(want), "path: {path}");
    }

    fn bad_id(segment: &str) -> CgroupPathError {
        E::InvalidContainerId {
            segment: segment.to_owned(),
        }
    }

    fn bad_uid(segment: &str) -> CgroupPathError {
        E::InvalidPodUid {
            segment: segment.to_owned(),
        }
    }

    #[test]
    fn fixtures_have_the_lengths_they_claim() {
        assert_eq!(
            (ID.len(), ID2.len(), UID.len(), STATIC_UID.len()),
            (64, 64, 36, 32)
        );
        assert_eq!(UID.replace('-', "_"), UID_US);
    }

    #[test]
    fn systemd_burstable_containerd() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        expect(
            &path,
            in_pod(ID, Some(Runtime::Containerd), Systemd, QosClass::Burstable),
        );
    }

    #[test]
    fn systemd_besteffort_crio() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{ID}.scope"
        );
        expect(
            &path,
            in_pod(ID, Some(Runtime::Crio), Systemd, QosClass::BestEffort),
        );
    }

    #[test]
    fn systemd_guaranteed_docker() {
        let path = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/docker-{ID}.scope");
        expect(
            &path,
            in_pod(ID, Some(Runtime::Docker), Systemd, QosClass::Guaranteed),
        );
    }

    #[test]
    fn podman_cgroupfs() {
        let c = parse(&format!("/libpod_parent/libpod-{ID}")).expect("podman cgroupfs");
        assert_eq!(c.container_id, ID);
        assert_eq!((c.runtime, c.driver), (Some(Runtime::Podman), Cgroupfs));
        assert_eq!((c.pod_uid, c.qos), (None, None));
        assert_eq!(
            parse("/libpod_parent/conmon"),
            Err(E::NotAContainer),
            "conmon is not the container"
        );
        assert_eq!(parse("/libpod_parent"), Err(E::NotAContainer));
        assert!(matches!(
            parse("/libpod_parent/libpod-abc"),
            Err(E::InvalidContainerId { .. })
        ));
        // A delegated subtree below the container still belongs to it.
        let nested = parse(&format!("/libpod_parent/libpod-{ID}/init.scope")).expect("nested");
        assert_eq!(nested.container_id, ID);
    }

    #[test]
    fn systemd_guaranteed_libpod() {
        let path = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/libpod-{ID}.scope");
        expect(
            &path,
            in_pod(ID, Some(Runtime::Podman), Systemd, QosClass::Guaranteed),
        );
    }

    #[test]
    fn systemd_static_pod_uid() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope"
        );
        let want = cg(
            ID,
            Some(STATIC_UID),
            Some(Runtime::Containerd),
            Systemd,
            Some(QosClass::Burstable),
        );
        expect(&path, want);
    }

    #[test]
    fn kind_node_with_kubelet_slice_prefix() {
        let path = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        expect(
            &path,
            in_pod(ID, Some(Runtime::Containerd), Systemd, QosClass::BestEffort),
        );
        let guaranteed = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        expect(
            &guaranteed,
            in_pod(ID, Some(Runtime::Containerd), Systemd, QosClass::Guaranteed),
        );
    }

    #[test]
    fn colon_form_under_containerd_service() {
        let path = format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod{UID_US}.slice:cri-containerd:{ID}"
        );
        expect(
            &path,
            in_pod(ID, Some(Runtime::Containerd), Systemd, QosClass::BestEffort),
        );
        let guaranteed = format!(
            "/system.slice/containerd.service/kubepods-pod{UID_US}.slice:cri-containerd:{ID}"
        );
        expect(
            &guaranteed,
            in_pod(ID, Some(Runtime::Containerd), Systemd, QosClass::Guaranteed),
        );
        let crio = format!("/kubepods-burstable-pod{UID_US}.slice:crio:{ID}");
        expect(
            &crio,
            in_pod(ID, Some(Runtime::Crio), Systemd, QosClass::Burstable),
        );
    }

    #[test]
    fn colon_form_outside_kubepods_has_no_pod() {
        let path = format!("/system.slice:docker:{ID}");
        expect(&path, bare(ID, Runtime::Docker, Systemd));
    }

    #[test]
    fn cgroupfs_burstable_guaranteed_besteffort() {
        let want = |qos| in_pod(ID, None, Cgroupfs, qos);
        expect(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            want(QosClass::Burstable),
        );
        expect(
            &format!("/kubepods/pod{UID}/{ID}"),
            want(QosClass::Guaranteed),
        );
        expect(
            &format!("/kubepods/besteffort/pod{UID}/{ID}"),
            want(QosClass::BestEffort),
        );
    }

    #[test]
    fn cgroupfs_static_pod_uid() {
        let want = cg(
            ID,
            Some(STATIC_UID),
            None,
            Cgroupfs,
            Some(QosClass::Guaranteed),
        );
        expect(&format!("/kubepods/pod{STATIC_UID}/{ID}"), want);
    }

    #[test]
    fn cgroupfs_crio_prefix_names_the_runtime() {
        let path = format!("/kubepods/burstable/pod{UID}/crio-{ID}");
        expect(
            &path,
            in_pod(ID, Some(Runtime::Crio), Cgroupfs, QosClass::Burstable),
        );
    }

    #[test]
    fn path_without_leading_slash_as_kubelet_spells_it() {
        let path = format!("kubepods/besteffort/pod{UID}/{ID}");
        expect(&path, in_pod(ID, None, Cgroupfs, QosClass::BestEffort));
    }

    #[test]
    fn plain_docker_host() {
        expect(
            &format!("/system.slice/docker-{ID}.scope"),
            bare(ID, Runtime::Docker, Systemd),
        );
        expect(
            &format!("/docker/{ID}"),
            bare(ID, Runtime::Docker, Cgroupfs),
        );
    }

    #[test]
    fn podman_system_and_rootless() {
        expect(
            &format!("/machine.slice/libpod-{ID}.scope"),
            bare(ID, Runtime::Podman, Systemd),
        );
        let rootless =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        expect(&rootless, bare(ID, Runtime::Podman, Systemd));
        // Podman 4+ moves the payload into a `container` child of the scope.
        let split = format!("/machine.slice/libpod-{ID}.scope/container");
        expect(&split, bare(ID, Runtime::Podman, Systemd));
    }

    #[test]
    fn nested_children_belong_to_the_container_above() {
        let init = format!("/kubepods/burstable/pod{UID}/{ID}/init.scope");
        expect(&init, in_pod(ID, None, Cgroupfs, QosClass::Burstable));
        let systemd_inside = format!(
            "/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope/system.slice/foo.service"
        );
        expect(
            &systemd_inside,
            in_pod(ID, Some(Runtime::Containerd), Systemd, QosClass::Guaranteed),
        );
    }

    #[test]
    fn deepest_container_wins_and_keeps_the_enclosing_pod() {
        let dind = format!("/kubepods/besteffort/pod{UID}/{ID}/docker/{ID2}");
        expect(
            &dind,
            in_pod(ID2, Some(Runtime::Docker), Cgroupfs, QosClass::BestEffort),
        );
        let scope_in_scope = format!(
            "/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope/system.slice/docker-{ID2}.scope"
        );
        expect(
            &scope_in_scope,
            in_pod(ID2, Some(Runtime::Docker), Systemd, QosClass::Guaranteed),
        );
    }

    #[test]
    fn kind_node_container_on_a_cgroup_v1_host() {
        // Without a cgroup namespace the node container's own cgroup shows first.
        let path = format!("/docker/{ID2}/kubepods/besteffort/pod{UID}/{ID}");
        expect(&path, in_pod(ID, None, Cgroupfs, QosClass::BestEffort));
    }

    #[test]
    fn non_containers_are_rejected() {
        let paths = [
            String::new(),
            "/".to_owned(),
            "/init.scope".to_owned(),
            "/system.slice/sshd.service".to_owned(),
            "/user.slice/user-0.slice/session-3.scope".to_owned(),
            "/system.slice/containerd.service".to_owned(),
            "/system.slice/docker.service".to_owned(),
            "/system.slice/crio-wipe.service".to_owned(),
            format!("/system.slice/{ID}"),
            "/docker".to_owned(),
            "/docker/buildkit".to_owned(),
            "/kubepods".to_owned(),
            "/kubepods/burstable".to_owned(),
            "/kubepods/besteffort".to_owned(),
            format!("/kubepods/burstable/pod{UID}"),
            format!("/kubepods/pod{UID}"),
            "/kubepods.slice".to_owned(),
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
            ),
            format!("/kubepods.slice/kubepods-pod{UID_US}.slice"),
            format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-conmon-{ID}.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"),
            "/system.slice/docker-.service".to_owned(),
            "/system.slice/docker-".to_owned(),
        ];
        for path in &paths {
            reject(path, E::NotAContainer);
        }
    }

    #[test]
    fn too_long_is_rejected_before_anything_else() {
        let head = format!("/kubepods/pod{UID}/{ID}/");
        let exact = format!("{head}{}", "a".repeat(MAX_PATH_LEN - head.len()));
        assert_eq!(exact.len(), MAX_PATH_LEN);
        expect(&exact, in_pod(ID, None, Cgroupfs, QosClass::Guaranteed));
        let over = format!("{exact}b");
        reject(
            &over,
            E::TooLong {
                len: 4097,
                max: 4096,
            },
        );
        let huge = "\0".repeat(1 << 20);
        reject(
            &huge,
            E::TooLong {
                len: 1 << 20,
                max: 4096,
            },
        );
    }

    #[test]
    fn empty_and_dot_segments() {
        reject(
            &format!("/kubepods//pod{UID}/{ID}"),
            E::EmptySegment { index: 1 },
        );
        reject(&format!("//docker/{ID}"), E::EmptySegment { index: 0 });
        reject(&format!("/docker/{ID}/"), E::EmptySegment { index: 2 });
        reject("//", E::EmptySegment { index: 0 });
        reject(
            &format!("/kubepods/../pod{UID}/{ID}"),
            E::DotSegment { index: 1 },
        );
        reject(&format!("/docker/./{ID}"), E::DotSegment { index: 1 });
        reject(&format!("/docker/{ID}/.."), E::DotSegment { index: 2 });
    }

    #[test]
    fn nul_control_and_non_ascii_bytes() {
        reject(&format!("/docker/{ID}\0"), E::NulByte { offset: 72 });
        reject(
            &format!("/docker/{ID}\n"),
            E::ControlByte {
                offset: 72,
                byte: b'\n',
            },
        );
        reject(
            "/docker/\x7f",
            E::ControlByte {
                offset: 8,
                byte: 0x7f,
            },
        );
        reject(&format!("/dockér/{ID}"), E::NonAscii { offset: 5 });
    }

    #[test]
    fn uppercase_ids_are_rejected_in_every_shape() {
        let upper = ID.to_uppercase();
        let scope = format!("docker-{upper}.scope");
        reject(&format!("/system.slice/{scope}"), bad_id(&scope));
        reject(&format!("/docker/{upper}"), bad_id(&upper));
        reject(&format!("/kubepods/pod{UID}/{upper}"), bad_id(&upper));
        let colon = format!("kubepods-pod{UID_US}.slice:cri-containerd:{upper}");
        reject(&format!("/{colon}"), bad_id(&colon));
    }

    #[test]
    fn ids_of_the_wrong_length() {
        let short = &ID[..63];
        let long = format!("{ID}a");
        reject(&format!("/kubepods/pod{UID}/{short}"), bad_id(short));
        reject(&format!("/kubepods/pod{UID}/{long}"), bad_id(&long));
        reject(&format!("/docker/{short}"), bad_id(short));
        let scope = format!("cri-containerd-{short}.scope");
        reject(
            &format!("/kubepods.slice/kubepods-pod{UID_US}.slice/{scope}"),
            bad_id(&scope),
        );
        let scope = format!("crio-{long}.scope");
        reject(
            &format!("/kubepods.slice/kubepods-pod{UID_US}.slice/{scope}"),
            bad_id(&scope),
        );
    }

    #[test]
    fn scope_suffix_missing_or_id_empty() {
        let seg = format!("cri-containerd-{ID}");
        let path = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/{seg}");
        reject(&path, E::MissingScopeSuffix { segment: seg });
        let seg = format!("docker-{ID}");
        reject(
            &format!("/system.slice/{seg}"),
            E::MissingScopeSuffix { segment: seg },
        );
        reject("/system.slice/docker-.scope", bad_id("docker-.scope"));
        reject(
            "/system.slice/cri-containerd-.scope",
            bad_id("cri-containerd-.scope"),
        );
        let doubled = format!("libpod-{ID}.scope.scope");
        reject(&format!("/machine.slice/{doubled}"), bad_id(&doubled));
    }

    #[test]
    fn anything_under_a_cgroupfs_pod_must_be_a_container() {
        reject(&format!("/kubepods/pod{UID}/sandbox"), bad_id("sandbox"));
        let crio_short = format!("crio-{}", &ID[..12]);
        reject(
            &format!("/kubepods/pod{UID}/{crio_short}"),
            bad_id(&crio_short),
        );
    }

    #[test]
    fn colon_form_with_bad_parts() {
        let seg = format!("kubepods-pod{UID_US}.slice:cri-containerd:");
        reject(&format!("/{seg}"), bad_id(&seg));
        let seg = format!("kubepods-podnotauid.slice:crio:{ID}");
        reject(&format!("/{seg}"), bad_uid("kubepods-podnotauid.slice"));
        // An unknown prefix or a fourth part is not the runc form at all.
        reject(
            &format!("/kubepods-pod{UID_US}.slice:runc:{ID}"),
            E::NotAContainer,
        );
        reject(
            &format!("/kubepods-pod{UID_US}.slice:crio:{ID}:x"),
            E::NotAContainer,
        );
    }

    #[test]
    fn invalid_pod_uids_are_errors_not_dropped() {
        let upper = UID.to_uppercase();
        let cases = [
            format!("pod{upper}"),
            format!("pod{UID_US}"),
            format!("pod{}", &UID[..35]),
            format!("pod{UID}0"),
            format!("pod{}", &STATIC_UID[..31]),
            "pod".to_owned(),
            "podman".to_owned(),
            format!("pod{}", UID.replace('0', "g")),
        ];
        for seg in &cases {
            reject(&format!("/kubepods/burstable/{seg}/{ID}"), bad_uid(seg));
            reject(&format!("/kubepods/{seg}/{ID}"), bad_uid(seg));
        }
        let slices = [
            format!("kubepods-burstable-pod{UID}.slice"),
            format!("kubepods-burstable-pod{}.slice", UID_US.to_uppercase()),
            "kubepods-burstable-pod.slice".to_owned(),
            format!("kubepods-pod{}x.slice", &UID_US[..35]),
        ];
        for seg in &slices {
            let path = format!("/kubepods.slice/kubepods-burstable.slice/{seg}/crio-{ID}.scope");
            reject(&path, bad_uid(seg));
        }
    }

    #[test]
    fn errors_read_clearly() {
        let message = E::InvalidContainerId {
            segment: "docker-.scope".to_owned(),
        }
        .to_string();
        assert_eq!(
            message,
            "segment `docker-.scope` is in a container's place but its id is not 64 lowercase hex characters"
        );
        assert_eq!(
            E::ControlByte {
                offset: 3,
                byte: 10
            }
            .to_string(),
            "cgroup path has control byte 0x0a at offset 3"
        );
    }

    /// xorshift64: a few lines of deterministic randomness, so the test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn is_api_uid(uid: &str) -> bool {
        check_uid(uid, b'-', uid).is_ok()
    }

    /// What must hold for any input: no panic, and an answer never invents an id or a uid.
    fn check_invariants(input: &str) -> bool {
        let result = parse(input);
        if input.len() > MAX_PATH_LEN {
            assert!(matches!(result, Err(E::TooLong { .. })), "{input:?}");
        }
        let Ok(found) = result else { return false };
        assert!(
            check_id(&found.container_id, "").is_ok(),
            "{input:?} -> {found:?}"
        );
        assert!(
            input.contains(&found.container_id),
            "{input:?} -> {found:?}"
        );
        assert_eq!(found.pod_uid.is_some(), found.qos.is_some(), "{input:?}");
        if let Some(uid) = &found.pod_uid {
            assert!(is_api_uid(uid), "{input:?} -> {found:?}");
            let escaped = uid.replace('-', "_");
            assert!(
                input.contains(uid.as_str()) || input.contains(&escaped),
                "{input:?}"
            );
        }
        true
    }

    fn valid_samples() -> Vec<String> {
        vec![
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{STATIC_UID}.slice/crio-{ID}.scope/init.scope"),
            format!("/system.slice/containerd.service/kubepods-besteffort-pod{UID_US}.slice:cri-containerd:{ID}"),
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/crio-{ID}"),
            format!("/docker/{ID2}/kubepods/burstable/pod{UID}/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/system.slice/docker-{ID}.scope"),
        ]
    }

    fn mutate(rng: &mut Rng, path: &str) -> String {
        const ALPHABET: &[u8] = b"/-_.:0123456789abcdefABCDEF\0\xff";
        let mut bytes = path.as_bytes().to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            let byte = ALPHABET[rng.below(ALPHABET.len())];
            match rng.below(5) {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, byte),
                3 => bytes.truncate(at),
                _ => {
                    let tail = bytes[at..].to_vec();
                    bytes.extend_from_slice(&tail);
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn random_bytes(rng: &mut Rng) -> String {
        let len = if rng.below(50) == 0 {
            4000 + rng.below(200)
        } else {
            rng.below(300)
        };
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn random_tokens(rng: &mut Rng) -> String {
        let tokens = [
            "/",
            "/",
            "/",
            "kubepods",
            ".slice",
            "-",
            "pod",
            UID,
            UID_US,
            STATIC_UID,
            ID,
            ID2,
            "burstable",
            "besteffort",
            "cri-containerd",
            "crio",
            "docker",
            "libpod",
            "conmon",
            ".scope",
            ":",
            "..",
            "system.slice",
            "init.scope",
        ];
        (0..rng.below(16))
            .map(|_| tokens[rng.below(tokens.len())])
            .collect()
    }

    #[test]
    fn random_and_mutated_inputs_never_panic_or_invent() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let samples = valid_samples();
        for sample in &samples {
            assert!(check_invariants(sample), "sample must parse: {sample}");
        }
        let mut accepted = 0;
        for round in 0..3000 {
            let sample = &samples[round % samples.len()];
            accepted += usize::from(check_invariants(&mutate(&mut rng, sample)));
            check_invariants(&random_bytes(&mut rng));
            accepted += usize::from(check_invariants(&random_tokens(&mut rng)));
        }
        // The loop is only worth something if it reaches the success paths too.
        assert!(accepted > 300, "only {accepted} inputs parsed");
    }
}
