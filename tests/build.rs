//! Whole builds of the fixture elements in tests/fixtures (in the build VM: natively where KVM
//! can run it, else inside hack/nested-run, like the boot tests). The command line: tests/cli.rs.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::*;

/// A whole build of the fixture elements: every phase runs in its context with the right
/// environment, in order, with the outputs, NAME.d, the image clean-up and the checksums.
#[test]
fn builds_the_fixture_os_with_every_phase() {
    every_phase_build(BuildVm::Auto);
}

/// The same build on our own VMM (nested KVM on hosts like ours): the one full build that
/// exercises vmm/'s devices with every format.
#[test]
fn builds_the_fixture_os_with_every_phase_on_our_kvm() {
    every_phase_build(BuildVm::OurKvm);
}

fn every_phase_build(vm: BuildVm) {
    let (lib, els) = fixture_dirs();
    let root = env!("CARGO_MANIFEST_DIR");
    let schema = format!("{root}/docs/machine-readable.schema.json");
    let script = format!(
        r#"set -e
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out"
# A helper drive of our own: the build log and HOME land on it.
truncate -s 512M "$d/helper.img" && mkfs.ext4 -q -F "$d/helper.img"
set +e
# Host variables: only extra-data.d (and DIB_ENV, for DIB_*) may see them.
export HOST_ONLY=1 DIB_FROM_HOST=x
# docker import is the host's job: a stand-in records what it was given.
mkdir "$d/bin"
printf '#!/bin/sh\necho "docker: $1 $3 entries=$(tar -tf "$2" | grep -c .)" > "%s/docker.log"\n' "$d" > "$d/bin/docker"
chmod +x "$d/bin/docker"
PATH="$d/bin:$PATH" "$MICRODIB" -B {lib} -p {els} --name "$d/out/img" --size 256M \
   --formats raw,tar,qcow2,tgz,vhd,squashfs,docker --docker-target microdib/fixture:1 --checksum \
   --image-cache "$d/cache" --envvar FROM_USER=yes --envvar ARCH=overridden --exclude-script 30-excluded \
   --mkfs-options "-m 0" \
   --drive "$d/helper.img" --drive-format raw --machine-readable=file:"$d/events" \
   --extra-packages vim,less --extra-packages tree \
   fixture-os dumper order > "$d/stdout" 2> "$d/stderr"
echo "host: status=$?"
set -e
sed 's/^/stdout: /' "$d/stdout"; sed 's/^/stderr: /' "$d/stderr"
cd "$d/out"
ls -A | sed 's/^/file: /'
ls -A img.d | sed 's/^/named: /'
for p in block-device.d root.d pre-install.d install.d post-install.d post-root.d pre-finalise.d finalise.d cleanup.d; do
  for v in TARGET_ROOT TMP_MOUNT_PATH HOME PATH IMAGE_NAME IMAGE_ELEMENT FROM_USER ARCH FIXTURE_OS_ENV DIB_DEFAULT_INSTALLTYPE IMAGE_BLOCK_DEVICE DIB_NO_TMPFS \
           DIB_DEBUG_TRACE FS_TYPE DIB_CHECKSUM DIB_ROOT_LABEL DIB_IMAGE_ROOT_FS_UUID DIB_OFFLINE HOST_ONLY DIE_SOURCED; do
    echo "env: $p $v=$(sed -n "s/^$v=//p" img.d/$p.env)"
  done
  echo "pwd: $p $(cat img.d/$p.pwd)"
  echo "path: $p $(tr '\n' ' ' < img.d/$p.path)"
done
log=$(debugfs -R 'ls' "$d/helper.img" 2>/dev/null | tr -s ' ' '\n' | grep '^microdib-.*\.log$' | head -n1)
echo "helper: log=$log"
debugfs -R "cat /$log" "$d/helper.img" 2>/dev/null | grep -E '^(Running install.d/10-a\.\.\.|Target: install.d|Installing .*|fixture install-packages: .*)$' | sed 's/^/helper: /'
debugfs -R 'ls -p /home/.cache' "$d/helper.img" 2>/dev/null | grep -q '/image-create/' && echo "helper: image-cache=yes"
grep -o '"type": "[a-z-]*"' "$d/events" | sort | uniq -c | awk '{{print "event:", $3}}' | tr -d '"'
# Every record against docs/machine-readable.schema.json (its required keys, types and kinds).
python3 - "$d/events" {schema} <<'PY' | sed 's/^/records: /'
import json, sys
schema = json.load(open(sys.argv[2]))
types = {{"string": str, "number": (int, float), "integer": int}}
bad = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    need = set(schema["required"])
    for rule in schema["allOf"]:
        if r.get("type") == rule["if"]["properties"]["type"]["const"]:
            need |= set(rule["then"]["required"])
    props = schema["properties"]
    ok = need <= r.keys() and r["type"] in props["type"]["enum"] and all(
        k in props and ("type" not in props[k] or isinstance(v, types[props[k]["type"]])) for k, v in r.items())
    if not ok:
        bad += 1
        print("bad", line.strip())
print("checked, bad", bad)
PY

echo "phases: $(cat img.d/phases)"
echo "dib-env: $(cat img.d/install.d.dibenv)"
echo "install-packages: environment.d=$(cat img.d/install-packages.envd)"
for v in TMP_MOUNT_PATH TMP_HOOKS_PATH TMPDIR _LIB DIB_PYTHON_EXEC ELEMENTS_PATH DIB_IMAGE_CACHE TARGET_ROOT HOME FROM_USER ARCH FIXTURE_OS_ENV IMAGE_ELEMENT HOST_ONLY DIE_SOURCED; do
  echo "extra: env $v=$(sed -n "s/^$v=//p" img.d/extra-data.d.env)"
done
echo "extra: host-home=$HOME cwd=$(cat img.d/extra-data.d.pwd) python=$(sed -n 's/^DIB_PYTHON_EXEC=//p' img.d/extra-data.d.env | xargs test -x && echo runs)"
sed 's/^/extra: path /' img.d/extra-data.d.path
echo "image: from-host=$(debugfs -R 'cat /etc/from-host' img.raw 2>/dev/null) $(debugfs -R 'stat /etc/from-host' img.raw 2>/dev/null | grep -o 'User: *[0-9]*' | tr -s ' ')"
echo "image: group=$(debugfs -R 'cat /etc/group' img.raw 2>/dev/null | tr '\n' ' ')$(debugfs -R 'stat /etc/group' img.raw 2>/dev/null | grep -o 'Mode: *[0-7]*' | tr -s ' ')"
echo "image: from-hook=$(debugfs -R 'cat /etc/from-hook' img.raw 2>/dev/null)"
echo "image: etc=$(debugfs -R 'ls -p /etc' img.raw 2>/dev/null | awk -F/ '{{print $6}}' | grep delete-me)"
echo "image: order=$(debugfs -R 'cat /etc/order' img.raw 2>/dev/null)"
echo "image: base=$(debugfs -R 'cat /etc/base-marker' img.raw 2>/dev/null)"
echo "image: extra-packages=$(debugfs -R 'cat /etc/extra-packages' img.raw 2>/dev/null)"
echo "image: varlog-size=$(debugfs -R 'stat /var/log/fixture.log' img.raw 2>/dev/null | sed -n 's/.*Size: \([0-9]*\).*/\1/p')"
echo "image: tmp=$(debugfs -R 'ls -p /tmp' img.raw 2>/dev/null | awk -F/ '$6 != "." && $6 != ".." && $6 != "" {{print $6}}' | tr '\n' ' ')"
echo "image: root=$(debugfs -R 'ls -p /root' img.raw 2>/dev/null | awk -F/ '$6 != "." && $6 != ".." && $6 != "" {{print $6}}' | tr '\n' ' ')"
echo "image: label=$(dumpe2fs -h img.raw 2>/dev/null | sed -n 's/^Filesystem volume name: *//p')"
echo "image: uuid=$(dumpe2fs -h img.raw 2>/dev/null | sed -n 's/^Filesystem UUID: *//p')"
echo "image: inodes=$(dumpe2fs -h img.raw 2>/dev/null | sed -n 's/^Inode count: *//p') reserved=$(dumpe2fs -h img.raw 2>/dev/null | sed -n 's/^Reserved block count: *//p') journal=$(dumpe2fs -h img.raw 2>/dev/null | sed -n 's/^Total journal size: *//p')"
echo "image: size=$(stat -c %s img.raw)"
echo "image: trim-markers=$(grep -a -c MICRODIB-TRIM-MARKER img.raw)"
echo "tar: $(tar -tf img.tar | grep -c . ) entries, os-release=$(tar -xOf img.tar ./etc/os-release)"
echo "tgz: $(tar -tzf img.tgz | grep -c .) entries"
python3 -c 'import sys, tarfile; print("tar: xattr=" + tarfile.open(sys.argv[1]).getmember("./etc/os-release").pax_headers.get("SCHILY.xattr.user.microdib", "none"))' img.tar
# Compressed qcow2 clusters are data with no offset of their own in qemu-img's map.
echo "qcow2: compressed-extents=$(qemu-img map --output=json img.qcow2 | grep '"data": true' | grep -vc '"offset"')"
qemu-img compare -q -f qcow2 -F raw img.qcow2 img.raw && echo "qcow2: same-as-raw"
qemu-img check -q img.qcow2 && echo "qcow2: check-ok"
qemu-img compare -q -f vpc -F raw img.vhd img.raw && echo "vhd: same-as-raw"
echo "vhd: $(qemu-img info img.vhd | grep -E '^(file format|virtual size)' | tr '\n' ' ')"
gunzip -t img.tgz && gunzip -c img.tgz | cmp -s - img.tar && echo "tgz: gunzip-t-ok same-as-tar"
# squashfs against the tar: both unpacked, then compared entry by entry (owners, modes, links,
# content, xattrs); squashfs leaves /dev empty as virt-dib's mksquashfs did.
mkdir "$d/x-tar"
tar --xattrs --xattrs-include='*' --numeric-owner -xpf img.tar -C "$d/x-tar"
find "$d/x-tar/dev" -mindepth 1 -delete
unsquashfs -q -n -d "$d/x-squash" img.squash > /dev/null
diff <("$MICRODIB_DEV" tree-manifest "$d/x-tar") <("$MICRODIB_DEV" tree-manifest "$d/x-squash") > "$d/squash.diff" \
  && echo "squashfs: same-as-tar entries=$(unsquashfs -lln img.squash | grep -c squashfs-root)" || head -n 20 "$d/squash.diff"
unsquashfs -s img.squash | grep -o 'Compression xz' | sed 's/^/squashfs: /'
python3 -c 'import os, sys; print("squashfs: xattr=" + os.getxattr(sys.argv[1], "user.microdib").decode())' "$d/x-squash/etc/os-release"
cat "$d/docker.log"
for f in img.raw img.qcow2 img.squash img.tar img.tgz img.vhd; do
  sha256sum -c $f.sha256 >/dev/null && md5sum -c $f.md5 >/dev/null && echo "checksums: ok $f"
done
echo "checksums: modes $(stat -c %a img.raw.md5 img.qcow2.sha256 | tr '\n' ' ')"
"#,
    );
    let s = build_output_on(vm, &script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?}");
    has("host: status=0");
    has("stdout: microdib: Elements: base fixture-os dumper order");
    has("stdout: microdib: Expanded elements: base dumper fixture-os order");
    has("stdout: microdib: Carried environment variables: ARCH FROM_USER");
    for m in [
        "Preparing auxiliary data",
        "Opening the disks",
        "Setting up the destination root",
        "Running: root.d/10-tiny-root",
        "Running: install.d/10-a",
        "Extracting data out of the image",
        "Compressing the image as tar",
        "Umounting the disks",
        "Converting to qcow2",
        "Done",
    ] {
        assert!(s.lines().any(|l| l.starts_with("stdout: [") && l.ends_with(&format!("] {m}"))), "no message {m:?}");
    }
    // The time summary at the end (issue 17): a row a phase, its slowest script, the total.
    has("stdout: Phase or step              Seconds  Scripts  Slowest script");
    for row in [
        "build VM start ",
        "root.d ",
        "extra-data.d ",
        "install.d ",
        "cleanup.d ",
        "outputs after the VM ",
        "other ",
        "total ",
    ] {
        assert!(s.lines().any(|l| l.starts_with(&format!("stdout: {row}"))), "no summary row {row:?}:\n{s}");
    }
    assert!(s.lines().any(|l| l.starts_with("stdout: install.d ") && l.ends_with(" s)")), "{s}");
    // In-chroot output reaches the console too (virt-dib kept it in the log only).
    has("stdout: dumper: install.d ran");
    has("stdout: dumper: finalise.d ran");
    for f in [
        "img.raw",
        "img.qcow2",
        "img.tar",
        "img.tgz",
        "img.vhd",
        "img.squash",
        "img.d",
        "img.raw.md5",
        "img.raw.sha256",
        "img.qcow2.sha256",
        "img.squash.md5",
        "img.vhd.sha256",
    ] {
        has(&format!("file: {f}"));
    }
    assert!(!s.contains("file: .img"), "a temporary output was left behind");
    has("named: relative-output");
    // The environment of each context (notes §5.6).
    for p in ["block-device.d", "post-root.d", "pre-finalise.d", "cleanup.d"] {
        has(&format!("env: {p} TARGET_ROOT=/sysroot"));
        has(&format!("env: {p} HOME=/sysroot/tmp/in_target.aux/perm/home"));
        has(&format!(
            "env: {p} PATH=/sysroot/tmp/in_target.aux/fake-bin:/sysroot/tmp/in_target.aux/hooks/bin:/sbin:/usr/sbin:/bin:/usr/bin"
        ));
    }
    has("env: root.d TARGET_ROOT=/sysroot/subroot");
    has("env: root.d TMP_MOUNT_PATH=/sysroot/subroot");
    for p in ["pre-install.d", "install.d", "post-install.d", "finalise.d"] {
        has(&format!("env: {p} TARGET_ROOT="));
        has(&format!("env: {p} HOME=/tmp/in_target.aux/perm/home"));
        has(&format!("pwd: {p} /"));
    }
    for p in ["root.d", "install.d", "finalise.d", "cleanup.d"] {
        has(&format!("env: {p} IMAGE_NAME=img"));
        has(&format!("env: {p} IMAGE_ELEMENT=base dumper fixture-os order"));
        has(&format!("env: {p} FROM_USER=yes"));
        has(&format!("env: {p} ARCH=amd64"));
        has(&format!("env: {p} FIXTURE_OS_ENV=from-environment-d"));
        has(&format!("env: {p} DIB_DEFAULT_INSTALLTYPE=source"));
        has(&format!("env: {p} DIB_NO_TMPFS=1"));
        has(&format!("env: {p} IMAGE_BLOCK_DEVICE=/dev/loop0"));
    }
    has("pwd: cleanup.d /sysroot/tmp/in_target.aux/out/img.d");
    // The other diskimage-builder variables, everywhere; the host's own variables nowhere but in
    // extra-data.d; lib/die sourced outside the chroot only.
    for p in ["block-device.d", "root.d", "pre-install.d", "install.d", "finalise.d", "cleanup.d"] {
        for (v, want) in [
            ("DIB_DEBUG_TRACE", "0"),
            ("FS_TYPE", "ext4"),
            ("DIB_CHECKSUM", "1"),
            ("DIB_ROOT_LABEL", "cloudimg-rootfs"),
            ("DIB_OFFLINE", ""),
            ("HOST_ONLY", ""),
        ] {
            has(&format!("env: {p} {v}={want}"));
        }
    }
    for p in ["block-device.d", "root.d", "post-root.d", "pre-finalise.d", "cleanup.d"] {
        has(&format!("env: {p} DIE_SOURCED=1"));
    }
    for p in ["pre-install.d", "install.d", "post-install.d", "finalise.d"] {
        has(&format!("env: {p} DIE_SOURCED="));
    }
    has("dib-env: 1");
    // Phase order, with --extra-packages right after pre-install.d; install-packages runs
    // without environment.d (notes §5.3).
    has("phases: block-device.d root.d extra-data.d pre-install.d extra-packages install.d post-install.d post-root.d pre-finalise.d finalise.d cleanup.d ");
    has("install-packages: environment.d=no-env-d");
    // Fake sudo and dib-run-parts outside the chroot only; /tmp/in_target.d from after root.d.
    has("path: pre-finalise.d /sysroot/tmp/in_target.aux/fake-bin/sudo /sysroot/tmp/in_target.aux/fake-bin/dib-run-parts no-in-target-link ");
    has("path: install.d no-sudo no-dib-run-parts in_target.aux/hooks ");
    has("path: root.d /sysroot/tmp/in_target.aux/fake-bin/sudo /sysroot/tmp/in_target.aux/fake-bin/dib-run-parts no-in-target-link ");
    // The build log on the helper drive, with the per-script lines and profiling tables.
    assert!(
        s.lines().any(|l| l.starts_with("helper: log=microdib-") && l.ends_with(".log")),
        "no build log on the helper"
    );
    has("helper: Running install.d/10-a...");
    has("helper: Target: install.d");
    has("helper: image-cache=yes");
    // --extra-packages: install-packages from an element's bin/, in the chroot, after pre-install.d.
    has("image: extra-packages=vim less tree");
    has("helper: Installing vim less tree...");
    has("helper: fixture install-packages: vim less tree");
    has("stdout: fixture install-packages: vim less tree");
    assert!(s.lines().any(|l| l.starts_with("stdout: [") && l.ends_with("] Installing: vim less tree")));
    for e in [
        "message",
        "info",
        "phase-start",
        "phase-end",
        "script-start",
        "script-end",
        "output",
        "written",
        "time-summary",
    ] {
        has(&format!("event: {e}"));
    }
    // Every record has virt-dib's keys and microdib's numbers are numbers (issue 16, gap 4).
    has("records: checked, bad 0");
    // extra-data.d on the host (notes §5.2, §5.6 column H, §6.3): the host environment and the
    // image's root in TMP_MOUNT_PATH, whose changes reach the image (new files owned by root).
    assert!(s.lines().any(|l| l.starts_with("stdout: [") && l.ends_with("] Running: extra-data.d/90-dump")));
    has("stdout: dumper: extra-data.d ran");
    let extra = |v: &str| {
        let prefix = format!("extra: env {v}=");
        s.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {v} for extra-data.d")).to_owned()
    };
    let mount = extra("TMP_MOUNT_PATH");
    assert!(mount.starts_with('/') && mount.ends_with("/extra-data.d"), "{mount}");
    assert_eq!(extra("TMP_HOOKS_PATH"), format!("{mount}/tmp/in_target.aux/hooks"));
    assert_eq!(extra("TMPDIR"), format!("{mount}/tmp"));
    assert_eq!(extra("_LIB"), fixtures().join("lib").display().to_string());
    assert_eq!(extra("ELEMENTS_PATH"), fixtures().join("elements").display().to_string());
    assert!(extra("DIB_IMAGE_CACHE").ends_with("/cache"));
    assert_eq!(extra("TARGET_ROOT"), "");
    assert_eq!(extra("FROM_USER"), "yes");
    assert_eq!(extra("ARCH"), "amd64");
    assert_eq!(extra("FIXTURE_OS_ENV"), "from-environment-d");
    assert_eq!(extra("IMAGE_ELEMENT"), "base dumper fixture-os order");
    assert_eq!(extra("HOST_ONLY"), "1");
    assert_eq!(extra("DIE_SOURCED"), "1");
    assert!(s.lines().any(|l| l.starts_with("extra: host-home=")
        && l.ends_with(&format!("cwd={} python=runs", workspace().display()))
        && l.contains(&format!("host-home={} ", extra("HOME")))));
    let els = fixtures().join("elements");
    let el = |e: &str| els.join(e).display().to_string();
    has(&format!(
        "extra: path {}",
        ["base", "dumper", "fixture-os", "order"].map(|e| format!("[{e}]='{}'", el(e))).join(" ")
    ));
    has(&format!(
        "extra: path {{{}}}",
        ["base", "dumper", "fixture-os", "order"].map(|e| format!("{e}: '{}'", el(e))).join(", ")
    ));
    assert!(s.lines().any(|l| l.starts_with("extra: path /") && l.ends_with("/fake-bin/sudo")), "{s}");
    has("image: from-host=made on the host User: 0");
    has("image: group=root:x:0: hostgrp:x:1234: Mode: 0644");
    has("image: from-hook=from a hook extra-data.d added");
    has("image: etc=");
    // Run order, exclusions, non-scripts; the image clean-up; label and size.
    has("image: order=00-z foo 5-b 10-a ");
    has("image: base=base element ran");
    has("image: varlog-size=0");
    has("image: tmp=");
    has("image: root=notes.txt ");
    has("image: label=cloudimg-rootfs");
    // mkfs: virt-dib's `-i 4096 -J size=64` for ext4, then --mkfs-options; the UUID scripts saw.
    has("image: inodes=65536 reserved=0 journal=64M");
    let uuid = s.lines().find_map(|l| l.strip_prefix("env: root.d DIB_IMAGE_ROOT_FS_UUID=")).unwrap_or_default();
    assert_eq!(uuid.len(), 36, "{uuid:?}");
    has(&format!("image: uuid={uuid}"));
    has(&format!("image: size={}", 256 << 20));
    has("image: trim-markers=0");
    assert!(s.contains("os-release=PRETTY_NAME=\"microdib fixture OS\""));
    has("qcow2: same-as-raw");
    assert!(!s.lines().any(|l| l == "qcow2: compressed-extents=0"), "qcow2 not compressed without -u");
    has("tar: xattr=kept");
    has("qcow2: check-ok");
    has("vhd: same-as-raw");
    has(&format!("vhd: file format: vpc virtual size: 256 MiB ({} bytes) ", 256 << 20));
    has("tgz: gunzip-t-ok same-as-tar");
    assert!(s.lines().any(|l| l.starts_with("squashfs: same-as-tar entries=")), "squashfs differs from the tar");
    has("squashfs: Compression xz");
    has("squashfs: xattr=kept");
    let tar_entries = s.lines().find_map(|l| l.strip_prefix("tar: ")?.split_once(" entries")).map(|(n, _)| n);
    has(&format!("docker: import microdib/fixture:1 entries={}", tar_entries.unwrap_or("?")));
    for f in ["raw", "qcow2", "squash", "tar", "tgz", "vhd"] {
        has(&format!("checksums: ok img.{f}"));
    }
    has("checksums: modes 640 640 ");
    // virt-dib's progress messages in its order (notes §15 item 69): formats made from the
    // mounted file system (alphabetically), the unmount, file formats, then checksums.
    let messages: Vec<&str> = s
        .lines()
        .filter_map(|l| l.strip_prefix("stdout: ["))
        .filter_map(|l| l.split_once("] ").map(|(_, m)| m))
        .filter(|m| !m.starts_with("Running: "))
        .collect();
    let order = [
        "Preparing auxiliary data",
        "Opening the disks",
        "Setting up the destination root",
        "Installing: vim less tree",
        "Extracting data out of the image",
        "Importing the image to docker as ‘microdib/fixture:1’",
        "Compressing the image as squashfs",
        "Compressing the image as tar",
        "Compressing the image as tar.gz",
        "Umounting the disks",
        "Converting to qcow2",
        "Converting to VHD",
        "Generating checksums for ",
        "Done",
    ];
    let mut at = 0;
    for want in order {
        match messages[at..].iter().position(|m| m.starts_with(want)) {
            Some(i) => at += i + 1,
            None => panic!("message {want:?} missing or out of order in {messages:?}"),
        }
    }
}

