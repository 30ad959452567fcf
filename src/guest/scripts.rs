//! The guest's shell scripts, one `.sh` file each (run with `sh -c` by `GuestOps::script`, with
//! the `paths::script_env` variables). Each file's first lines say what it does.

/// One guest script: its file name (for traces and errors) and text.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! scripts {
    ($($konst:ident = $file:literal;)*) => {
        $(pub const $konst: Script = Script { name: $file, text: include_str!(concat!("scripts/", $file)) };)*
        /// Every script, for the tests.
        pub const ALL: &[Script] = &[$($konst),*];
    };
}

scripts! {
    ABANDON = "abandon.sh";
    AUX_TMPFS = "aux-tmpfs.sh";
    BLOCK_LAYER_CONFIG = "block-layer-config.sh";
    BLOCK_LAYER_ENTER = "block-layer-enter.sh";
    BLOCK_LAYER_PREPARE = "block-layer-prepare.sh";
    BLOCK_LAYER = "block-layer.sh";
    CHECKPOINT = "checkpoint.sh";
    CLEAN_IMAGE = "clean-image.sh";
    FINISH_APPLIANCE = "finish-appliance.sh";
    HELPER_DRIVE = "helper-drive.sh";
    LIST_SCRIPTS = "list-scripts.sh";
    MKFS = "mkfs.sh";
    MOUNT_AUX = "mount-aux.sh";
    MOUNT_ROOT = "mount-root.sh";
    NAME_DISKS = "name-disks.sh";
    REMOUNT_ROOT = "remount-root.sh";
    ROOT_D_FINISH = "root-d-finish.sh";
    STOP_LEFTOVERS = "stop-leftovers.sh";
    SYSROOT_TMPFS = "sysroot-tmpfs.sh";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_parses_and_every_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/guest/scripts");
        let files = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).count();
        assert_eq!(files, ALL.len(), "a file in {} is not listed in scripts!", dir.display());
        for s in ALL {
            let out = std::process::Command::new("sh").args(["-n", "-c", s.text]).output().unwrap();
            assert!(out.status.success(), "{}: {}", s.name, String::from_utf8_lossy(&out.stderr));
            assert!(
                !s.text.contains("/run/microdib") && !s.text.contains("/sysroot"),
                "{} spells a guest path",
                s.name
            );
        }
    }
}
