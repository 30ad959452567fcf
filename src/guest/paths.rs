//! Every path and name in the build VM, spelled once. Guest scripts (`scripts/*.sh`) get them
//! as `MICRODIB_*` variables (`script_env`), so no script spells one either.

/// The appliance's PATH.
pub use microdib_proto::GUEST_PATH;

/// The aux tree in the appliance (a tmpfs): hooks, wrappers, the library, `perm/` (the helper
/// drive) and `out/` (NAME.d). Bound into the target at `IN_TARGET_AUX`.
pub const AUX: &str = "/run/microdib/aux";
// The sysroot's literal, so that the paths under it can be built from it at compile time.
macro_rules! sysroot {
    () => {
        "/sysroot"
    };
}
/// Where the target's root is mounted in the appliance.
pub const SYSROOT: &str = sysroot!();
/// Where root.d builds the tree (its TARGET_ROOT), before it moves up to `SYSROOT`.
pub const SUBROOT: &str = concat!(sysroot!(), "/subroot");
/// The aux tree as the target's scripts see it (relative to the target's root).
pub const IN_TARGET_AUX: &str = "/tmp/in_target.aux";
/// diskimage-builder's link to the hooks in the target (`in_target.aux/hooks`).
pub const IN_TARGET_D: &str = "/tmp/in_target.d";
/// `/run/microdib/disk/<serial>` links to each disk (`scripts/name-disks.sh`).
pub const DISKS: &str = "/run/microdib/disk";
/// diskimage-builder's block-device layer: its working directory (state from init to cleanup)
/// and where its Python code is copied.
pub const BLOCK_WORK: &str = "/run/microdib/dib-block";
pub const BLOCK_PYTHON: &str = "/run/microdib/dib-python";

/// The disk the image is written to.
pub const TARGET_SERIAL: &str = "microdib-target";
/// The helper drive (`--drive`, or a throwaway one): the build log and the download cache.
pub const HELPER_SERIAL: &str = "microdib-helper";
/// The scratch disk the tree is built on when diskimage-builder's block-device layer makes the
/// image (`engine::block_layer`).
pub const BUILD_SERIAL: &str = "microdib-build";

/// The guest path of the disk with `serial` (after `name-disks.sh` ran).
pub fn disk(serial: &str) -> String {
    format!("{DISKS}/{serial}")
}

/// A path under the appliance's aux tree.
pub fn aux(rel: &str) -> String {
    format!("{AUX}/{rel}")
}

/// The variables every guest script gets: the paths above, the PATH, the C locale.
pub fn script_env() -> [(&'static str, &'static str); 9] {
    [
        ("PATH", GUEST_PATH),
        ("LC_ALL", "C"),
        ("MICRODIB_AUX", AUX),
        ("MICRODIB_SYSROOT", SYSROOT),
        ("MICRODIB_SUBROOT", SUBROOT),
        ("MICRODIB_IN_TARGET_AUX", IN_TARGET_AUX),
        ("MICRODIB_DISKS", DISKS),
        ("MICRODIB_BLOCK_WORK", BLOCK_WORK),
        ("MICRODIB_BLOCK_PYTHON", BLOCK_PYTHON),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serial_is_one_the_naming_script_links() {
        for s in [TARGET_SERIAL, HELPER_SERIAL, BUILD_SERIAL, microdib_proto::APPLIANCE_DISK_SERIAL] {
            assert!(s.starts_with("microdib-"), "{s} would not be linked by name-disks.sh");
            assert!(disk(s).ends_with(s));
        }
        assert!(super::super::scripts::NAME_DISKS.text.contains("$MICRODIB_DISKS"));
    }
}