/// A failing script stops the build with its element, phase, script and status, and leaves no
/// output behind; --no-delete-on-failure keeps what was made.
#[test]
fn a_failing_script_stops_the_build_and_removes_outputs() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
# Temporary directories that were there before (another build's): only new ones count.
tmp_before=$(ls -d ${{TMPDIR:-/tmp}}/microdib.* 2>/dev/null | wc -l)
mkdir -p "$d/els/failer/install.d" "$d/els/host-failer/extra-data.d" "$d/out"
printf '#!/bin/bash\necho about to fail\nexit 7\n' > "$d/els/failer/install.d/20-fail"
printf '#!/bin/bash\necho host script fails\nexit 9\n' > "$d/els/host-failer/extra-data.d/20-fail"
chmod +x "$d/els/failer/install.d/20-fail" "$d/els/host-failer/extra-data.d/20-fail"
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/img" --size 256M --formats raw,tar \
   --image-cache "$d/cache" fixture-os failer > "$d/stdout" 2> "$d/stderr"
echo "host: status=$?"
sed 's/^/stderr: /' "$d/stderr"
echo "files: $(ls -A "$d/out" | tr '\n' ' ')"
# An extra-data.d script's status is microdib's, with no message (as virt-dib).
# (And a listed appliance package this host lacks: a warning with the apt command.)
MICRODIB_APPLIANCE_PACKAGES=surely-not-a-package-xyz \
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/kept" --size 256M --formats raw \
   --image-cache "$d/cache" --no-delete-on-failure fixture-os host-failer > "$d/stdout2" 2> "$d/stderr2"
