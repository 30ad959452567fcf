//! One appliance VM for the boot tests that only need a working agent (commands, files, tar
//! streams, disks): booting is the expensive part (minutes a VM under nested emulation), so it
//! happens once per test binary. One session boots the VM, carries out every check in turn,
//! powers it off and inspects its disks; each test then asserts on its own part of the report.
//!
//! The session always runs in a process of its own, where microdib-vmm can run a guest: the test
//! binary runs itself (`agent_vm_session` in boot.rs) here or inside hack/nested-run, and prints
//! the report as one JSON line. Its checks drive the agent with microdib-agent-ctl, as a user would.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::common::{appliance, kernel, native_kvm, run_where_kvm_works, text, Nested};

/// The test in boot.rs that runs the session in its own process.
pub const SESSION_TEST: &str = "agent_vm_session";
/// Carries the plan to that process.
const PLAN_VAR: &str = "MICRODIB_AGENT_VM_PLAN";
/// Starts the report's line on that process's stdout.
const REPORT_PREFIX: &str = "agent-vm-report: ";

/// Serial numbers of the two scratch disks (the guest finds them by serial).
const FS_DISK: &str = "fs-target";
const TAR_DISK: &str = "tar-target";

/// What the session boots, decided by the test process.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    pub kernel: PathBuf,
    /// The appliance: the agent as init, host packages in a squashfs root.
    pub initrd: PathBuf,
    pub appliance_root: PathBuf,
    pub vcpus: u8,
    /// Size of the tree the tar round trip sends.
    pub tar_mib: u64,
}

/// What the session saw, one part per test. A part is `Err` when its check could not be carried
/// out (a guest step failed, the agent stopped answering, the VM never came up).
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub commands: Result<Commands, String>,
    pub files: Result<Files, String>,
    pub file_system: Result<FileSystem, String>,
    pub tar_round_trip: Result<TarRoundTrip, String>,
    /// How the VM ended once told to power off, after every check.
    pub end: Result<VmEnd, String>,
}

/// How one microdib-agent-ctl invocation ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Ran {
        Ran { code: o.status.code(), stdout: text(&o.stdout), stderr: text(&o.stderr) }
    }
}

/// Commands run through the agent, one connection each.
#[derive(Debug, Serialize, Deserialize)]
pub struct Commands {
    pub ping: Ran,
    /// `sh -c 'echo "out $GREETING"; echo err >&2; sleep 2; echo late; exit 7'` with GREETING=hello.
    pub streamed: Streamed,
    /// `env`, run next without any environment given.
    pub env_after: Ran,
    /// `sh -c 'kill -9 $$'`.
    pub killed: Ran,
    /// `/no/such/program`.
    pub missing: Ran,
    /// `sh -c 'sleep 100 & echo daemon-started'`: the daemon holds the command's output open.
    pub daemon: Ran,
    pub daemon_seconds: f64,
    /// Two commands on two connections that wait for each other: `first` marks that it runs and
    /// waits for `second`'s mark, `second` waits for `first`'s mark and sets its own (a minute at most).
    pub first: Ran,
    pub second: Ran,
}

/// A command's output as it arrived.
#[derive(Debug, Serialize, Deserialize)]
pub struct Streamed {
    /// Each stdout line with when it arrived, in seconds after the command was started.
    pub lines: Vec<(f64, String)>,
    pub stderr: String,
    pub code: Option<i32>,
}

impl Streamed {
    /// When `line` arrived.
    pub fn arrival(&self, line: &str) -> Option<f64> {
        self.lines.iter().find(|(_, l)| l == line).map(|(t, _)| *t)
    }
}

/// A tree (a 5 MB file with mode 751, a symlink, a hard link) put into the guest's /tmp/tree
/// as a tar stream, a file written there with mode 600, and the tree got back.
#[derive(Debug, Serialize, Deserialize)]
pub struct Files {
    /// `cat` of the written file.
    pub cat_written: Ran,
    /// `cat /dev/zero`.
    pub cat_device: Ran,
    /// Regular files of the tree whose contents differ on the way back, or that appeared or went
    /// missing (the written file aside).
    pub changed_files: Vec<String>,
    pub big_file_mode: u32,
    pub symlink_target: String,
    pub hard_links: u64,
    pub written_file_mode: u32,
}

