//! Maps cgroup v2 ids (what the probes report) to containers. Ids are learned from the
//! kernel as cgroups are created (with their paths), and by walking the cgroup v2
//! hierarchy, where a cgroup's id is the inode number of its directory: once at start,
//! rarely as a safety net, and on a miss, rate-limited. A removed cgroup stays known for
//! its late events until it is forgotten.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::cgroup_path::{self, CgroupIdentity};

/// `statfs` magic of a cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Deepest cgroup nesting walked (kubepods paths are 4-6 deep; nested runtimes add a few).
const MAX_DEPTH: usize = 16;
/// A miss triggers a rescan at most this often.
const MISS_RESCAN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("{0} is not a cgroup v2 mount (pass --cgroup-root with the host's cgroup v2 mount, e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)")]
    NotCgroup2(String),
    #[error("no cgroup v2 file system is mounted (looked in /proc/self/mountinfo); Gracewatch needs cgroup v2 ids")]
    NoCgroup2Mount,
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A container as the kernel side knows it: its cgroup id, the cgroup path, and what the
/// path says (container id, pod uid, runtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupContainer {
    pub cgroup_id: u64,
    /// Path relative to the cgroup v2 mount, starting with `/`.
    pub path: String,
    pub cgroup: CgroupIdentity,
}

impl CgroupContainer {
    /// The 12-character id people and Docker use.
    pub fn short_id(&self) -> &str {
        &self.cgroup.container_id[..12]
    }
}

/// Answer of [`Resolver::lookup`].
#[derive(Debug, Clone)]
pub enum Lookup {
    Container(Arc<CgroupContainer>),
    /// A cgroup that exists (or existed) and is not a container's.
    NotContainer,
    /// Not seen by any walk yet.
    Unknown,
}

#[derive(Debug, Clone)]
enum Entry {
    Container(Arc<CgroupContainer>),
    /// A cgroup that exists but is not a container (host service, pod slice, ...).
    NotContainer,
}

/// Result of a walk: containers that appeared and cgroups that disappeared.
#[derive(Debug, Default)]
pub struct ScanDelta {
    pub added: Vec<Arc<CgroupContainer>>,
    pub removed: Vec<u64>,
}

pub struct Resolver {
    root: PathBuf,
    by_id: HashMap<u64, Entry>,
    /// Ids seen in the last walk (to tell removals).
    present: HashMap<u64, ()>,
    last_scan: Option<Instant>,
}

impl Resolver {
    /// A resolver over the cgroup v2 hierarchy at `root`, or the one this process sees.
    pub fn new(root: Option<&Path>) -> Result<Self, ResolverError> {
        let root = match root {
            Some(r) => v2_under(r)?,
            None => find_v2_mount()?,
        };
        Ok(Self::with_root(root))
    }

    /// A resolver that trusts `root` to be a cgroup v2 tree (tests build fake ones).
    pub fn with_root(root: PathBuf) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            present: HashMap::new(),
            last_scan: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What is known about a cgroup id without touching the file system.
    pub fn lookup(&self, cgroup_id: u64) -> Lookup {
        match self.by_id.get(&cgroup_id) {
            Some(Entry::Container(c)) => Lookup::Container(c.clone()),
            Some(Entry::NotContainer) => Lookup::NotContainer,
            None => Lookup::Unknown,
        }
    }

    /// Whether a miss may trigger a walk now (misses are rate-limited).
    pub fn rescan_due(&self) -> bool {
        self.last_scan
            .is_none_or(|t| t.elapsed() >= MISS_RESCAN_INTERVAL)
    }

    /// Learns the cgroup of a live process from `/proc/<tgid>/cgroup`, accepting it only
    /// when that directory's inode is `cgroup_id` (the process may have moved). Returns
    /// the container it belongs to, if any, when this is news.
    pub fn learn_from_proc(&mut self, tgid: u32, cgroup_id: u64) -> Option<Arc<CgroupContainer>> {
        let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
        let dir = self.root.join(path.trim_start_matches('/'));
        if std::fs::metadata(dir).ok()?.ino() != cgroup_id {
            return None;
        }
        self.present.insert(cgroup_id, ());
        self.insert(cgroup_id, path)
    }

    /// A cgroup the kernel reported created, with its path. Returns the container it is,
    /// if it is one.
    pub fn created(&mut self, cgroup_id: u64, path: &str) -> Option<Arc<CgroupContainer>> {
        self.present.insert(cgroup_id, ());
        self.insert(cgroup_id, path)
    }

    /// A cgroup the kernel reported removed; true when it was a known container's. Its
    /// entry stays (late events still resolve) until `forget` is called.
    pub fn removed(&mut self, cgroup_id: u64) -> bool {
        self.present.remove(&cgroup_id);
        matches!(self.by_id.get(&cgroup_id), Some(Entry::Container(_)))
    }