echo "kept: status=$?"
sed 's/^/kept: /' "$d/stdout2" "$d/stderr2"
echo "kept: $(ls -A "$d/out" | tr '\n' ' ')"
# SIGTERM in the middle of a script: virt-dib's message and status, nothing left behind.
mkdir -p "$d/els/sleeper/install.d"
printf '#!/bin/bash\necho sleeping\nsleep 600\n' > "$d/els/sleeper/install.d/10-sleep"
chmod +x "$d/els/sleeper/install.d/10-sleep"
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/sig" --size 256M --formats raw,tar \
   --image-cache "$d/cache" fixture-os sleeper > "$d/sig.out" 2> "$d/sig.err" &
pid=$!
for i in $(seq 1 300); do grep -q '^sleeping' "$d/sig.out" && break; sleep 1; done
kill -TERM $pid
wait $pid
echo "sig: status=$?"
sed 's/^/sig: /' "$d/sig.err"
echo "sig: files=$(ls -A "$d/out" | grep sig | tr '\n' ' ')"
echo "sig: left=$(pgrep -fc -- "$d/out/sig" || true)"
# The same during an extra-data.d script, which runs on the host as microdib's child: it must
# hear the SIGTERM too (microdib's threads block it; children must not inherit that).
mkdir -p "$d/els/host-sleeper/extra-data.d"
# (Named so that pgrep finds it and not this script, whose text holds the name's recipe.)
printf '#!/bin/bash\necho host sleeping\nexec -a "host-sleeper-$((6*100))" sleep 600\n' > "$d/els/host-sleeper/extra-data.d/10-sleep"
chmod +x "$d/els/host-sleeper/extra-data.d/10-sleep"
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/hsig" --size 256M --formats raw \
   --image-cache "$d/cache" fixture-os host-sleeper > "$d/hsig.out" 2> "$d/hsig.err" &
