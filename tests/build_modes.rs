//! Builds that end in something other than the usual image: ramdisk mode, a tree as small as
//! diskimage-builder's fake-os, and a failed build's disk kept with --no-delete-on-failure.

mod common;
use common::*;

/// Ramdisk mode: NAME.d gets the kernel and initramfs (from the ramdisk element); no image of
/// any format and no checksums ("no image is produced", the manual says).
#[test]
fn ramdisk_mode_writes_only_name_d() {
    let r = FixtureBuild::new(&["fixture-os"])
        .name("rd")
        .options(&["--formats", "raw,qcow2,tar", "--checksum", "--ramdisk", "--ramdisk-element", "fixture-ramdisk"])
        .run();
    r.succeeded();
    assert_eq!(r.outputs(), ["rd.d"]);
    let mut named: Vec<String> =
        std::fs::read_dir(r.output("rd.d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    named.sort();
    assert_eq!(named, ["rd.initramfs", "rd.kernel"]);
}

/// A tree without /var/log or /tmp (diskimage-builder's fake-os shape, with --skip-base)
/// builds: the image clean-up does not need them.
#[test]
fn a_tree_without_var_log_or_tmp_builds() {
    let r = FixtureBuild::new(&["fake-os"]).options(&["--formats", "raw", "--skip-base"]).run();
    r.succeeded().said("fake-os: made the tree");
    // Only the format asked for, and no NAME.d, which no element wrote.
    assert_eq!(r.outputs(), ["img.raw"]);
    assert_eq!(r.image_stat("/fake-os").map(|s| s.size), Some(42 << 20));
    assert!(!r.image().ls("/").contains(&"var".to_owned()));
}

/// A failing script's work is on the disk kept with --no-delete-on-failure. (A listed
/// appliance package this host lacks: a warning with the apt command.)
#[test]
fn a_kept_disk_holds_the_failed_scripts_work() {
    let half = "#!/bin/bash\necho half > /half-done\necho wrote half\nexit 3\n";
    let r = FixtureBuild::new(&["fixture-os", "half-done"])
        .element("half-done", &[("install.d/20-half", half)])
        .env("MICRODIB_APPLIANCE_PACKAGES", "surely-not-a-package-xyz")
        .options(&["--formats", "raw", "--no-delete-on-failure"])
        .run();
    assert_eq!(r.status, 1);
    assert_eq!(r.image_file("/half-done").as_deref(), Some("half\n"));
    r.said(
        "microdib: warning: the build VM lacks surely-not-a-package-xyz (not installed on this host); \
         add them with: apt install surely-not-a-package-xyz",
    );
}
