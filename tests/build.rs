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