pid=$!
for i in $(seq 1 300); do grep -q '^host sleeping' "$d/hsig.out" && break; sleep 1; done
start=$(date +%s)
kill -TERM $pid
wait $pid
echo "hsig: status=$? after $(( $(date +%s) - start )) s"
echo "hsig: left=$(pgrep -fc -- "host-sleeper-[6]00" || true)"
echo "tmp: $(( $(ls -d ${{TMPDIR:-/tmp}}/microdib.* 2>/dev/null | wc -l) - tmp_before ))"
"#,
    );
    let s = build_output(&script);
    assert!(s.contains("host: status=1"), "{s}");
    assert!(s.contains("stderr: microdib: error: install.d/20-fail (element failer) failed: exit status 7"), "{s}");
    assert!(s.contains("stderr: about to fail"), "{s}");
    assert!(s.lines().any(|l| l == "files: "), "outputs left after a failure:\n{s}");
    assert!(s.lines().any(|l| l == "kept: kept.raw "), "{s}");
    assert!(s.lines().any(|l| l == "kept: status=9"), "{s}");
    assert!(s.lines().any(|l| l == "kept: host script fails"), "{s}");
    // Issue 17: a listed appliance package missing on the host is named, with the apt command.
    let lacks = "kept: microdib: warning: the build VM lacks surely-not-a-package-xyz (not installed on this host); \
                 add them with: apt install surely-not-a-package-xyz";
    assert!(s.lines().any(|l| l == lacks), "{s}");
    assert!(!s.lines().any(|l| l.starts_with("kept: ") && l.contains("error")), "{s}");
    assert!(s.lines().any(|l| l == "sig: status=1"), "{s}");
    assert!(s.lines().any(|l| l == "sig: microdib: Exiting on signal SIGTERM"), "{s}");
    assert!(s.lines().any(|l| l == "sig: files="), "partial outputs left after SIGTERM:\n{s}");
    assert!(s.lines().any(|l| l == "sig: left=0"), "a process of the stopped build is still running:\n{s}");
    assert!(s.lines().any(|l| l == "tmp: 0"), "temporary directories left behind:\n{s}");
    let hsig = s.lines().find(|l| l.starts_with("hsig: status=")).unwrap_or_else(|| panic!("{s}"));
    let secs: u64 = hsig.rsplit(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
    assert!(hsig.starts_with("hsig: status=1 ") && secs < 60, "SIGTERM during extra-data.d: {hsig}\n{s}");
    assert!(s.lines().any(|l| l == "hsig: left=0"), "the host script outlived the build:\n{s}");
}

