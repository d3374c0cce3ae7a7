//! Cgroup paths from `cgroup_mkdir` records and the tree walk: any string parses to a
//! container identity or a `CgroupPathError`, and an identity's id is what the path
//! holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if let Ok(identity) = gracewatch::attribution::cgroup_path::parse(path) {
        let _ = format!("{identity:?}");
    }
});
