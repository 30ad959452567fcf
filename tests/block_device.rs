//! Partitioned disks: block-device.d's contract (the file system goes into the partition a
//! script names; output that names none is only talk), and diskimage-builder's own
//! block-device layer.

mod common;
use common::*;

/// The partitions of a disk image, as `sfdisk -J` lists them.
fn partitions(image: &std::path::Path) -> Vec<serde_json::Value> {
    let table: serde_json::Value = serde_json::from_str(&tool("sfdisk", &["-J", image.to_str().unwrap()])).unwrap();
    table["partitiontable"]["partitions"].as_array().cloned().unwrap_or_default()
}

/// `partitioned` makes an MBR and answers with its partition; `chatty-block-device`, before
/// it, prints lines that are no answer. With --debug 1, virt-dib's extra lines, and the set -x
/// trace (stderr) does not disturb the answer.
#[test]
fn block_device_d_puts_the_image_in_the_partition_it_names() {
    let r = FixtureBuild::new(&["fixture-os", "chatty-block-device", "partitioned", "dumper"])
        .options(&["--formats", "raw", "--debug", "1"])
        .run();
    r.succeeded().said("checking /dev/loop0: nothing to partition");
    let env = r.env_of("install.d");
    assert_eq!(env.get("IMAGE_BLOCK_DEVICE").map(String::as_str), Some("/dev/loop0p1"));
    assert_eq!(env.get("IMAGE_BLOCK_DEVICE_WITHOUT_PART").map(String::as_str), Some("/dev/loop0"));
    let raw = r.output("img.raw");
    let parts = partitions(&raw);
    assert!(parts.len() == 1 && parts[0]["start"] == 2048, "{parts:?}");
    let root = Ext4::partition(&raw, 2048 * 512);
    assert_eq!(root.file("/etc/os-release").as_deref(), Some("PRETTY_NAME=\"microdib fixture OS\"\n"));
    r.said("loaded elements:");
    r.said(&format!("\t{:<20} 10-one-partition", "block-device.d"));
    r.said("Running hooks for block-device.d...");
    assert!(r.stderr.lines().any(|l| l.starts_with("+ ")), "no set -x trace at --debug 1");
    assert!(r.line_after("10-one-partition completed after ").is_some());
}

/// diskimage-builder's block-device layer (its own Python code, from the PyPI package, run in
/// the build VM) with its block-device-mbr element: the disk gets an MBR with one bootable
/// partition holding the tree, an fstab written by the layer, and finalise.d sees the layer's
/// variables. (The full `debian-minimal vm` build is `hack/e2e-builds debian-minimal-vm`.)
#[test]
fn diskimage_builders_block_device_layer_partitions_the_image() {
    let [_, dib, _] = dib_rootfs();
    let r = FixtureBuild::new(&["fixture-os", "block-device-mbr", "dumper"])
        .lib(format!("{dib}/lib"))
        .element_dir(format!("{dib}/elements"))
        .options(&["--formats", "raw,tar", "--no-network", "--skip-base"])
        .run();
    r.succeeded().said("microdib: Elements: fixture-os block-device-mbr dumper");
    // One bootable partition at 1 MiB filling the disk, as the element's config asks.
    let raw = r.output("img.raw");
    let parts = partitions(&raw);
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert!(parts[0]["start"] == 2048 && parts[0]["type"] == "83" && parts[0]["bootable"] == true, "{parts:?}");
    let root = Ext4::partition(&raw, 2048 * 512);
    assert_eq!(root.superblock()["Filesystem volume name"], "cloudimg-rootfs");
    assert_eq!(root.file("/etc/os-release").as_deref(), Some("PRETTY_NAME=\"microdib fixture OS\"\n"));
    let fstab = root.file("/etc/fstab").unwrap_or_default();
    let entries: Vec<String> = fstab
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(entries, ["LABEL=cloudimg-rootfs / ext4 defaults 0 1"]);
    assert!(tool("tar", &["-tf", r.output("img.tar").to_str().unwrap()]).lines().any(|l| l == "./etc/os-release"));
    let env = r.env_of("finalise.d");
    let var = |name: &str| env.get(name).cloned().unwrap_or_else(|| panic!("no {name} in finalise.d"));
    assert!(var("IMAGE_BLOCK_DEVICE").starts_with("/dev/loop"));
    assert!(var("IMAGE_BLOCK_DEVICES").contains("[root]=/dev/mapper/loop"), "{}", var("IMAGE_BLOCK_DEVICES"));
    for (name, want) in [
        ("DIB_ROOT_LABEL", "cloudimg-rootfs"),
        ("DIB_ROOT_FSTYPE", "ext4"),
        ("DIB_MOUNTPOINTS", "/"),
        ("DIB_BOOT_LABEL", ""),
        ("DIB_BLOCK_DEVICE", "mbr"),
    ] {
        assert_eq!(var(name), want, "{name}");
    }
    // block-device.d is virt-dib's mechanism; with the layer it does not run.
    assert!(!r.named("phases").contains("block-device.d"), "{}", r.named("phases"));
    // The layer's step is announced between post-install.d and finalise.d.
    r.progress_in_order(&[
        "Running: post-install.d",
        "Partitioning the disk",
        "Copying the tree into the image",
        "Running: finalise.d",
    ]);
}