/// `--accel tcg` (what `auto` picks on a host like ours, whose KVM cannot run the guest): only
/// the build VM is emulated, by qemu (microvm, vhost-user vsock served by microdib itself);
/// microdib, its element engine and output writers run natively, and no emulated KVM host
/// appears anywhere in the process list.
#[test]
fn accel_tcg_runs_only_the_build_vm_under_qemu() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/els/waiter/install.d"
printf '#!/bin/bash\necho waiting; sleep 4; echo waited\n' > "$d/els/waiter/install.d/10-wait"
chmod +x "$d/els/waiter/install.d/10-wait"
# The tar is written natively by microdib from the guest's stream.
timeout -k 10 600 "$MICRODIB" --accel tcg -B {lib} -p {els} -p "$d/els" --name "$d/out/img" --size 256M \
   --formats tar --image-cache "$d/cache" --debug 1 fixture-os order waiter > "$d/log" 2>&1 &
pid=$!
for i in $(seq 1 600); do grep -q '^waiting' "$d/log" && break; sleep 0.5; done
m=$(ps -o pid= --ppid $pid | tr -d ' ') # timeout's child: microdib
echo "children: $(ps -o comm= --ppid $m | sed 's/^passt.*/passt/' | sort | tr '\n' ' ')"
kids=$(ps -o pid= --ppid $m | tr '\n' ' ')
ps -o args= --ppid $m | grep '^[^ ]*qemu-system-x86_64 ' | tr ' ' '\n' | grep -E '^(tcg|microvm.*|vhost-user-vsock-device.*|virtio-blk-device.*)$' | sed 's/^/qemu: /'
# Everything below microdib: no emulated KVM host (hack/nested-run, a qemu with SVM) among them.
tree=$(ps -eo pid=,ppid=,args= | awk -v root=$m '{{ parent[$1] = $2; line[$1] = $0 }}
  END {{ for (p in parent) {{ q = p; while (q in parent && q != root) q = parent[q]; if (q == root && p != root) print line[p] }} }}')
echo "below: $(echo "$tree" | grep -c .) processes, nested: $(echo "$tree" | grep -c -e 'nested-run' -e 'svm')"
wait $pid
echo "host: status=$?"
for k in $kids; do state=$(ps -o stat= -p $k | cut -c1); [ -n "$state" ] && [ "$state" != Z ] && echo "after: $k still running"; done
echo "after: checked"
sed 's/^/log: /' "$d/log"
echo "tar: $(tar -tf "$d/out/img.tar" | grep -c '^./etc/order$')"
ls -A "$d/out" | sed 's/^/file: /'
"#
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    has("host: status=0");
    has("log: waited");
    // The build VM is a qemu child of microdib, next to passt; microdib itself is not in a VM.
    has("children: passt qemu-system-x86 ");
    has("qemu: tcg");
    has("qemu: vhost-user-vsock-device,chardev=vsock");
    assert!(s.lines().any(|l| l.starts_with("qemu: microvm,acpi=off")), "{s}");
    has("qemu: virtio-blk-device,drive=disk0,serial=microdib-target");
    assert!(s.lines().any(|l| l.starts_with("below: ") && l.ends_with(" processes, nested: 0")), "{s}");
    // qemu and passt are gone with the build.
    assert!(!s.contains("still running"), "{s}");
    has("after: checked");
    assert!(s.lines().any(|l| l.starts_with("log: ") && l.contains("build VM: tcg (qemu pid ")), "{s}");
    assert!(s.lines().any(|l| l.ends_with("] Done")), "{s}");
    has("tar: 1");
    // Only the format asked for; no element wrote NAME.d, so there is none.
    assert!(!s.contains("file: img.raw") && !s.contains("file: img.d"), "{s}");
    has("file: img.tar");
}

/// A qemu that will not start (here: one that complains and exits) ends the build at once with
/// what qemu said, instead of waiting for an agent that never comes.
#[test]
fn a_qemu_that_fails_to_start_is_reported_at_once() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
printf '#!/bin/sh\necho "qemu-system-x86_64: -M microvm: this qemu is broken" >&2\nexit 1\n' > "$d/qemu"
chmod +x "$d/qemu"
start=$(date +%s)
MICRODIB_QEMU="$d/qemu" timeout -k 10 120 "$MICRODIB" --accel tcg -B {lib} -p {els} --name "$d/img" --size 256M \
   --formats raw --image-cache "$d/cache" fixture-os > "$d/log" 2>&1
echo "host: status=$? after $(( $(date +%s) - start )) s"
sed 's/^/log: /' "$d/log"
echo "files: $(ls -A "$d" | grep img | tr '\n' ' ')"
"#
    );
    let s = build_output(&script);
    let status = s.lines().find(|l| l.starts_with("host: status=")).unwrap_or_else(|| panic!("{s}"));
    let secs: u64 = status.rsplit(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
    assert!(status.starts_with("host: status=1 ") && secs < 30, "{status}\n{s}");
    assert!(
        s.lines().any(|l| l == "log: microdib: error: the build VM did not come up (qemu exited with status 1)"),
        "{s}"
    );
    assert!(s.lines().any(|l| l == "log: qemu-system-x86_64: -M microvm: this qemu is broken"), "{s}");
    assert!(s.lines().any(|l| l == "files: "), "partial outputs left:\n{s}");
}

