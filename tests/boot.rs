//! End-to-end boot tests: the real guest kernel (hack/build-kernel) with the boot-probe
//! initramfs, run by the `microdib-vmm` binary. Where this host's KVM can run Linux the binary
//! runs directly; otherwise (PVM, no /dev/kvm) every test runs the same command through
//! `hack/nested-run`. Nothing is skipped: a missing kernel, busybox or qemu fails the test.
//!
//! Tests of booting itself boot a VM each. Tests that only need a working agent share one
//! appliance VM (tests/boot/agent_vm.rs) and assert on their own part of what it saw.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use initramfs::probe::{self, ProbeExit, MARKER};

mod common;
use common::*;

#[path = "boot/agent_vm.rs"]
mod agent_vm;

fn static_busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(p);
        // A dynamic busybox cannot run in an initramfs without its libraries.
        let dynamic = Command::new("ldd").arg(p).output().map(|o| o.status.success()).unwrap_or(true);
        if p.exists() && !dynamic {
            return p.to_owned();
        }
    }
    panic!("a statically linked busybox is needed: apt-get install busybox-static");
}

/// Writes the probe initramfs under target/ (inside the working directory, so nested-run
/// shares it with the emulated machine).
fn probe_initramfs(exit: ProbeExit) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("boot-test");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(match exit {
        ProbeExit::Reboot => "probe-reboot.cpio",
        ProbeExit::Panic => "probe-panic.cpio",
    });
    let bytes = probe::archive(&static_busybox(), exit).unwrap().to_bytes().unwrap();
    // Tests run in parallel: write aside and rename, so no VM ever reads a half-written file.
    let tmp = path.with_extension(format!("{:?}.tmp", std::thread::current().id()).replace(['(', ')'], ""));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Runs microdib-vmm with `args`, natively or through hack/nested-run.
fn run_vmm(args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_microdib-vmm");
    let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
    let mut cmd = match native_kvm() {
        Ok(()) => Command::new(bin),
        Err(why) => {
            eprintln!("native KVM unusable ({why}); running through hack/nested-run");
            let mut c = nested_run();
            c.args(["--timeout", "600", "--"]).arg(bin);
            c
        }
    };
    cmd.current_dir(workspace()).args(args);
    shown(cmd.output().expect("cannot start microdib-vmm"))
}

/// Runs a bash script where microdib-vmm can run (natively, or inside hack/nested-run), with
/// `$VMM` set to the binary. For checks that need the disk files on a local file system.
fn run_script(script: &str) -> Output {
    run_script_with_env(script, &[])
}

/// Boots `kernel` with the probe initramfs, 256 MiB and a 120 s limit, plus `extra` arguments.
fn boot_probe(kernel: &Path, exit: ProbeExit, extra: &[&str]) -> Output {
    let initrd = probe_initramfs(exit);
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--initramfs", initrd.to_str().unwrap()];
    args.extend(["--memory", "256M", "--timeout", "120"]);
    args.extend(extra);
    run_vmm(&args)
}