    /// Records a cgroup directly (tests, benchmarks, and paths learned from /proc).
    pub fn insert(&mut self, cgroup_id: u64, path: &str) -> Option<Arc<CgroupContainer>> {
        let entry = match cgroup_path::parse(path) {
            Ok(cgroup) => Entry::Container(Arc::new(CgroupContainer {
                cgroup_id,
                path: path.to_string(),
                cgroup,
            })),
            Err(_) => Entry::NotContainer,
        };
        let out = match &entry {
            Entry::Container(c) => Some(c.clone()),
            Entry::NotContainer => None,
        };
        self.by_id.insert(cgroup_id, entry);
        out
    }

    /// Walks the hierarchy; new containers are returned, vanished cgroups too. Entries of
    /// vanished cgroups are kept (late events still resolve) until `forget` is called.
    pub fn rescan(&mut self) -> Result<ScanDelta, ResolverError> {
        self.last_scan = Some(Instant::now());
        let mut seen = HashMap::with_capacity(self.present.len());
        let mut delta = ScanDelta::default();
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                // A cgroup removed during the walk is normal; the root failing is not.
                Err(source) if dir == self.root => {
                    return Err(ResolverError::Io {
                        path: dir.display().to_string(),
                        source,
                    })
                }
                Err(_) => continue,
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                let path = entry.path();
                let id = meta.ino();
                seen.insert(id, ());
                if !self.by_id.contains_key(&id) {
                    if let Some(rel) = relative(&self.root, &path) {
                        if let Some(c) = self.insert(id, &rel) {
                            delta.added.push(c);
                        }
                    }
                }
                if depth + 1 < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            }
        }
        delta.removed = self
            .present
            .keys()
            .filter(|id| !seen.contains_key(id))
            .copied()
            .collect();
        self.present = seen;
        Ok(delta)
    }

    /// Drops what is known about a cgroup that is gone and no longer needed.
    pub fn forget(&mut self, cgroup_id: u64) {
        self.by_id.remove(&cgroup_id);
    }
}

fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?.to_str()?;
    Some(format!("/{rel}"))
}

/// `root` itself when it is cgroup v2, else its `unified` child (hybrid layout).
fn v2_under(root: &Path) -> Result<PathBuf, ResolverError> {
    if is_cgroup2(root) {
        return Ok(root.to_path_buf());
    }
    let unified = root.join("unified");
    if is_cgroup2(&unified) {
        return Ok(unified);
    }
    Err(ResolverError::NotCgroup2(root.display().to_string()))
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        // The width of f_type differs between targets, hence the cast.
        .map(|s| {
            #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
            let magic = s.filesystem_type().0 as i64;
            magic == CGROUP2_SUPER_MAGIC
        })
        .unwrap_or(false)
}

fn find_v2_mount() -> Result<PathBuf, ResolverError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| ResolverError::Io {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    cgroup2_mount_point(&mountinfo)
        .map(PathBuf::from)
        .ok_or(ResolverError::NoCgroup2Mount)
}

/// The mount point of the first cgroup2 file system in a mountinfo text.
fn cgroup2_mount_point(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(str::to_string))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn finds_the_cgroup2_mount_in_mountinfo() {
        let text = "25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                    35 25 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_point(text).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(cgroup2_mount_point("garbage\n\n - \n"), None);
    }

    #[test]
    fn walks_a_tree_and_resolves_by_inode() {
        let dir = std::env::temp_dir().join(format!("gw-resolver-{}", std::process::id()));
        let pod = "kubepods/besteffort/pod6f1c2d3e-1111-2222-3333-444455556666";
        let container = dir.join(pod).join(ID);
        std::fs::create_dir_all(&container).expect("mkdir");
        std::fs::create_dir_all(dir.join("system.slice/sshd.service")).expect("mkdir");
        let ino = std::fs::metadata(&container).expect("stat").ino();
        let host_ino = std::fs::metadata(dir.join("system.slice"))
            .expect("stat")
            .ino();

        let mut r = Resolver::with_root(dir.clone());
        let delta = r.rescan().expect("scan");
        assert_eq!(delta.added.len(), 1);
        let Lookup::Container(c) = r.lookup(ino) else {
            panic!("container does not resolve")
        };
        assert_eq!(c.cgroup.container_id, ID);
        assert_eq!(c.short_id(), "0123456789ab");
        assert_eq!(
            c.cgroup.pod_uid.as_deref(),
            Some("6f1c2d3e-1111-2222-3333-444455556666")
        );
        assert_eq!(c.path, format!("/{pod}/{ID}"));
        assert!(
            matches!(r.lookup(host_ino), Lookup::NotContainer),
            "host cgroups are not containers"
        );

        std::fs::remove_dir(&container).expect("rmdir");
        let delta = r.rescan().expect("scan");
        assert_eq!(delta.removed, vec![ino]);
        assert!(
            matches!(r.lookup(ino), Lookup::Container(_)),
            "still resolves until forgotten"
        );
        r.forget(ino);
        assert!(matches!(r.lookup(ino), Lookup::Unknown));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