/// SIGKILL of microdib mid-build (no chance to clean up): its qemu and passt die with it
/// (PR_SET_PDEATHSIG), within 2 s.
#[test]
fn sigkill_mid_build_leaves_no_qemu_or_passt() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/els/sleeper/install.d"
printf '#!/bin/bash\necho sleeping\nsleep 600\n' > "$d/els/sleeper/install.d/10-sleep"
chmod +x "$d/els/sleeper/install.d/10-sleep"
"$MICRODIB" --accel tcg -B {lib} -p {els} -p "$d/els" --name "$d/out/img" --size 256M --formats tar \
   --image-cache "$d/cache" --debug 1 fixture-os sleeper > "$d/log" 2>&1 &
pid=$!
for i in $(seq 1 600); do grep -q '^sleeping' "$d/log" && break; sleep 0.5; done
kids=$(ps -o pid= --ppid $pid | tr '\n' ' ')
echo "children: $(ps -o comm= --ppid $pid | sed 's/^passt.*/passt/' | sort | tr '\n' ' ')"
kill -KILL $pid
wait $pid 2>/dev/null
sleep 2
left=0
for k in $kids; do
  state=$(ps -o stat= -p $k 2>/dev/null | cut -c1)
  [ -n "$state" ] && [ "$state" != Z ] && {{ left=$((left + 1)); ps -o pid=,args= -p $k | sed 's/^/left: /'; }}
done
echo "left: $left"
# A killed microdib cannot remove its temporary directory: done here, for the tests after.
tmp=$(sed -n 's/.*tmpdir: //p' "$d/log"); case $tmp in */microdib.*) rm -rf "$tmp" ;; esac
"#
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    has("children: passt qemu-system-x86 ");
    has("left: 0");
}

/// block-device.d's contract (a partitioned disk: the file system goes into the partition it
/// names), and ramdisk mode (NAME.d gets the kernel and initramfs; disk formats are not made).
#[test]
fn block_device_d_and_ramdisk_mode() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out"
timeout -k 10 270 "$MICRODIB" -B {lib} -p {els} --name "$d/out/disk" --size 256M --formats raw --image-cache "$d/cache" --debug 1 \
   fixture-os partitioned dumper > "$d/log" 2>&1
echo "disk: status=$?"
sed 's/^/disk: /' "$d/log"
echo "disk: block-device=$(sed -n 's/^IMAGE_BLOCK_DEVICE=//p' "$d/out/disk.d/install.d.env")"
echo "disk: without-part=$(sed -n 's/^IMAGE_BLOCK_DEVICE_WITHOUT_PART=//p' "$d/out/disk.d/install.d.env")"
echo "disk: table=$(sfdisk -d "$d/out/disk.raw" 2>/dev/null | grep -c 'start= *2048')"
off=$((2048 * 512))
dd if="$d/out/disk.raw" of="$d/part.img" bs=1M skip=1 2>/dev/null
echo "disk: os-release=$(debugfs -R 'cat /etc/os-release' "$d/part.img" 2>/dev/null)"
timeout -k 10 270 "$MICRODIB" -B {lib} -p {els} --name "$d/out/rd" --size 256M --formats raw,qcow2,tar --checksum --ramdisk \
   --ramdisk-element fixture-ramdisk --image-cache "$d/cache" fixture-os > "$d/log2" 2>&1
echo "ramdisk: status=$?"
sed 's/^/ramdisk: /' "$d/log2"
echo "ramdisk: files=$(cd "$d/out" && ls -A | grep '^rd' | tr '\n' ' ')"
echo "ramdisk: named=$(ls -A "$d/out/rd.d" | tr '\n' ' ')"
"#,
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?}");
    has("disk: status=0");
    has("disk: block-device=/dev/loop0p1");
    has("disk: without-part=/dev/loop0");
    has("disk: table=1");
    has("disk: os-release=PRETTY_NAME=\"microdib fixture OS\"");
    // --debug 1: virt-dib's extra lines, and the set -x trace (stderr) does not disturb
    // block-device.d's answer.
    has("disk: loaded elements:");
    has(&format!("disk: \t{:<20} 10-one-partition", "block-device.d"));
    has("disk: Running hooks for block-device.d...");
    assert!(s.lines().any(|l| l.starts_with("disk: + ")), "no set -x trace at --debug 1:\n{s}");
    assert!(s.lines().any(|l| l.starts_with("disk: 10-one-partition completed after ")), "{s}");
    has("ramdisk: status=0");
    // The ramdisk element first; no image of any format and no checksums ("no image is
    // produced", the manual says; virt-dib 1.48.2 still wrote the tar).
    has("ramdisk: files=rd.d ");
    has("ramdisk: named=rd.initramfs rd.kernel ");
}

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

/// Options that reach the file system, the build VM and the outputs: --fs-type, --root-label,
/// --arch, -m, --smp, -u, --qemu-img-options, and a partitioned qcow2 --drive (the log goes to
/// its first partition).
#[test]
fn file_system_vm_and_output_options() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"set -e
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out"
truncate -s 256M "$d/helper.raw"
echo 'start=2048, type=83' | sfdisk -q "$d/helper.raw" >/dev/null 2>&1
mkfs.ext4 -q -F -E offset=1048576 "$d/helper.raw" 250M
qemu-img convert -O qcow2 "$d/helper.raw" "$d/helper.qcow2"
rm "$d/helper.raw"
set +e
"$MICRODIB" -B {lib} -p {els} --name "$d/out/opt" --size 320M --formats qcow2 -u --qemu-img-options compat=0.10 \
   --fs-type xfs --root-label mylabel --arch i386 -m 768 --smp 1 --drive "$d/helper.qcow2" \
   --image-cache "$d/cache" fixture-os dumper > "$d/log" 2>&1
echo "opt: status=$?"
set -e
sed 's/^/log: /' "$d/log"
cd "$d/out"
for v in ARCH FS_TYPE DIB_ROOT_LABEL; do echo "opt: env $v=$(sed -n "s/^$v=//p" opt.d/root.d.env)"; done
echo "opt: vm $(tr '\n' ' ' < opt.d/root.d.vm)"
echo "opt: $(qemu-img info opt.qcow2 | grep -o 'compat: [0-9.]*')"
echo "opt: compressed-extents=$(qemu-img map --output=json opt.qcow2 | grep '"data": true' | grep -vc '"offset"')"
qemu-img convert -O raw opt.qcow2 opt.raw
echo "opt: fs $(blkid -o value -s TYPE opt.raw) $(blkid -o value -s LABEL opt.raw)"
qemu-img convert -O raw "$d/helper.qcow2" "$d/helper.raw"
dd if="$d/helper.raw" of="$d/part.img" bs=1M skip=1 2>/dev/null
echo "opt: helper-logs=$(debugfs -R ls "$d/part.img" 2>/dev/null | tr -s ' ' '\n' | grep -c '^microdib-.*\.log$')"
"#,
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?}");
    has("opt: status=0");
    has("opt: env ARCH=i386");
    has("opt: env FS_TYPE=xfs");
    has("opt: env DIB_ROOT_LABEL=mylabel");
    has("opt: compat: 0.10");
    has("opt: compressed-extents=0");
    has("opt: fs xfs mylabel");
    has("opt: helper-logs=1");
    let vm = s.lines().find_map(|l| l.strip_prefix("opt: vm ")).unwrap_or_default();
    let (cpus, mem) = vm.trim().split_once(' ').unwrap_or_default();
    assert_eq!(cpus, "1", "{vm}");
    let kib: u64 = mem.parse().unwrap_or(0);
    assert!((600_000..=786_432).contains(&kib), "MemTotal {kib} kB for -m 768");
}

