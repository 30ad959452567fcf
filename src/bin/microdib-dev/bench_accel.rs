//! `microdib-dev bench-accel`: one guest workload under the two ways a host without usable KVM
//! can run it (hack/bench-accel builds what it needs and says what it measures).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use microdib::vmbackend::{DiskFormat, VmDisk};

use crate::bench_boot::median;

#[derive(clap::Args)]
pub struct Args {
    /// Runs of each, alternating; medians.
    #[arg(short = 'n', long, value_name = "RUNS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Guest vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(128..))]
    memory: u64,
    /// Every size 8x smaller (a smoke test).
    #[arg(long)]
    quick: bool,
    /// Run only one column.
    #[arg(long, value_enum)]
    only: Option<Column>,
    /// Memory of the emulated KVM host (default MIB + 2048).
    #[arg(long, value_name = "MIB")]
    nested_memory: Option<u64>,
    /// Its CPUs.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..))]
    nested_cpus: u8,
    /// Where the tcg run's disk image lives (RAM, like the nested one's).
    #[arg(long, value_name = "DIR", default_value = "/dev/shm")]
    disk_dir: PathBuf,
    /// Seconds allowed per VMM run.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    timeout: u64,
    /// What the gzip step compresses: zeros (2.26 s under TCG) or copies of the busybox binary
    /// (pure compute, ~12 s, the same under both).
    #[arg(long, value_enum, default_value = "zeros")]
    gzip_input: GzipInput,
    #[arg(long, hide = true)]
    kernel: PathBuf,
    #[arg(long, hide = true)]
    busybox: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Column {
    Nested,
    Tcg,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Nested => "nested",
            Column::Tcg => "tcg",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GzipInput {
    Zeros,
    Binary,
}

const STEPS: [&str; 7] = ["init", "gzip", "shell-loop", "mke2fs", "write-fsync", "untar", "forks"];
const ME: &str = "bench-accel";

/// The guest's init. @NAME@ are filled in from the sizes. Each step is timed with /proc/uptime
/// (centiseconds; this busybox's date has no %N) read by the shell itself, no fork around it.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
read up _ < /proc/uptime
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t sysfs sysfs /sys
exec </dev/null >/dev/console 2>&1
echo "BENCH init $up"
fail() { echo "BENCH-FAIL $*"; sync; reboot -f; sleep 60; }
step() {
  name=$1; shift
  read t0 _ < /proc/uptime
  "$@" || fail "$name: exit status $?"
  read t1 _ < /proc/uptime
  echo "BENCH $name $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
}
do_gzip() { gzip -c /tmp/@GZIP_INPUT@ > /dev/null; }
do_loop() { i=0; while [ $i -lt @LOOP@ ]; do i=$((i + 1)); done; }
do_mke2fs() { mke2fs -F /dev/vda > /dev/null; }
# Not /dev/zero: qemu's detect-zeroes=unmap would turn zero writes into hole punching. The data
# file again and again straight from tmpfs (no pipes: their copies would cost more than the
# disk under emulation); the last dd's fsync flushes the whole file.
do_write() {
  off=0
  while [ $off -lt @WRITE_MIB@ ]; do
    n=$((@WRITE_MIB@ - off)); [ $n -gt @DATA_MIB@ ] && n=@DATA_MIB@
    conv=notrunc; [ $((off + n)) -ge @WRITE_MIB@ ] && conv=notrunc,fsync
    dd if=/tmp/data of=/mnt/big bs=1M count=$n seek=$off conv=$conv 2>/dev/null || return 1
    off=$((off + n))
  done
}
do_untar() { mkdir /mnt/t && tar -xf /bench.tar -C /mnt/t && sync; }
# /bin/true with a path: a real fork and exec of the (static) busybox, never a shell builtin.
do_forks() { i=0; while [ $i -lt @FORKS@ ]; do /bin/true; i=$((i + 1)); done; }

mount -t tmpfs -o size=90% tmpfs /tmp || fail "tmpfs"
n=0
while [ $n -lt @DATA_REPS@ ]; do cat /bin/busybox; n=$((n + 1)); done | head -c @DATA_BYTES@ > /tmp/data
[ "$(stat -c %s /tmp/data)" = @DATA_BYTES@ ] || fail "data: $(stat -c %s /tmp/data) bytes"
head -c @DATA_BYTES@ /dev/zero > /tmp/zeros
[ -b /dev/vda ] || fail "no /dev/vda"
step gzip do_gzip
step shell-loop do_loop
step mke2fs do_mke2fs
mkdir -p /mnt && mount -t ext2 /dev/vda /mnt || fail "mount /dev/vda"
step write-fsync do_write
step untar do_untar
step forks do_forks
umount /mnt
# At the end: tsc-early gives way to tsc (or something slower if the TSC was found unstable).
echo "BENCH-INFO clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
read up _ < /proc/uptime
echo "BENCH-INFO uptime $up"
echo "BENCH-DONE"
reboot -f
"#;

/// Runs inside the emulated KVM host (hack/nested-run): our VMM with its disk in that host's /tmp
/// (a tmpfs there), then the console, then the VMM's own wall time and status.
const NESTED_INNER: &str = r#"#!/bin/bash
set -u
vmm=$1 kernel=$2 initrd=$3 mem=$4 vcpus=$5 disk_bytes=$6 timeout_s=$7
d=$(mktemp -d /tmp/bench-accel-l1.XXXXXX) || exit 125
trap 'rm -rf "$d"' EXIT
truncate -s "$disk_bytes" "$d/disk.raw"
start=$(date +%s.%N)
"$vmm" --kernel "$kernel" --initramfs "$initrd" --memory "${mem}M" \
  --vcpus "$vcpus" --disk "$d/disk.raw,id=bench" --console "$d/console" --timeout "$timeout_s" 2>"$d/stderr"
rc=$?
end=$(date +%s.%N)
cat "$d/console"
sed 's/^/BENCH-STDERR /' "$d/stderr"
echo "BENCH-VMM $rc $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')"
"#;

/// The signal that asked us to stop (SIGINT, SIGTERM, SIGHUP), 0 while none did.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// One run's guest-timed steps (and "wall"), its BENCH-INFO lines and BENCH-FAIL lines.
struct Run {
    steps: BTreeMap<String, f64>,
    info: Vec<String>,
    fails: Vec<String>,
}

fn parse_console(text: &str) -> Run {
    let mut r = Run { steps: BTreeMap::new(), info: Vec::new(), fails: Vec::new() };
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["BENCH", name, secs] => {
                if let Ok(s) = secs.parse() {
                    r.steps.insert((*name).to_owned(), s);
                }
            }
            ["BENCH-INFO", rest @ ..] if !rest.is_empty() => r.info.push(rest.join(" ")),
            ["BENCH-FAIL", rest @ ..] if !rest.is_empty() => r.fails.push(rest.join(" ")),
            _ => {}
        }
    }
    r
}

