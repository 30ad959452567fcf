//! The guest side's names: the serials the host gives the build VM's disks and where the guest
//! finds each. The host attaches disks in its own order; the guest always goes by serial.

/// The disk the image is written to.
pub const TARGET_SERIAL: &str = "microdib-target";
/// The helper drive (`--drive`, or a throwaway one): the build log and the download cache.
pub const HELPER_SERIAL: &str = "microdib-helper";
/// The scratch disk the tree is built on when diskimage-builder's block-device layer makes the
/// image (`block_layer`).
pub const BUILD_SERIAL: &str = "microdib-build";

/// Links `/run/microdib/disk/<serial>` to each disk; its arguments are the serials that must be
/// there.
pub const NAME_DISKS_SH: &str = include_str!("scripts/name-disks.sh");

/// The guest path of the disk with `serial` (after `NAME_DISKS_SH` ran).
pub fn disk(serial: &str) -> String {
    format!("/run/microdib/disk/{serial}")
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
        assert!(NAME_DISKS_SH.contains("/run/microdib/disk"));
    }
}
