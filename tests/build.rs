//! Whole builds of the fixture elements in tests/fixtures (in the build VM: natively where KVM
//! can run it, else inside hack/nested-run, like the boot tests). The command line: tests/cli.rs.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::*;

/// diskimage-builder's own elements from its PyPI package, unmodified (acceptance 2 of issue 4):
/// dib-run-parts, install-static, manifests and package-installs (with dpkg, base and what they
/// pull in) on a Debian 12 root made by debootstrap on the host (hack/dib-rootfs), with
/// `--extra-packages` through apt from the local repository inside that root.
#[test]
fn real_diskimage_builder_elements_build_a_debian_image() {
    let [rootfs, dib, python] = dib_rootfs();
    let script = format!(
        r#"set -e
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/helper/home/.cache/image-create"
cp {rootfs} "$d/helper/home/.cache/image-create/microdib-debian-rootfs.tar.gz"
mkfs.ext4 -q -F -d "$d/helper" "$d/helper.img" 1G
set +e
# --skip-base: diskimage-builder's base wants open-iscsi and friends, which the local repository
# does not carry.
"$MICRODIB" -B {dib}/lib -p {dib}/elements -p {els} --python {python} --name "$d/out/deb" --size 1536M \
   --formats raw --drive "$d/helper.img" --image-cache "$d/cache" --extra-packages less --skip-base \
   debian-rootfs dib-run-parts install-static manifests > "$d/stdout" 2> "$d/stderr"
echo "host: status=$?"
set -e
sed 's/^/stdout: /' "$d/stdout"; sed 's/^/stderr: /' "$d/stderr"
cd "$d/out"
ls -A deb.d deb.d/dib-manifests 2>/dev/null | sed 's/^/named: /'
for f in /etc/microdib-static.conf /usr/bin/tree /usr/bin/less /usr/bin/dib-run-parts /etc/dib-manifests/dib_arguments; do
  echo "image: $f $(debugfs -R "stat $f" deb.raw 2>/dev/null | grep -c '^Inode:')"
done
echo "image: static=$(debugfs -R 'cat /etc/microdib-static.conf' deb.raw 2>/dev/null)"
debugfs -R 'cat /var/lib/dpkg/status' deb.raw 2>/dev/null | awk '/^Package: / {{p=$2}} /^Status: install ok installed/ {{print "dpkg: " p}}' | grep -E ': (tree|less|python3-dib-utils|dib-utils)$' || true
echo "image: tmp=$(debugfs -R 'ls -p /tmp' deb.raw 2>/dev/null | awk -F/ '$6 != "." && $6 != ".." && $6 != "" {{print $6}}' | tr '\n' ' ')"
"#,
        els = fixtures().join("elements").display(),
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?}");
    has("host: status=0");
    for m in [
        "Running: root.d/10-unpack-rootfs",
        "Running: extra-data.d/20-manifest-dir",
        "Running: extra-data.d/99-squash-package-install",
        "Running: install.d/01-package-installs",
        "Running: install.d/10-install-static-files",
        "Installing: less",
        "Done",
    ] {
        assert!(s.lines().any(|l| l.starts_with("stdout: [") && l.ends_with(&format!("] {m}"))), "no message {m:?}");
    }
    for f in ["/etc/microdib-static.conf", "/usr/bin/tree", "/usr/bin/less", "/usr/bin/dib-run-parts"] {
        has(&format!("image: {f} 1"));
    }
    has("image: static=installed by diskimage-builder's install-static element");
    for p in ["tree", "less", "python3-dib-utils", "dib-utils"] {
        has(&format!("dpkg: {p}"));
    }
    // manifests: the image's /etc/dib-manifests, copied into NAME.d by its cleanup.d.
    has("image: /etc/dib-manifests/dib_arguments 1");
    has("named: dib-manifests");
    assert!(s.lines().any(|l| l.starts_with("named: dib-manifest-dpkg-")), "no dpkg manifest in deb.d");
    has("image: tmp=");
}

/// The README's example (examples/elements/hello-boot, as hack/example-build builds it): an MBR
/// disk whose EXTLINUX, kernel and initramfs boot in qemu and greet on the serial console.
#[test]
fn the_bootable_example_builds_and_boots() {
    let kernel = kernel();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("example");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        r#""$MICRODIB" -B {lib} -p {els} --skip-base --name {dir}/hello-boot --size 256M --formats qcow2 \
   --image-cache {dir}/cache hello-boot > {dir}/log 2>&1
echo "host: status=$?"
sed 's/^/log: /' {dir}/log
"#,
        lib = fixtures().join("lib").display(),
        els = workspace().join("examples/elements").display(),
        dir = dir.display(),
    );
    let out = run_script_with_env(
        &script,
        &[
            ("MICRODIB", env!("CARGO_BIN_EXE_microdib")),
            ("MICRODIB_KERNEL", kernel.to_str().unwrap()),
            ("MICRODIB_AGENT", guest_agent().to_str().unwrap()),
            ("HELLO_BOOT_KERNEL", kernel.to_str().unwrap()),
            ("MICRODIB_LOG", "vmm=info,warn"),
        ],
    );
    let s = text(&out.stdout);
    assert!(s.lines().any(|l| l == "host: status=0"), "{s}");
    assert!(s.lines().any(|l| l == "log: hello-boot: EXTLINUX installed"), "{s}");
    // Boot it: BIOS, the MBR code, EXTLINUX from the ext4 partition, the kernel, the initramfs.
    let console = dir.join("console");
    let booted = Command::new("timeout")
        .args(["300", "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={}/hello-boot.qcow2,format=qcow2,snapshot=on", dir.display()))
        .status()
        .unwrap();
    let said = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(booted.success(), "qemu: {booted:?}\n{said}");
    assert!(
        said.lines().any(|l| l.starts_with("hello-boot: booted ") && l.contains("initrd=/boot/initrd.img")),
        "{said}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