#[test]
fn boots_two_vcpus_to_init_and_exits_cleanly() {
    let kernel = kernel();
    let out = boot_probe(&kernel, ProbeExit::Reboot, &["--vcpus", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(MARKER), "init never ran");
    assert!(stdout.contains("MICRODIB-PROBE: nproc=2"), "second vCPU did not come online");
    let uptime_line = stdout.lines().find(|l| l.starts_with("MICRODIB-PROBE: uptime=")).expect("no uptime line");
    let uptime: f64 = uptime_line
        .trim_start_matches("MICRODIB-PROBE: uptime=")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("uptime is not a number");
    assert!(uptime > 0.0 && uptime < 120.0, "implausible uptime {uptime}");
    assert!(stderr.contains("guest reset (normal shutdown)"), "guest did not end by its own reset");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn elf_vmlinux_boots_too() {
    let vmlinux = kernel().with_file_name("vmlinux");
    let out = boot_probe(&vmlinux, ProbeExit::Reboot, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("MICRODIB-PROBE: nproc=1"));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn guest_kernel_panic_is_reported_as_a_failure() {
    let kernel = kernel();
    let out = boot_probe(&kernel, ProbeExit::Panic, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Kernel panic - not syncing"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("guest kernel panicked"));
    assert_eq!(out.status.code(), Some(3));
}

/// Checked before KVM is opened: the same message on every host, so run here, never nested.
#[test]
fn bad_inputs_are_refused_with_a_clear_message() {
    let kernel = kernel();
    let not_a_kernel = workspace().join("Cargo.toml");
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["--kernel", not_a_kernel.to_str().unwrap()], "neither a Linux bzImage nor an ELF vmlinux"),
        (vec!["--kernel", "/nonexistent/bzImage"], "cannot read kernel /nonexistent/bzImage"),
        (vec!["--kernel", kernel.to_str().unwrap(), "--memory", "16M"], "too little"),
        (vec!["--kernel", kernel.to_str().unwrap(), "--initramfs", "/nonexistent/initrd"], "/nonexistent/initrd"),
    ];
    for (args, expected) in cases {
        let out = shown(Command::new(env!("CARGO_BIN_EXE_microdib-vmm")).args(&args).output().unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let line = stderr.lines().find(|l| l.starts_with("microdib-vmm: error:")).expect("no error line");
        assert!(line.contains(expected), "{args:?}: {line}");
    }
}

#[test]
fn host_kvm_check_explains_itself() {
    // Runs natively on purpose: this is the message users of a host without usable KVM see.
    let out = Command::new(env!("CARGO_BIN_EXE_microdib-vmm")).arg("--check-kvm").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match native_kvm() {
        Ok(()) => {
            assert_eq!(out.status.code(), Some(0));
            assert!(stdout.contains("KVM usable"));
        }
        Err(why) => {
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(stderr.trim(), format!("microdib-vmm: error: {why}"));
            if vmm::host::host_backend() == vmm::KvmBackend::Pvm {
                assert!(why.contains("PVM"), "{why}");
            }
        }
    }
}

#[test]
fn virtio_rng_feeds_the_guest() {
    let kernel = kernel();
    let out = boot_probe(&kernel, ProbeExit::Reboot, &["--rng"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MICRODIB-PROBE: virtio-device=0x0004"), "no virtio-rng device in the guest");
    let hex =
        stdout.lines().find_map(|l| l.strip_prefix("MICRODIB-PROBE: hwrng=")).expect("guest could not read /dev/hwrng");
    assert_eq!(hex.trim().len(), 32, "16 random bytes as hex: {hex}");
    assert_ne!(hex.trim(), "0".repeat(32));
    assert_eq!(out.status.code(), Some(0));
}

/// The start of a disk test's script: `$d` a temporary directory, `$d/a.raw` an 8 MiB disk
/// holding `pattern` at 0 and random bytes in its second MiB.
fn patterned_disk(pattern: &str) -> String {
    format!(
        r#"set -e
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
truncate -s 8M "$d/a.raw"
printf {pattern} | dd of="$d/a.raw" conv=notrunc 2>/dev/null
head -c 1048576 /dev/urandom | dd of="$d/a.raw" bs=1M seek=1 conv=notrunc 2>/dev/null"#
    )
}

#[test]
fn virtio_blk_reads_writes_discards_and_honours_read_only() {
    let kernel = kernel();
    let initrd = probe_initramfs(ProbeExit::Reboot);
    // The disks live in a temporary directory on a local file system (inside the emulated
    // machine when nested), so hole punching is real and visible to du.
    let script = format!(
        r#"{disk}
truncate -s 1M "$d/b.raw"
echo "host: before-kib=$(du -k "$d/a.raw" | cut -f1)"
"$VMM" --kernel {kernel} --initramfs {initrd} --memory 256M --timeout 120 \
  --disk "$d/a.raw,id=target-disk" --disk "$d/b.raw,ro"
echo "host: after-kib=$(du -k "$d/a.raw" | cut -f1)"
echo "host: at-4k=$(dd if="$d/a.raw" bs=1 skip=4096 count=17 2>/dev/null)"
cmp -s <(dd if="$d/a.raw" bs=1M skip=1 count=1 2>/dev/null) <(head -c 1048576 /dev/zero) && echo "host: second-mib=zero"
cmp -s "$d/b.raw" <(head -c 1048576 /dev/zero) && echo "host: read-only-disk=untouched"
"#,
        kernel = kernel.display(),
        initrd = initrd.display(),
        disk = patterned_disk("HEAD-PATTERN-123"),
    );
    let out = run_script(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| -> String {
        stdout.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} line")).trim().to_owned()
    };
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout.matches("MICRODIB-PROBE: virtio-device=0x0002").count(), 2);
    assert_eq!(value("MICRODIB-PROBE: vda-size="), "8388608");
    assert_eq!(value("MICRODIB-PROBE: vda-serial="), "target-disk");
    assert_eq!(value("MICRODIB-PROBE: vda-head="), "484541442d5041545445524e2d313233", "HEAD-PATTERN-123");
    assert_eq!(value("MICRODIB-PROBE: vda-write="), "ok");
    assert_eq!(value("MICRODIB-PROBE: vda-discard="), "ok");
    assert_eq!(value("MICRODIB-PROBE: vdb-write="), "refused");
    assert_eq!(value("host: at-4k="), "microdib-was-here");
    assert_eq!(value("host: second-mib="), "zero");
    assert_eq!(value("host: read-only-disk="), "untouched");
    let before: u64 = value("host: before-kib=").parse().unwrap();
    let after: u64 = value("host: after-kib=").parse().unwrap();
    assert!(after + 512 < before, "discard did not punch a hole: {before} KiB -> {after} KiB");
}

/// The helper drive may be qcow2 (virt-dib's --drive-format): the guest sees its virtual
/// contents, and what it writes and discards leaves an image qemu-img accepts.
#[test]
fn virtio_blk_serves_a_qcow2_disk() {
    let kernel = kernel();
    let initrd = probe_initramfs(ProbeExit::Reboot);
    let script = format!(
        r#"{disk}
qemu-img convert -f raw -O qcow2 "$d/a.raw" "$d/a.qcow2"
"$VMM" --kernel {kernel} --initramfs {initrd} --memory 256M --timeout 120 --disk "$d/a.qcow2,format=qcow2,id=helper"
qemu-img check -q "$d/a.qcow2" && echo "host: check=clean"
qemu-img convert -f qcow2 -O raw "$d/a.qcow2" "$d/back.raw"
echo "host: at-4k=$(dd if="$d/back.raw" bs=1 skip=4096 count=17 2>/dev/null)"
cmp -s <(dd if="$d/back.raw" bs=1M skip=1 count=1 2>/dev/null) <(head -c 1048576 /dev/zero) && echo "host: second-mib=zero"
"#,
        kernel = kernel.display(),
        initrd = initrd.display(),
        disk = patterned_disk("QCOW-PATTERN-456"),
    );
    let out = run_script(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "MICRODIB-PROBE: vda-size=8388608",
        "MICRODIB-PROBE: vda-serial=helper",
        "MICRODIB-PROBE: vda-head=51434f572d5041545445524e2d343536",
        "MICRODIB-PROBE: vda-write=ok",
        "MICRODIB-PROBE: vda-discard=ok",
        "host: check=clean",
        "host: at-4k=microdib-was-here",
        "host: second-mib=zero",
    ] {
        assert!(stdout.contains(line), "missing '{line}' in:\n{stdout}");
    }
}

/// Commands through the agent over vsock (in the shared VM): output streams back while the
/// command runs, each command gets exactly its own environment, and how it ended comes back.
#[test]
fn agent_runs_commands_over_vsock() {
    let c = agent_vm::seen(|r| &r.commands);
    assert!(c.ping.stdout.contains("microdib-agent 0.1.0 answered"), "no ping answer");
    assert!(c.streamed.stderr.contains("err"), "stderr of the command did not come back");
    let at = |line: &str| c.streamed.arrival(line).unwrap_or_else(|| panic!("no line {line:?}"));
    assert!(at("late") - at("out hello") >= 1.0, "output only arrived at exit");
    assert_eq!(c.streamed.code, Some(7));
    assert_eq!(c.env_after.code, Some(0));
    assert!(!c.env_after.stdout.contains("GREETING="), "environment leaked between commands");
    assert_eq!(c.killed.code, Some(137), "SIGKILL not reported as signal 9");
    assert_eq!(c.missing.code, Some(1));
    assert!(c.missing.stderr.contains("cannot run /no/such/program"));
    // A command that leaves a daemon holding its output still ends (the daemon is stopped).
    assert!(c.daemon.stdout.contains("daemon-started"));
    assert!(c.daemon_seconds < 30.0, "a background process kept the command from ending ({} s)", c.daemon_seconds);
    // Two commands at once on two connections: each waits for the other.
    assert_eq!(c.first.stdout, "first-done\n", "the second command never ran while the first did");
    assert_eq!(c.second.stdout, "second-done\n");
    let end = agent_vm::seen(|r| &r.end);
    assert_eq!(end.vmm_code, Some(0), "VM did not end cleanly after poweroff");
    assert!(end.console.contains("microdib-agent: ready"), "no ready banner on the console");
}

/// Trees as tar streams and single files, into the (shared) guest and back.
#[test]
fn agent_moves_trees_and_files_both_ways() {
    let f = agent_vm::seen(|r| &r.files);
    assert_eq!(f.cat_written.stdout, "file-body");
    assert_ne!(f.cat_device.code, Some(0), "reading a device must be refused, not hang or eat memory");
    assert_eq!(f.changed_files, Vec::<String>::new(), "contents changed on the way");
    assert_eq!(f.big_file_mode, 0o751);
    assert_eq!(f.symlink_target, "a.txt");
    assert_eq!(f.hard_links, 2);
    assert_eq!(f.written_file_mode, 0o600);
}

/// Writes the agent test appliance (agent as /init, busybox) and returns its path.
fn agent_initramfs() -> PathBuf {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("boot-test");
        std::fs::create_dir_all(&dir).unwrap();
        let initrd = dir.join("agent.cpio");
        let bytes = initramfs::probe::agent_archive(&guest_agent(), &static_busybox()).unwrap().to_bytes().unwrap();
        std::fs::write(&initrd, bytes).unwrap();
        initrd
    })
    .clone()
}

#[test]
fn sigterm_mid_command_stops_everything_and_cleans_up() {
    let kernel = kernel();
    let initrd = agent_initramfs();
    let script = format!(
        r#"d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$VMM" --kernel {kernel} --initramfs {initrd} --vsock "$d/vsock" --memory 256M --timeout 120 > /dev/null 2> "$d/vmm.err" &
vmm=$!
"$CTL" --uds "$d/vsock" --wait 60 ping > /dev/null
"$CTL" --uds "$d/vsock" run -- sh -c 'echo running; sleep 100' > "$d/out" 2>&1 &
ctl=$!
for i in $(seq 100); do grep -q running "$d/out" 2>/dev/null && break; sleep 0.1; done
kill -TERM $vmm
wait $vmm; echo "host: vmm-status=$?"
wait $ctl; echo "host: client-status=$?"
[ -e "$d/vsock" ] && echo "host: socket=left" || echo "host: socket=removed"
kill -0 $vmm 2>/dev/null && echo "host: vmm=alive" || echo "host: vmm=gone"
ls "$d" | tr '\n' ' ' | sed 's/^/host: files=/'; echo
cat "$d/vmm.err"
"#,
        kernel = kernel.display(),
        initrd = initrd.display()
    );
    let out = run_script_with_env(&script, &[("CTL", env!("CARGO_BIN_EXE_microdib-agent-ctl"))]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("host: vmm-status=143"), "SIGTERM should end the VMM with 128+15");
    assert!(stdout.contains("stopped the guest on signal 15"));
    assert!(stdout.contains("host: client-status=1"), "the client must see the connection end");
    assert!(stdout.contains("host: socket=removed"));
    assert!(stdout.contains("host: vmm=gone"));
    assert!(stdout.contains("host: files=out vmm.err \n") || stdout.contains("host: files=out vmm.err"), "stray files");
}

/// The appliance (host tools, the agent as init) makes a file system on a sparse target disk
/// in the shared VM, which the host reads once the VM has ended.
#[test]
fn appliance_makes_a_file_system_on_a_sparse_target_disk() {
    // mkfs, mount, writing FILE and umount in the guest must each succeed for this part to exist.
    let fs = agent_vm::seen(|r| &r.file_system);
    assert!(fs.python.stdout.contains("python=ok"), "{:?}", fs.python);
    assert!(fs.awk.stdout.contains("awk=ok"), "{:?}", fs.awk);
    assert!(fs.tar_version.stdout.contains("GNU tar"), "{:?}", fs.tar_version);
    assert_eq!(agent_vm::seen(|r| &r.end).vmm_code, Some(0));
    assert_eq!(fs.file_on_host.trim_end(), "written by microdib", "the host cannot read the guest's file");
    assert_eq!(fs.label, "test");
    assert!(fs.allocated_kib < 64 * 1024, "the 1 GiB target is no longer sparse: {} KiB allocated", fs.allocated_kib);
}

/// Size of the tree for the tar round trip: 64 MiB in the test command (nested emulation makes
/// 512 MiB, the acceptance size, cost 6-15 minutes), or MICRODIB_TAR_TEST_MIB
/// (`MICRODIB_TAR_TEST_MIB=512 cargo test --test boot tar_streams`).
fn tar_test_mib() -> u64 {
    std::env::var("MICRODIB_TAR_TEST_MIB").ok().and_then(|v| v.parse().ok()).filter(|&m| m >= 8).unwrap_or(64)
}

/// A tree with every awkward kind of entry (sparse, hard and symbolic links, setuid, sticky,
/// foreign owners, xattrs) into an ext4 file system in the shared VM and back, as tar streams.
#[test]
fn tar_streams_round_trip_a_tree() {
    let mib = tar_test_mib();
    let t = agent_vm::seen(|r| &r.tar_round_trip);
    eprintln!("{} entries: in {:.1} s, out {:.1} s", t.entries, t.in_seconds, t.out_seconds);
    assert_eq!(t.source_mib, mib, "the tree should hold {mib} MiB");
    assert!(
        t.manifest_diff.is_empty(),
        "contents, modes, owners, links or xattrs changed on the way:\n{}",
        t.manifest_diff.join("\n")
    );
}

/// The shared agent VM's session (see tests/boot/agent_vm.rs), run by the test binary itself
/// where microdib-vmm can run a guest. Run directly, it carries out the whole session.
#[test]
#[ignore = "run by the agent tests, in a process of its own"]
fn agent_vm_session() {
    match agent_vm::plan_from_env() {
        Some(plan) => agent_vm::run_and_report(&plan),
        None => {
            agent_vm::seen(|r| &r.commands);
            agent_vm::seen(|r| &r.files);
            agent_vm::seen(|r| &r.file_system);
            agent_vm::seen(|r| &r.tar_round_trip);
            agent_vm::seen(|r| &r.end);
        }
    }
}