/// An ext4 file system made in the guest on a sparse 1 GiB disk (label "test", a file FILE
/// written through the agent), looked at from the host once the VM has ended.
#[derive(Debug, Serialize, Deserialize)]
pub struct FileSystem {
    /// The appliance's own tools: `python3 -c 'print("python=ok")'`, `tar --version`, awk.
    pub python: Ran,
    pub tar_version: Ran,
    pub awk: Ran,
    /// FILE as debugfs reads it from the disk image.
    pub file_on_host: String,
    pub label: String,
    pub allocated_kib: u64,
}

/// A tree of large files, many small ones, a sparse file, links, odd modes, owners and an
/// xattr, sent into an ext4 file system in the guest and back as tar streams.
#[derive(Debug, Serialize, Deserialize)]
pub struct TarRoundTrip {
    /// What the regular files under big/ and small/ hold.
    pub source_mib: u64,
    pub in_seconds: f64,
    pub out_seconds: f64,
    /// Lines of `microdib-dev tree-manifest`'s listing of the tree sent.
    pub entries: usize,
    /// The lines in which the listings of the tree sent (-) and the tree got back (+) differ.
    pub manifest_diff: Vec<String>,
}

/// How the VM ended.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmEnd {
    /// None when the VM had ended before.
    pub poweroff: Option<Ran>,
    pub vmm_code: Option<i32>,
    pub vmm_stderr: String,
    pub console: String,
}

// --- the test process's side ---

struct Shared {
    report: Result<Report, String>,
    /// The session's stderr: what it did, how long each check took, the VMM's last words.
    log: String,
}

/// The part of the shared session's report that a test checks (running the session first if
/// no test has yet). Panics, showing the session's log, when that part could not be carried out.
pub fn seen<T: Debug>(part: impl FnOnce(&'static Report) -> &'static Result<T, String>) -> &'static T {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    thread_local!(static LOG_SHOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    let shared = SHARED.get_or_init(run_session);
    // Once a test: libtest shows it when the test fails.
    if !LOG_SHOWN.replace(true) {
        eprintln!("--- the shared agent VM's session\n{}", shared.log);
    }
    let report = shared.report.as_ref().unwrap_or_else(|e| panic!("the shared agent VM's session failed: {e}"));
    let part = part(report).as_ref().unwrap_or_else(|e| panic!("the check could not be carried out: {e}"));
    eprintln!("--- seen\n{part:#?}");
    part
}

fn run_session() -> Shared {
    let a = appliance();
    let plan = Plan {
        kernel: kernel(),
        initrd: a.initrd,
        appliance_root: a.root,
        // The emulated SVM of hack/nested-run resets two-vCPU guests under heavy I/O far more often.
        vcpus: if native_kvm().is_ok() { 2 } else { 1 },
        tar_mib: crate::tar_test_mib(),
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let argv: [&OsStr; 6] = [
        exe.as_ref(),
        "--exact".as_ref(),
        SESSION_TEST.as_ref(),
        "--ignored".as_ref(),
        "--nocapture".as_ref(),
        "--quiet".as_ref(),
    ];
    let plan = serde_json::to_string(&plan).expect("the plan as JSON");
    // The trees and disks live in /tmp: inside hack/nested-run that is the emulated machine's RAM.
    // Through its 9p share the tar transfer was ten times slower and the machine sometimes died.
    let nested = Nested { memory_mib: Some(4096), timeout_s: 2400 };
    let out = run_where_kvm_works(&argv, &[(PLAN_VAR, &plan)], nested);
    let stdout = text(&out.stdout);
    let report = match stdout.lines().find_map(|l| l.strip_prefix(REPORT_PREFIX)) {
        Some(json) => serde_json::from_str(json).map_err(|e| format!("unreadable report: {e}")),
        None => Err(format!("no report (status {:?}); its stdout:\n{stdout}", out.status.code())),
    };
    Shared { report, log: text(&out.stderr) }
}

// --- the session's own process ---

/// The plan, when this process is the session's.
pub fn plan_from_env() -> Option<Plan> {
    let json = std::env::var(PLAN_VAR).ok()?;
    Some(serde_json::from_str(&json).expect("an unreadable plan"))
}

/// Runs the session and prints its report.
pub fn run_and_report(plan: &Plan) {
    let report = run(plan);
    println!("{REPORT_PREFIX}{}", serde_json::to_string(&report).expect("the report as JSON"));
}

fn run(plan: &Plan) -> Report {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut vm = match Vm::boot(plan, dir.path()) {
        Ok(vm) => vm,
        Err(e) => {
            let why = format!("the VM did not come up: {e:#}");
            return Report {
                commands: Err(why.clone()),
                files: Err(why.clone()),
                file_system: Err(why.clone()),
                tar_round_trip: Err(why.clone()),
                end: Err(why),
            };
        }
    };
    let mut s = Session { vm: &vm, broken: None };
    let commands = s.check("commands", commands);
    let files = s.check("files", |vm| files(vm, dir.path()));
    let guest_fs = s.check("file system (guest)", file_system_in_guest);
    let tar_round_trip = s.check("tar round trip", |vm| tar_round_trip(vm, dir.path(), plan.tar_mib));
    let end = vm.power_off().map_err(|e| format!("{e:#}"));
    let file_system = guest_fs
        .and_then(|tools| file_system_on_host(tools, &disk_path(dir.path(), FS_DISK)).map_err(|e| format!("{e:#}")));
    Report { commands, files, file_system, tar_round_trip, end }
}

/// Runs the checks in turn; once the agent no longer answers, the rest fail without trying.
struct Session<'a> {
    vm: &'a Vm,
    broken: Option<String>,
}