/// The appliance network (passt): a root.d script (in the appliance) and an install.d script
/// (in the chroot, through bash's /dev/tcp) fetch a file from an HTTP server on the host's
/// loopback through the gateway address; the chroot sees the appliance's resolv.conf while it
/// runs and the target keeps its own. With --no-network the same fetch fails at once and
/// DIB_OFFLINE=1. passt is gone after a success, a failure and a SIGTERM.
#[test]
fn the_network_reaches_the_host_and_no_network_is_offline() {
    network_build(BuildVm::Auto);
}

#[test]
fn the_network_reaches_the_host_and_no_network_is_offline_on_our_kvm() {
    network_build(BuildVm::OurKvm);
}

fn network_build(vm: BuildVm) {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
srv=
trap '[ -n "$srv" ] && kill $srv; rm -rf "$d"' EXIT
mkdir -p "$d/www" "$d/out" "$d/els/fetcher/root.d" "$d/els/fetcher/install.d" "$d/els/fetcher/finalise.d"
head -c 3000000 /dev/urandom > "$d/www/blob"
echo "want: $(sha256sum < "$d/www/blob" | cut -c1-64)"
python3 -u -m http.server --bind 127.0.0.1 --directory "$d/www" 0 > "$d/srv.log" 2>&1 &
srv=$!
for i in $(seq 1 100); do grep -q 'port [0-9]' "$d/srv.log" && break; sleep 0.1; done
export FETCH_PORT=$(sed -n 's/.* port \([0-9]*\) .*/\1/p' "$d/srv.log" | head -1)
cat > "$d/els/fetcher/root.d/50-fetch" <<'S'
#!/bin/bash
echo "root.d: DIB_OFFLINE=[$DIB_OFFLINE]"
start=$(date +%s%N)
if curl -fsS --max-time 60 -o "$TARGET_ROOT/fetched" "http://10.0.2.2:$FETCH_PORT/blob"; then
  echo "root.d: fetched $(sha256sum < "$TARGET_ROOT/fetched" | cut -c1-64)"
else
  echo "root.d: fetch failed after $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi
echo 'nameserver 192.0.2.53' > "$TARGET_ROOT/etc/resolv.conf"
S
cat > "$d/els/fetcher/install.d/50-fetch" <<'S'
#!/bin/bash
echo "install.d: resolv.conf=$(cat /etc/resolv.conf)"
if exec 3<>/dev/tcp/10.0.2.2/$FETCH_PORT; then
  printf 'GET /blob HTTP/1.0\r\n\r\n' >&3
  echo "install.d: $(head -1 <&3 | tr -d '\r')"
fi
S
printf '#!/bin/bash\necho "finalise.d: resolv.conf=$(cat /etc/resolv.conf)"\n' > "$d/els/fetcher/finalise.d/50-show"
printf '#!/bin/bash\nexit 3\n' > "$d/els/fetcher/finalise.d/90-maybe-fail"
sed -i 's/^exit 3$/[ -n "$FAIL" ] \&\& exit 3; true/' "$d/els/fetcher/finalise.d/90-maybe-fail"
chmod +x "$d"/els/fetcher/*/*
build() {{ # NAME ARGS...: a build whose output lines start with NAME, then its passt's fate
  local name=$1; shift
  timeout -k 10 270 "$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/$name" --size 256M --formats tar \
     --image-cache "$d/cache" --envvar FETCH_PORT --envvar FAIL --debug 1 "$@" fixture-os fetcher > "$d/$name.log" 2>&1
  echo "$name: status=$?"
  grep -e '^root.d: ' -e '^install.d: ' -e '^finalise.d: ' -e 'passt' -e 'error' "$d/$name.log" | sed "s/^/$name: /"
  for pid in $(sed -n 's/.*passt (pid \([0-9]*\)).*/\1/p' "$d/$name.log"); do
    kill -0 "$pid" 2>/dev/null && echo "$name: passt $pid still running" || echo "$name: passt gone"
  done
}}
build net
echo "net: image resolv.conf=$(tar -xOf "$d/out/net.tar" ./etc/resolv.conf)"
build offline --no-network
FAIL=1 build failing
# SIGTERM while a script runs: passt goes with the build.
mkdir -p "$d/els/sleeper/install.d"
printf '#!/bin/bash\necho sleeping\nsleep 600\n' > "$d/els/sleeper/install.d/10-sleep"
chmod +x "$d/els/sleeper/install.d/10-sleep"
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/sig" --size 256M --formats tar --debug 1 \
   --image-cache "$d/cache" fixture-os sleeper > "$d/sig.log" 2>&1 &
pid=$!
for i in $(seq 1 300); do grep -q '^sleeping' "$d/sig.log" && break; sleep 1; done
ppid=$(sed -n 's/.*passt (pid \([0-9]*\)).*/\1/p' "$d/sig.log")
kill -0 "$ppid" 2>/dev/null && echo "sig: passt ran"
kill -TERM $pid
wait $pid
echo "sig: status=$?"
kill -0 "$ppid" 2>/dev/null && echo "sig: passt $ppid still running" || echo "sig: passt gone"
"#,
    );
    let s = build_output_on(vm, &script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    let want = s.lines().find_map(|l| l.strip_prefix("want: ")).expect("no checksum").to_owned();
    has("net: status=0");
    has("net: root.d: DIB_OFFLINE=[]");
    has(&format!("net: root.d: fetched {want}"));
    has("net: install.d: resolv.conf=nameserver 10.0.2.3");
    has("net: install.d: HTTP/1.0 200 OK");
    has("net: finalise.d: resolv.conf=nameserver 10.0.2.3");
    has("net: image resolv.conf=nameserver 192.0.2.53");
    has("net: passt gone");
    has("offline: status=0");
    has("offline: root.d: DIB_OFFLINE=[1]");
    has("offline: finalise.d: resolv.conf=nameserver 192.0.2.53");
    let ms: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("offline: root.d: fetch failed after ")?.strip_suffix(" ms")?.parse().ok())
        .unwrap_or_else(|| panic!("the fetch did not fail without the network:\n{s}"));
    assert!(ms < 5000, "failing without a network took {ms} ms");
    assert!(!s.lines().any(|l| l.starts_with("offline: ") && l.contains("passt")), "passt ran with --no-network:\n{s}");
    assert!(!s.contains("offline: install.d: HTTP/1.0 200"), "chroot reached the host with --no-network:\n{s}");
    has("failing: status=1");
    has("failing: passt gone");
    has("sig: passt ran");
    has("sig: status=1");
    has("sig: passt gone");
}

