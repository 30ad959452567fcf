//! The README's example (examples/elements/hello-boot, as hack/example-build builds it): an MBR
//! disk whose EXTLINUX, kernel and initramfs boot in qemu and greet on the serial console. Built
//! as a user would (`--accel auto`).

use std::process::Command;

mod common;
use common::*;

#[test]
fn the_bootable_example_builds_and_boots() {
    let kernel = kernel();
    let r = FixtureBuild::new(&["hello-boot"])
        .element_dirs(&[workspace().join("examples/elements")])
        .name("hello-boot")
        .env("HELLO_BOOT_KERNEL", kernel.to_str().unwrap())
        .options(&["--skip-base", "--formats", "qcow2"])
        .run();
    r.succeeded().said("hello-boot: EXTLINUX installed");
    // Boot it: BIOS, the MBR code, EXTLINUX from the ext4 partition, the kernel, the initramfs.
    let console = r.path("console");
    let booted = Command::new("timeout")
        .args(["300", "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,snapshot=on", r.output("hello-boot.qcow2").display()))
        .status()
        .unwrap();
    let said = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(booted.success(), "qemu: {booted:?}\n{said}");
    assert!(
        said.lines().any(|l| l.starts_with("hello-boot: booted ") && l.contains("initrd=/boot/initrd.img")),
        "{said}"
    );
}