impl Run {
    fn missing(&self) -> String {
        let m: Vec<&str> = STEPS.iter().copied().filter(|s| !self.steps.contains_key(*s)).collect();
        if m.is_empty() {
            "none".into()
        } else {
            m.join(" ")
        }
    }

    fn guest_fails(&self) -> String {
        self.fails.iter().map(|f| format!("\n    guest: {f}")).collect()
    }

    fn info(&self, key: &str) -> String {
        self.info
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// A small deterministic generator (xorshift64*): the same tarball for the same size, every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// ~nfiles small files (0-4 KiB of random bytes) in nested directories, the same for the same
/// nfiles. Returns the counts of files and directories.
fn make_tarball(path: &Path, nfiles: usize) -> anyhow::Result<(usize, usize)> {
    let mut rng = Rng(20261122);
    let mut dirs = vec!["d000".to_owned()];
    for i in 1..(nfiles / 25).max(1) {
        let parent = dirs[rng.below(dirs.len())].clone();
        let top = parent.matches('/').count() >= 4 || rng.below(5) == 0;
        dirs.push(if top { format!("d{i:03}") } else { format!("{parent}/d{i:03}") });
    }
    let mut files: Vec<(String, usize)> =
        (0..nfiles).map(|i| (format!("{}/f{i:05}", dirs[rng.below(dirs.len())]), rng.below(4097))).collect();
    files.sort();
    dirs.sort();
    dirs.dedup();
    let mut tar = tar::Builder::new(std::fs::File::create(path)?);
    let header = |kind: tar::EntryType, size: usize| -> anyhow::Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        h.set_size(size as u64);
        Ok(h)
    };
    for d in &dirs {
        tar.append_data(&mut header(tar::EntryType::Directory, 0)?, d, std::io::empty())?;
    }
    for (name, size) in &files {
        let data: Vec<u8> = (0..*size).map(|_| rng.next() as u8).collect();
        tar.append_data(&mut header(tar::EntryType::Regular, *size)?, name, data.as_slice())?;
    }
    tar.into_inner()?.sync_all()?;
    Ok((files.len(), dirs.len()))
}

struct Sizes {
    data: u64,
    write: u64,
    files: usize,
    dirs: usize,
}

fn make_initramfs(work: &Path, busybox: &Path, scale: u64, gzip_input: GzipInput) -> anyhow::Result<(PathBuf, Sizes)> {
    let data = (48u64 << 20) / scale;
    let write = (256u64 << 20) / scale;
    let bb_size = std::fs::metadata(busybox)?.len();
    let stage = work.join("stage");
    for d in ["bin", "dev", "proc", "sys", "tmp", "mnt"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy(busybox, stage.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", stage.join("bin/sh"))?;
    let (files, dirs) = make_tarball(&stage.join("bench.tar"), (7000 / scale) as usize)?;
    let mut init = GUEST_INIT.to_owned();
    for (k, v) in [
        ("GZIP_INPUT", if gzip_input == GzipInput::Zeros { "zeros".to_owned() } else { "data".to_owned() }),
        ("LOOP", (20000 / scale).to_string()),
        ("FORKS", (300 / scale).max(1).to_string()),
        ("DATA_BYTES", data.to_string()),
        ("DATA_REPS", (data / bb_size + 1).to_string()),
        ("DATA_MIB", (data >> 20).to_string()),
        ("WRITE_MIB", (write >> 20).to_string()),
    ] {
        init = init.replace(&format!("@{k}@"), &v);
    }
    std::fs::write(stage.join("init"), init)?;
    std::fs::set_permissions(stage.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    // Only a nicety (init reopens the console after mounting devtmpfs); needs root.
    let _ = Command::new("mknod").arg(stage.join("dev/console")).args(["c", "5", "1"]).stderr(Stdio::null()).status();
    let initrd = work.join("initramfs.cpio");
    let cpio = Command::new("sh")
        .args(["-c", "find . -mindepth 1 | cpio -o -H newc --quiet"])
        .current_dir(&stage)
        .stdout(std::fs::File::create(&initrd)?)
        .status()
        .context("cannot run cpio (apt-get install cpio)")?;
    if !cpio.success() {
        bail!("cpio failed: {cpio}");
    }
    std::fs::remove_dir_all(&stage)?;
    Ok((initrd, Sizes { data, write, files, dirs }))
}

/// Runs argv with stdout and stderr into `out`; returns (wall seconds, exit status), 124 when
/// it ran out of time. A stop signal ends it (TERM, then KILL: nested-run kills its qemu and
/// removes its control directory on TERM) and us.
fn timed(argv: &[String], out: &Path, limit: Duration) -> anyhow::Result<(f64, i32)> {
    let log = std::fs::File::create(out)?;
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", argv[0]))?;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((start.elapsed().as_secs_f64(), status.code().unwrap_or(128)));
        }
        let sig = STOP.load(Ordering::SeqCst);
        if sig != 0 || start.elapsed() > limit {
            stop(&mut child);
            if sig != 0 {
                bail!("stopped by signal {sig}");
            }
            return Ok((start.elapsed().as_secs_f64(), 124));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct Bench {
    a: Args,
    work: PathBuf,
    initrd: PathBuf,
    disk_bytes: u64,
}

impl Bench {
    fn run_tcg(&self, qemu: &Path, disk_dir: &Path) -> anyhow::Result<Run> {
        let disk = disk_dir.join("tcg-disk.raw");
        let console = self.work.join("tcg-console.log");
        let log = self.work.join("tcg-qemu.log");
        let _ = std::fs::remove_file(&console);
        std::fs::File::create(&disk)?.set_len(self.disk_bytes)?;
        let vm_disk = VmDisk {
            path: disk.clone(),
            format: DiskFormat::Raw,
            read_only: false,
            serial: "bench".into(),
            scratch: false,
        };
        let mut argv = vec![qemu.to_string_lossy().into_owned()];
        argv.extend(microdib::vmbackend::bench_qemu_args(
            &self.a.kernel,
            &self.initrd,
            self.a.memory,
            self.a.vcpus,
            &console,
            &vm_disk,
        ));
        let timed = timed(&argv, &log, Duration::from_secs(self.a.timeout));
        let _ = std::fs::remove_file(&disk);
        let (wall, rc) = timed?;
        let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
        let mut run = parse_console(&text);
        if rc != 0 || run.missing() != "none" {
            let what = if rc == 124 { "timed out".to_owned() } else { format!("exited with status {rc}") };
            let qlog = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
            bail!(
                "tcg: qemu {what}; steps missing: {}{}\n  console tail:\n{}\n  qemu stderr:\n{}",
                run.missing(),
                run.guest_fails(),
                tail(&text, 30),
                tail(&qlog, 10)
            );
        }
        run.steps.insert("wall".into(), wall);
        Ok(run)
    }

    /// Our VMM inside hack/nested-run; also returns microdib-vmm's own wall time in there.
    fn run_nested(&self, vmm: &Path, nested_run: &Path) -> anyhow::Result<(Run, f64)> {
        let inner = self.work.join("nested-inner.sh");
        std::fs::write(&inner, NESTED_INNER)?;
        let out = self.work.join("nested-out.log");
        let a = &self.a;
        // No --timeout for nested-run: its timeout(1) wrapper would outlive a KILL and leave qemu
        // running; microdib-vmm has its own, and ours stops nested-run (which kills its qemu).
        let argv: Vec<String> = [
            nested_run.to_string_lossy().as_ref(),
            "--memory",
            &a.nested_memory.unwrap_or(a.memory + 2048).to_string(),
            "--cpus",
            &a.nested_cpus.to_string(),
            "--",
            "/bin/bash",
            &inner.to_string_lossy(),
            &vmm.to_string_lossy(),
            &a.kernel.to_string_lossy(),
            &self.initrd.to_string_lossy(),
            &a.memory.to_string(),
            &a.vcpus.to_string(),
            &self.disk_bytes.to_string(),
            &a.timeout.to_string(),
        ]
        .map(str::to_owned)
        .into();
        let (wall, rc) = timed(&argv, &out, Duration::from_secs(a.timeout + 60))?;
        let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap_or_default()).into_owned();
        let mut run = parse_console(&text);
        let vmm_end = text.lines().filter_map(|l| l.strip_prefix("BENCH-VMM ")).next_back().and_then(|l| {
            let (rc, wall) = l.split_once(' ')?;
            Some((rc.parse::<i32>().ok()?, wall.parse::<f64>().ok()?))
        });
        match vmm_end {
            Some((0, vmm_wall)) if rc == 0 && run.missing() == "none" => {
                run.steps.insert("wall".into(), wall);
                Ok((run, vmm_wall))
            }
            _ => {
                let what = match vmm_end {
                    None => format!("hack/nested-run exited with status {rc} before microdib-vmm finished"),
                    Some((vrc, _)) => format!("microdib-vmm exited with status {vrc} (hack/nested-run: {rc})"),
                };
                bail!(
                    "nested: {what}; steps missing: {}{}\n  console and nested-run output, tail:\n{}",
                    run.missing(),
                    run.guest_fails(),
                    tail(&text, 30)
                )
            }
        }
    }
}

fn note(msg: &str) {
    eprintln!("{ME}: {msg}");
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let bins = std::env::current_exe()?.parent().context("no directory of microdib-dev")?.to_owned();
    let vmm = bins.join("microdib-vmm");
    let nested_run = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/nested-run");
    let qemu = microdib::host::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")?;
    let columns: Vec<Column> = match a.only {
        Some(c) => vec![c],
        None => vec![Column::Nested, Column::Tcg],
    };
    let scale = if a.quick { 8 } else { 1 };
    let disk_bytes = (1u64 << 30) / scale;
    let tmp = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| "/tmp".into());
    let work = mkdtemp(&tmp)?;
    let disk_dir = if columns.contains(&Column::Tcg) {
        Some(
            mkdtemp(&a.disk_dir)
                .with_context(|| format!("--disk-dir {}: not a writable directory", a.disk_dir.display()))?,
        )
    } else {
        None
    };
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    let result = (|| {
        let (initrd, sizes) = make_initramfs(&work, &a.busybox, scale, a.gzip_input)?;
        note(&format!(
            "initramfs {} MiB: {} MiB to gzip, {} MiB to write, {} files in {} directories to untar, {} MiB disk",
            std::fs::metadata(&initrd)?.len() >> 20,
            sizes.data >> 20,
            sizes.write >> 20,
            sizes.files,
            sizes.dirs,
            disk_bytes >> 20
        ));
        let bench = Bench { a, work: work.clone(), initrd, disk_bytes };
        let mut results: BTreeMap<Column, Vec<Run>> = BTreeMap::new();
        let mut vmm_walls = Vec::new();
        for i in 0..bench.a.runs {
            for &c in &columns {
                note(&format!("run {}/{}: {}", i + 1, bench.a.runs, c.name()));
                let run = match (c, &disk_dir) {
                    (Column::Nested, _) => {
                        let (run, vmm_wall) = bench.run_nested(&vmm, &nested_run)?;
                        vmm_walls.push(vmm_wall);
                        run
                    }
                    (Column::Tcg, Some(d)) => bench.run_tcg(&qemu, d)?,
                    (Column::Tcg, None) => unreachable!("a tcg column has its disk directory"),
                };
                note(&format!("  {}: {:.1} s wall", c.name(), run.steps["wall"]));
                results.entry(c).or_default().push(run);
            }
        }
        report(&bench.a, &qemu, &results, &mut vmm_walls, scale);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    if let Some(d) = disk_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    let sig = STOP.load(Ordering::SeqCst);
    if sig != 0 {
        std::process::exit(128 + sig);
    }
    result
}

fn mkdtemp(dir: &Path) -> anyhow::Result<PathBuf> {
    let template = std::ffi::CString::new(dir.join("bench-accel.XXXXXX").into_os_string().into_encoded_bytes())?;
    let mut bytes = template.into_bytes_with_nul();
    // SAFETY: mkdtemp rewrites the XXXXXX of the nul-terminated buffer we own.
    let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(std::io::Error::last_os_error().into());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

use std::os::unix::ffi::OsStringExt;

fn report(a: &Args, qemu: &Path, results: &BTreeMap<Column, Vec<Run>>, vmm_walls: &mut [f64], scale: u64) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let qver = Command::new(qemu)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let now = Command::new("date")
        .arg("+%Y-%m-%d %H:%M")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("{}  nproc {nproc}  {cpu}  {qver}  kernel {}", now.unwrap_or_default(), a.kernel.display());
    let last = |c: Column| results.get(&c).and_then(|r| r.last());
    let clocks: Vec<String> = results
        .keys()
        .map(|&c| format!("{} {}", c.name(), last(c).map(|r| r.info("clocksource")).unwrap_or_default()))
        .collect();
    println!(
        "guest: {} vCPU, {} MiB, gzip of {}{}; {} run(s) each, medians; clocksource {}",
        a.vcpus,
        a.memory,
        if a.gzip_input == GzipInput::Zeros { "zeros" } else { "binary" },
        if scale > 1 { ", --quick (sizes / 8)" } else { "" },
        a.runs,
        clocks.join(", ")
    );
    let med = |c: Column, s: &str| -> Option<f64> {
        let mut v: Vec<f64> = results.get(&c)?.iter().filter_map(|r| r.steps.get(s).copied()).collect();
        (!v.is_empty()).then(|| median(&mut v))
    };
    let cell = |v: Option<f64>| v.map(|v| format!("{v:10.2}")).unwrap_or_else(|| format!("{:>10}", "-"));
    println!("{:<12} | {:>10} | {:>10} | {:>10}", "step", "nested (s)", "tcg (s)", "nested/tcg");
    println!("{}-+-{}-+-{}-+-{}", "-".repeat(12), "-".repeat(10), "-".repeat(10), "-".repeat(10));
    for s in STEPS.iter().copied().chain(["wall"]) {
        let (n, t) = (med(Column::Nested, s), med(Column::Tcg, s));
        let ratio = match (n, t) {
            (Some(n), Some(t)) if t > 0.0 => format!("{:9.2}x", n / t),
            _ => format!("{:>10}", "-"),
        };
        println!("{s:<12} | {} | {} | {ratio}", cell(n), cell(t));
    }
    let vmm_wall = (!vmm_walls.is_empty()).then(|| median(vmm_walls));
    println!(
        "steps: guest-timed (/proc/uptime); wall: host-timed process start to exit; nested wall includes booting the emulated KVM host (hack/nested-run){}",
        vmm_wall.map(|w| format!(", microdib-vmm itself took {w:.2} s in it")).unwrap_or_default()
    );
    // The guest's clock against the host's: its uptime at the end should be a little less than
    // the VMM process's wall time (VMM start-up and the reset come on top), never more.
    let checks: Vec<String> = results
        .keys()
        .map(|&c| {
            let wall = if c == Column::Nested { vmm_wall } else { med(c, "wall") };
            format!(
                "{} {} / {:.2} s",
                c.name(),
                last(c).map(|r| r.info("uptime")).unwrap_or_default(),
                wall.unwrap_or(0.0)
            )
        })
        .collect();
    println!("guest clock check, uptime at the end / VMM process wall (last run): {}", checks.join(", "));
    if let (Some(n), Some(t)) = (med(Column::Nested, "wall"), med(Column::Tcg, "wall")) {
        let r = n / t;
        if r >= 1.0 {
            println!("{ME}: TCG backend is {r:.2}x faster than nested (wall)");
        } else {
            println!("{ME}: TCG backend is {:.2}x slower than nested (wall)", 1.0 / r);
        }
    }
}