/// diskimage-builder's block-device layer (its own Python code, from the PyPI package, run in
/// the build VM) with its block-device-mbr element: the disk gets an MBR with one bootable
/// partition holding the tree, an fstab written by the layer, and finalise.d sees the layer's
/// variables. (The full `debian-minimal vm` build is `hack/e2e-builds debian-minimal-vm`.)
#[test]
fn diskimage_builders_block_device_layer_partitions_the_image() {
    let [_, dib, _] = dib_rootfs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out"
timeout -k 10 270 "$MICRODIB" -B {dib}/lib -p {els} -p {dib}/elements --name "$d/out/bd" --size 256M --formats raw,tar \
   --image-cache "$d/cache" --no-network --skip-base fixture-os block-device-mbr dumper > "$d/log" 2>&1
echo "host: status=$?"
sed 's/^/log: /' "$d/log"
sfdisk -d "$d/out/bd.raw" | grep '^/' | sed 's/^[^:]*: */table: /'
start=$(sfdisk -J "$d/out/bd.raw" | python3 -c 'import json, sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["start"])')
part="$d/out/bd.raw?offset=$((start * 512))"
echo "fs: $(debugfs -R 'stats' "$part" 2>/dev/null | grep -E '^Filesystem volume name' | tr -s ' ')"
echo "image: os-release=$(debugfs -R 'cat /etc/os-release' "$part" 2>/dev/null)"
echo "image: fstab=$(debugfs -R 'cat /etc/fstab' "$part" 2>/dev/null | grep -v '^#' | tr -s ' \t' ' ')"
echo "tar: $(tar -tf "$d/out/bd.tar" | grep -c '^./etc/os-release$')"
for v in IMAGE_BLOCK_DEVICE IMAGE_BLOCK_DEVICES DIB_ROOT_LABEL DIB_ROOT_FSTYPE DIB_MOUNTPOINTS DIB_BOOT_LABEL DIB_BLOCK_DEVICE; do
  echo "finalise.d: $(grep "^$v=" "$d/out/bd.d/finalise.d.env" || echo "no $v")"
done
echo "phases: $(cat "$d/out/bd.d/phases")"
"#,
        els = fixtures().join("elements").display(),
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?} in:\n{s}");
    has("host: status=0");
    has("log: microdib: Elements: fixture-os block-device-mbr dumper");
    // One bootable partition at 1 MiB filling the disk, as the element's config asks.
    let table: Vec<&str> = s.lines().filter(|l| l.starts_with("table: ")).collect();
    assert_eq!(table.len(), 1, "{s}");
    assert!(
        table[0].contains("start=        2048") && table[0].contains("type=83") && table[0].contains("bootable"),
        "{s}"
    );
    has("fs: Filesystem volume name: cloudimg-rootfs");
    has("image: os-release=PRETTY_NAME=\"microdib fixture OS\"");
    has("image: fstab=LABEL=cloudimg-rootfs / ext4 defaults 0 1");
    has("tar: 1");
    assert!(s.lines().any(|l| l.starts_with("finalise.d: IMAGE_BLOCK_DEVICE=/dev/loop")), "{s}");
    assert!(
        s.lines().any(|l| l.starts_with("finalise.d: IMAGE_BLOCK_DEVICES=") && l.contains("[root]=/dev/mapper/loop")),
        "{s}"
    );
    has("finalise.d: DIB_ROOT_LABEL=cloudimg-rootfs");
    has("finalise.d: DIB_ROOT_FSTYPE=ext4");
    has("finalise.d: DIB_MOUNTPOINTS=/");
    has("finalise.d: DIB_BOOT_LABEL=");
    has("finalise.d: DIB_BLOCK_DEVICE=mbr");
    // block-device.d is virt-dib's mechanism; with the layer it does not run.
    assert!(s.lines().any(|l| l.starts_with("phases: ") && !l.contains("block-device.d")), "{s}");
    // The layer's step is announced between post-install.d and finalise.d.
    let at = |m: &str| s.lines().position(|l| l.starts_with("log: [") && l.contains(m)).unwrap_or(usize::MAX);
    assert!(at("Running: post-install.d") < at("Partitioning the disk"), "{s}");
    assert!(at("Partitioning the disk") < at("Copying the tree into the image"), "{s}");
    assert!(at("Copying the tree into the image") < at("Running: finalise.d"), "{s}");
}

/// A tree without /var/log or /tmp (diskimage-builder's fake-os shape, with --skip-base)
/// builds, and block-device.d output without an IMAGE_BLOCK_DEVICE= line is only talk (issue
/// 16, gaps 6 and 7). A failing script's work is on a disk kept with --no-delete-on-failure
/// (gap 5).
#[test]
fn small_trees_chatty_block_device_d_and_kept_disks() {
    let (lib, els) = fixture_dirs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/out" "$d/els/half-done/install.d"
"$MICRODIB" -B {lib} -p {els} --name "$d/out/fake" --size 256M --formats raw --skip-base \
   --image-cache "$d/cache" fake-os chatty-block-device > "$d/log" 2>&1
echo "fake: status=$?"
sed 's/^/fake: /' "$d/log"
echo "fake: file=$(debugfs -R 'stat /fake-os' "$d/out/fake.raw" 2>/dev/null | grep -o 'Size: [0-9]*')"
echo "fake: var=$(debugfs -R 'ls /' "$d/out/fake.raw" 2>/dev/null | grep -c ' var ')"
printf '#!/bin/bash\necho half > /half-done\necho wrote half\nexit 3\n' > "$d/els/half-done/install.d/20-half"
chmod +x "$d/els/half-done/install.d/20-half"
"$MICRODIB" -B {lib} -p {els} -p "$d/els" --name "$d/out/kept" --size 256M --formats raw --no-delete-on-failure \
   --image-cache "$d/cache" fixture-os half-done > "$d/log2" 2>&1
echo "kept: status=$?"
echo "kept: marker=$(debugfs -R 'cat /half-done' "$d/out/kept.raw" 2>/dev/null)"
"$MICRODIB" -B {lib} -p {els} --name "$d/out/nofinal" --size 256M --formats raw,tar,qcow2 \
   --image-cache "$d/cache" fixture-os no-final-image > "$d/log3" 2>&1
echo "nofinal: status=$?"
echo "nofinal: files=$(cd "$d/out" && ls -A | grep '^nofinal' | tr '\n' ' ')"
"#,
    );
    let s = build_output(&script);
    let has = |l: &str| assert!(s.lines().any(|x| x == l), "missing line {l:?}:\n{s}");
    has("fake: status=0");
    has("fake: checking /dev/loop0: nothing to partition");
    has("fake: fake-os: made the tree");
    has(&format!("fake: file=Size: {}", 42 << 20));
    has("fake: var=0");
    has("kept: status=1");
    has("kept: marker=half");
    // diskimage-builder's no-final-image: the build runs, no image is written.
    has("nofinal: status=0");
    has("nofinal: files=");
}
