//! Cgroup paths from `cgroup_mkdir` records and the tree walk: any string parses to a
//! container identity or a `CgroupPathError`, and an identity holds only what the path
//! says: its container id is 64 lowercase hex characters found in the path, its pod uid
//! (a dashed UUID or a 32-hex static-pod hash) is in the path as written there (systemd
//! spells the dashes as underscores), and a QoS class needs a kubepods level.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn uid_form(uid: &str) -> bool {
    let parts: Vec<&str> = uid.split('-').collect();
    let uuid = parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| lower_hex(p));
    let hash = uid.len() == 32 && lower_hex(uid);
    uuid || hash
}

fuzz_target!(|path: &str| {
    let Ok(identity) = gracewatch::attribution::cgroup_path::parse(path) else {
        return;
    };
    let id = &identity.container_id;
    assert!(id.len() == 64 && lower_hex(id), "container id {id:?} from {path:?}");
    assert!(path.contains(id.as_str()), "container id {id:?} not in {path:?}");
    if let Some(uid) = &identity.pod_uid {
        assert!(uid_form(uid), "pod uid {uid:?} from {path:?}");
        assert!(
            path.contains(uid.as_str()) || path.contains(&uid.replace('-', "_")),
            "pod uid {uid:?} not in {path:?}"
        );
    }
    if identity.qos.is_some() {
        assert!(path.contains("kubepods"), "QoS class without kubepods: {path:?}");
    }
});