impl Session<'_> {
    fn check<T>(&mut self, name: &str, f: impl FnOnce(&Vm) -> Result<T>) -> Result<T, String> {
        if let Some(why) = &self.broken {
            return Err(format!("not tried: {why}"));
        }
        let started = Instant::now();
        let result = f(self.vm).map_err(|e| format!("{e:#}"));
        let secs = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => eprintln!("agent-vm: {name}: done in {secs:.1} s"),
            Err(e) => {
                eprintln!("agent-vm: {name}: failed after {secs:.1} s: {e}");
                if !self.vm.answers() {
                    self.broken = Some(format!("the agent stopped answering in the {name} check"));
                }
            }
        }
        result
    }
}

fn disk_path(dir: &Path, serial: &str) -> PathBuf {
    dir.join(format!("{serial}.raw"))
}

/// The booted VM: microdib-vmm with the appliance, two scratch disks and a vsock socket.
struct Vm {
    dir: PathBuf,
    vmm: Child,
}

impl Vm {
    fn boot(plan: &Plan, dir: &Path) -> Result<Vm> {
        // Sparse scratch disks the guest finds by serial.
        let scratch = |serial: &str, size: u64| -> Result<String> {
            let path = disk_path(dir, serial);
            File::create(&path)?.set_len(size)?;
            Ok(format!("{},id={serial}", path.display()))
        };
        let vmm = Command::new(env!("CARGO_BIN_EXE_microdib-vmm"))
            .arg("--kernel")
            .arg(&plan.kernel)
            .arg("--initramfs")
            .arg(&plan.initrd)
            .args(["--disk", &scratch(FS_DISK, 1 << 30)?, "--disk", &scratch(TAR_DISK, 2 << 30)?])
            .arg("--disk")
            .arg(format!("{},ro,id={}", plan.appliance_root.display(), microdib_proto::APPLIANCE_DISK_SERIAL))
            .arg("--vsock")
            .arg(dir.join("vsock"))
            .args(["--vcpus", &plan.vcpus.to_string(), "--memory", "512M", "--timeout", "1800"])
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("console"))?)
            .stderr(File::create(dir.join("vmm.err"))?)
            .spawn()
            .context("cannot start microdib-vmm")?;
        let mut vm = Vm { dir: dir.to_owned(), vmm };
        vm.wait_for_agent()?;
        Ok(vm)
    }

    /// Waits for the agent's first answer, or for the VMM to end without one.
    fn wait_for_agent(&mut self) -> Result<()> {
        let mut ping = self.ctl(&["ping"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        loop {
            if let Some(status) = ping.try_wait()? {
                let mut stderr = String::new();
                ping.stderr.take().expect("piped").read_to_string(&mut stderr)?;
                ensure!(status.success(), "the agent never answered: {stderr}{}", self.last_words());
                return Ok(());
            }
            if let Some(status) = self.vmm.try_wait()? {
                let _ = ping.kill();
                let _ = ping.wait();
                bail!("microdib-vmm ended ({status}) before the agent answered{}", self.last_words());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// microdib-agent-ctl talking to this VM's agent (the first call waits for it to come up).
    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_microdib-agent-ctl"));
        c.arg("--uds").arg(self.dir.join("vsock")).args(["--wait", "120"]).args(args).stdin(Stdio::null());
        c
    }

    fn ctl_ran(&self, args: &[&str]) -> Result<Ran> {
        Ok(self.ctl(args).output().context("cannot run microdib-agent-ctl")?.into())
    }

    /// `ctl run [run_options] -- argv`.
    fn run_cmd(&self, run_options: &[&str], argv: &[&str]) -> Command {
        let mut args = vec!["run"];
        args.extend(run_options);
        args.push("--");
        args.extend(argv);
        self.ctl(&args)
    }

    fn run(&self, argv: &[&str]) -> Result<Ran> {
        Ok(self.run_cmd(&[], argv).output()?.into())
    }

    /// Runs a tool of the appliance, which has to succeed; its stdout.
    fn guest(&self, argv: &[&str]) -> Result<String> {
        let path = format!("PATH={}", microdib_proto::GUEST_PATH);
        let ran = Ran::from(self.run_cmd(&["--env", &path], argv).output()?);
        ensure!(ran.code == Some(0), "{argv:?} in the guest: {ran:?}");
        Ok(ran.stdout)
    }

    /// The guest's device for the disk with serial `serial`.
    fn guest_disk(&self, serial: &str) -> Result<String> {
        for name in ["vda", "vdb", "vdc", "vdd"] {
            let ran = self.ctl_ran(&["cat", &format!("/sys/block/{name}/serial")])?;
            if ran.code == Some(0) && ran.stdout.trim() == serial {
                return Ok(format!("/dev/{name}"));
            }
        }
        bail!("the guest has no disk with serial {serial}")
    }

    /// `ctl write path mode` with `data` on its stdin.
    fn write_file(&self, path: &str, mode: &str, data: &[u8]) -> Result<()> {
        let mut child = self.ctl(&["write", path, mode]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        child.stdin.take().expect("piped").write_all(data)?;
        let ran = Ran::from(child.wait_with_output()?);
        ensure!(ran.code == Some(0), "writing {path}: {ran:?}");
        Ok(())
    }

    /// `tar -C src [tar_options] -cf - . | ctl put guest_dir`.
    fn put_tree(&self, src: &Path, tar_options: &[&str], guest_dir: &str) -> Result<()> {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(src)
            .args(tar_options)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run tar")?;
        let put = self.ctl(&["put", guest_dir]).stdin(tar.stdout.take().expect("piped")).output()?;
        let tar = tar.wait()?;
        ensure!(tar.success() && put.status.success(), "put {guest_dir}: tar {tar}, {:?}", Ran::from(put));
        Ok(())
    }

    /// `ctl get guest_dir | tar -C dest [tar_options] -xf -`.
    fn get_tree(&self, guest_dir: &str, dest: &Path, tar_options: &[&str]) -> Result<()> {
        fs::create_dir_all(dest)?;
        let mut get = self.ctl(&["get", guest_dir]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let tar = Command::new("tar")
            .arg("-C")
            .arg(dest)
            .args(tar_options)
            .args(["-xf", "-"])
            .stdin(get.stdout.take().expect("piped"))
            .output()
            .context("cannot run tar")?;
        let get = get.wait_with_output()?;
        ensure!(
            tar.status.success() && get.status.success(),
            "get {guest_dir}: {:?}, tar {:?}",
            Ran::from(get),
            Ran::from(tar)
        );
        Ok(())
    }

    /// Whether the agent still answers a ping within a few seconds.
    fn answers(&self) -> bool {
        let mut c = Command::new(env!("CARGO_BIN_EXE_microdib-agent-ctl"));
        c.arg("--uds").arg(self.dir.join("vsock")).args(["--wait", "10", "ping"]);
        c.output().is_ok_and(|o| o.status.success())
    }

    /// The VMM's stderr and the end of the guest console, for a VM that did not come up.
    fn last_words(&self) -> String {
        let read = |name| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let console = read("console");
        let lines: Vec<&str> = console.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("\n--- microdib-vmm's stderr\n{}--- guest console (end)\n{tail}", read("vmm.err"))
    }

    /// Tells the agent to power off (unless the VM has already ended) and waits for the VMM to
    /// end, killing it after a minute.
    fn power_off(&mut self) -> Result<VmEnd> {
        let poweroff = match self.vmm.try_wait()? {
            None => Some(self.ctl_ran(&["poweroff"])?),
            Some(_) => None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let vmm = loop {
            if let Some(status) = self.vmm.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.vmm.kill();
                break self.vmm.wait()?;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let vmm_stderr = fs::read_to_string(self.dir.join("vmm.err"))?;
        // On the session's stderr too: a platform fault is recognised there (run_where_kvm_works).
        eprintln!("--- microdib-vmm's stderr\n{vmm_stderr}");
        let console = fs::read_to_string(self.dir.join("console"))?;
        Ok(VmEnd { poweroff, vmm_code: vmm.code(), vmm_stderr, console })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.vmm.try_wait() {
            let _ = self.vmm.kill();
            let _ = self.vmm.wait();
        }
    }
}

// --- the checks ---

fn commands(vm: &Vm) -> Result<Commands> {
    let ping = vm.ctl_ran(&["ping"])?;
    let streamed = streamed(vm.run_cmd(
        &["--env", "GREETING=hello"],
        &["sh", "-c", "echo \"out $GREETING\"; echo err >&2; sleep 2; echo late; exit 7"],
    ))?;
    let env_after = vm.run(&["env"])?;
    let killed = vm.run(&["sh", "-c", "kill -9 $$"])?;
    let missing = vm.run(&["/no/such/program"])?;
    let started = Instant::now();
    let daemon = vm.run(&["sh", "-c", "sleep 100 & echo daemon-started"])?;
    let daemon_seconds = started.elapsed().as_secs_f64();
    // Two commands that can only both finish if they run at the same time, on two connections:
    // each waits (up to a minute) for the other's mark in the guest's /tmp.
    let first = format!("touch /tmp/first-runs; {}", until_exists("/tmp/second-ran", "echo first-done"));
    let first = vm.run_cmd(&[], &["sh", "-c", &first]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let second = vm.run(&["sh", "-c", &until_exists("/tmp/first-runs", "touch /tmp/second-ran; echo second-done")])?;
    let first = first.wait_with_output()?.into();
    Ok(Commands { ping, streamed, env_after, killed, missing, daemon, daemon_seconds, first, second })
}

/// A guest shell command: `then` once `path` exists, checked every 0.1 s for a minute (exit 1).
fn until_exists(path: &str, then: &str) -> String {
    format!("for i in $(seq 600); do if [ -e {path} ]; then {then}; exit; fi; sleep 0.1; done; exit 1")
}

/// Runs `cmd`, noting when each line of its stdout arrives.
fn streamed(mut cmd: Command) -> Result<Streamed> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        lines.push((started.elapsed().as_secs_f64(), line?));
    }
    let mut stderr = String::new();
    child.stderr.take().expect("piped").read_to_string(&mut stderr)?;
    Ok(Streamed { lines, stderr, code: child.wait()?.code() })
}

fn files(vm: &Vm, dir: &Path) -> Result<Files> {
    let src = dir.join("files-src");
    fs::create_dir_all(src.join("sub/deep"))?;
    fs::write(src.join("a.txt"), "hello\n")?;
    fs::write(src.join("sub/big.bin"), random_bytes(5_000_000)?)?;
    fs::set_permissions(src.join("sub/big.bin"), fs::Permissions::from_mode(0o751))?;
    std::os::unix::fs::symlink("a.txt", src.join("link"))?;
    fs::hard_link(src.join("a.txt"), src.join("hard"))?;
    vm.put_tree(&src, &[], "/tmp/tree")?;
    vm.write_file("/tmp/tree/new", "600", b"file-body")?;
    let cat_written = vm.ctl_ran(&["cat", "/tmp/tree/new"])?;
    let cat_device = vm.ctl_ran(&["cat", "/dev/zero"])?;
    let back = dir.join("files-back");
    vm.get_tree("/tmp/tree", &back, &[])?;
    let mode = |p: &str| -> Result<u32> { Ok(fs::symlink_metadata(back.join(p))?.permissions().mode() & 0o7777) };
    let written_file_mode = mode("new")?;
    // The rest of the tree is compared with what was put in.
    fs::remove_file(back.join("new"))?;
    Ok(Files {
        cat_written,
        cat_device,
        changed_files: changed_files(&src, &back)?,
        big_file_mode: mode("sub/big.bin")?,
        symlink_target: fs::read_link(back.join("link"))?.display().to_string(),
        hard_links: fs::symlink_metadata(back.join("hard"))?.nlink(),
        written_file_mode,
    })
}

/// The relative paths of regular files that differ between the trees `a` and `b`, or are in
/// only one of them.
fn changed_files(a: &Path, b: &Path) -> Result<Vec<String>> {
    let (in_a, in_b) = (regular_files(a)?, regular_files(b)?);
    let mut changed = Vec::new();
    for path in in_a.union(&in_b) {
        let same = in_a.contains(path) && in_b.contains(path) && fs::read(a.join(path))? == fs::read(b.join(path))?;
        if !same {
            changed.push(path.display().to_string());
        }
    }
    Ok(changed)
}

/// The regular files under `root`, relative to it.
fn regular_files(root: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                found.insert(entry.path().strip_prefix(root)?.to_owned());
            }
        }
    }
    Ok(found)
}

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0; n];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// The appliance's tools, seen in the guest once the file system is made.
struct GuestTools {
    python: Ran,
    tar_version: Ran,
    awk: Ran,
}

fn file_system_in_guest(vm: &Vm) -> Result<GuestTools> {
    let disk = vm.guest_disk(FS_DISK)?;
    vm.guest(&["mkfs.ext4", "-q", "-L", "test", &disk])?;
    vm.guest(&["mkdir", "-p", "/mnt/fs"])?;
    vm.guest(&["mount", &disk, "/mnt/fs"])?;
    vm.write_file("/mnt/fs/FILE", "644", b"written by microdib\n")?;
    vm.guest(&["umount", "/mnt/fs"])?;
    let tool = |argv: &[&str]| vm.run_cmd(&["--env", &format!("PATH={}", microdib_proto::GUEST_PATH)], argv).output();
    Ok(GuestTools {
        python: tool(&["python3", "-c", "print('python=ok')"])?.into(),
        tar_version: tool(&["tar", "--version"])?.into(),
        awk: tool(&["awk", "BEGIN { print \"awk=ok\" }"])?.into(),
    })
}

/// What the host finds on the file system disk once the VM has ended.
fn file_system_on_host(tools: GuestTools, disk: &Path) -> Result<FileSystem> {
    let host = |program: &str, args: &[&OsStr]| -> Result<String> {
        let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
        ensure!(out.status.success(), "{program} {args:?}: {}", text(&out.stderr));
        Ok(text(&out.stdout))
    };
    let file_on_host = host("debugfs", &["-R".as_ref(), "cat /FILE".as_ref(), disk.as_ref()])?;
    let label = host("e2label", &[disk.as_ref()])?.trim().to_owned();
    let allocated_kib = fs::metadata(disk)?.blocks() / 2;
    let GuestTools { python, tar_version, awk } = tools;
    Ok(FileSystem { python, tar_version, awk, file_on_host, label, allocated_kib })
}

fn tar_round_trip(vm: &Vm, dir: &Path, mib: u64) -> Result<TarRoundTrip> {
    let (src, back) = (dir.join("tar-src"), dir.join("tar-back"));
    let started = Instant::now();
    let source_mib = awkward_tree(&src, mib)?;
    eprintln!("agent-vm: tar round trip: tree of {mib} MiB made in {:.1} s", started.elapsed().as_secs_f64());
    let disk = vm.guest_disk(TAR_DISK)?;
    vm.guest(&["mkfs.ext4", "-q", &disk])?;
    vm.guest(&["mkdir", "-p", "/mnt/tar"])?;
    vm.guest(&["mount", &disk, "/mnt/tar"])?;
    let keep = ["--xattrs", "--xattrs-include=*", "--numeric-owner", "--sparse"];
    let started = Instant::now();
    vm.put_tree(&src, &keep, "/mnt/tar/tree")?;
    let in_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    vm.get_tree("/mnt/tar/tree", &back, &[&keep[..], &["--same-permissions"]].concat())?;
    let out_seconds = started.elapsed().as_secs_f64();
    vm.guest(&["umount", "/mnt/tar"])?;
    let started = Instant::now();
    let (sent, got) = (tree_manifest(&src)?, tree_manifest(&back)?);
    eprintln!(
        "agent-vm: tar round trip: in {in_seconds:.1} s, out {out_seconds:.1} s, listings compared in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (sent_lines, got_lines): (BTreeSet<&str>, BTreeSet<&str>) = (sent.lines().collect(), got.lines().collect());
    let manifest_diff = (sent_lines.difference(&got_lines).map(|l| format!("-{l}")))
        .chain(got_lines.difference(&sent_lines).map(|l| format!("+{l}")))
        .collect();
    Ok(TarRoundTrip { source_mib, in_seconds, out_seconds, entries: sent.lines().count(), manifest_diff })
}

/// Makes the tree the tar round trip sends under `src`: seven eighths of `mib` in 7 large files,
/// one eighth in 1024 small ones, plus the awkward kinds of entry. Returns the MiB in big/ and small/.
fn awkward_tree(src: &Path, mib: u64) -> Result<u64> {
    let big = mib * 1024 * 1024 / 8;
    let small = big / 1024;
    fs::create_dir_all(src.join("big"))?;
    fs::create_dir_all(src.join("small/a/b"))?;
    let mut urandom = File::open("/dev/urandom")?;
    for i in 1..=7 {
        std::io::copy(&mut (&mut urandom).take(big), &mut File::create(src.join(format!("big/f{i}")))?)?;
    }
    for i in 0..1024 {
        std::io::copy(&mut (&mut urandom).take(small), &mut File::create(src.join(format!("small/a/b/part-{i:04}")))?)?;
    }
    let sparse = File::create(src.join("sparse"))?;
    sparse.set_len(100 << 20)?;
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (100 << 20) - 3)?;
    fs::hard_link(src.join("big/f1"), src.join("hardlink-to-f1"))?;
    std::os::unix::fs::symlink("big/f2", src.join("symlink-to-f2"))?;
    for (path, mode) in [("big/f3", 0o4755), ("big/f4", 0o600), ("small", 0o1777)] {
        fs::set_permissions(src.join(path), fs::Permissions::from_mode(mode))?;
    }
    // Owners other than our own need root (always the case when nested).
    let _ = std::os::unix::fs::chown(src.join("big/f5"), Some(1234), Some(5678));
    let _ = std::os::unix::fs::chown(src.join("small/a"), Some(0), Some(100));
    set_xattr(&src.join("big/f6"), "user.microdib", b"xattr-value")?;
    Ok((bytes_under(&src.join("big"))? + bytes_under(&src.join("small"))?) / (1024 * 1024))
}

/// What the regular files under `dir` hold.
fn bytes_under(dir: &Path) -> Result<u64> {
    regular_files(dir)?.iter().map(|f| Ok(fs::metadata(dir.join(f))?.len())).sum()
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (path_c, name_c) = (CString::new(path.as_os_str().as_bytes())?, CString::new(name)?);
    // SAFETY: both strings are NUL-terminated and outlive the call; value's pointer and length match.
    let rc = unsafe { libc::setxattr(path_c.as_ptr(), name_c.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    ensure!(rc == 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
    Ok(())
}

/// `microdib-dev tree-manifest`'s listing of `dir`: one line an entry, with everything a copy
/// must keep.
fn tree_manifest(dir: &Path) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_microdib-dev")).arg("tree-manifest").arg(dir).output()?;
    ensure!(out.status.success(), "microdib-dev tree-manifest {}: {}", dir.display(), text(&out.stderr));
    Ok(text(&out.stdout))
}
