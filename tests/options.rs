//! Options that reach the file system, the build VM and the outputs: --fs-type, --root-label,
//! --arch, -m, --smp, -u, --qemu-img-options, and a partitioned qcow2 --drive (the log goes to
//! its first partition).

mod common;
use common::*;

#[test]
fn file_system_vm_and_output_options() {
    let build = FixtureBuild::new(&["fixture-os", "dumper"]);
    let helper = build.path("helper.raw");
    let helper_qcow2 = build.path("helper.qcow2");
    let (raw, qcow2) = (helper.to_str().unwrap(), helper_qcow2.to_str().unwrap());
    tool("truncate", &["-s", "256M", raw]);
    tool("sh", &["-c", "echo 'start=2048, type=83' | sfdisk -q \"$0\" > /dev/null", raw]);
    tool("mkfs.ext4", &["-q", "-F", "-E", "offset=1048576", raw, "250M"]);
    tool("qemu-img", &["convert", "-O", "qcow2", raw, qcow2]);
    std::fs::remove_file(&helper).unwrap();
    let r = build
        .name("opt")
        .options(&["--size", "320M", "--formats", "qcow2", "-u", "--qemu-img-options", "compat=0.10"])
        .options(&["--fs-type", "xfs", "--root-label", "mylabel", "--arch", "i386", "-m", "768", "--smp", "1"])
        .options(&["--drive", qcow2])
        .run();
    r.succeeded();
    let env = r.env_of("root.d");
    for (name, want) in [("ARCH", "i386"), ("FS_TYPE", "xfs"), ("DIB_ROOT_LABEL", "mylabel")] {
        assert_eq!(env.get(name).map(String::as_str), Some(want), "{name}");
    }
    let vm = r.named("root.d.vm");
    let (cpus, mem) = vm.trim().split_once('\n').unwrap_or_default();
    assert_eq!(cpus, "1", "{vm}");
    let kib: u64 = mem.parse().unwrap_or(0);
    assert!((600_000..=786_432).contains(&kib), "MemTotal {kib} kB for -m 768");
    let image = r.output("opt.qcow2");
    let image = image.to_str().unwrap();
    assert!(tool("qemu-img", &["info", image]).lines().any(|l| l.trim() == "compat: 0.10"));
    // -u: no compressed clusters (data with no offset of their own in qemu-img's map).
    let map = tool("qemu-img", &["map", "--output=json", image]);
    assert!(!map.lines().any(|l| l.contains("\"data\": true") && !l.contains("\"offset\"")), "{map}");
    let opt_raw = r.path("opt.raw");
    tool("qemu-img", &["convert", "-O", "raw", image, opt_raw.to_str().unwrap()]);
    let blkid = |tag: &str| tool("blkid", &["-o", "value", "-s", tag, opt_raw.to_str().unwrap()]).trim().to_owned();
    assert_eq!((blkid("TYPE"), blkid("LABEL")), ("xfs".to_owned(), "mylabel".to_owned()));
    tool("qemu-img", &["convert", "-O", "raw", qcow2, raw]);
    let logs = Ext4::partition(&helper, 1 << 20).ls("/");
    assert_eq!(logs.iter().filter(|n| n.starts_with("microdib-") && n.ends_with(".log")).count(), 1, "{logs:?}");
}
