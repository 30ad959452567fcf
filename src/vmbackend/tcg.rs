//! The `tcg` backend: `qemu-system-x86_64 -accel tcg -M microvm` as a child process, for hosts
//! whose KVM cannot run the guest. Only the build VM is emulated; the agent is reached through
//! our own vsock muxer, served to qemu's `vhost-user-vsock-device` from this process.
//!
//! qemu is a child like passt: its own process group (a terminal's Ctrl-C reaches microdib,
//! which stops it), `PR_SET_PDEATHSIG` (gone with microdib, even after SIGKILL), stopped on
//! every exit path, its stderr in a log whose tail goes into error messages.
//!
//! TCG is no security boundary (qemu's own policy), so qemu holds as little as it can: its files
//! handed to it open (disks and console through `-add-fd`, the vhost-user socket connected, the
//! kernel and initrd as memfd copies), so it needs no path of ours; an empty environment; its
//! seccomp sandbox; and when microdib is root, an unprivileged user, set before exec.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::child;
use vmm::devices::virtio::net::DEFAULT_MAC;
use vmm::devices::virtio::vsock::vhost_user::VhostUserVsock;

use super::{file_tail, DiskFormat, RunningVm, StopSwitch, VmDisk, VmEnd, VmError, VmSpec, GUEST_CID};

/// How long qemu gets to close its disks after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// The kernel's words for a panic, as printed on the console.
const PANIC_MARK: &str = "Kernel panic - not syncing";
/// The guest kernel's command line under any qemu microvm. microvm has no i8042, so the guest
/// resets by triple fault (`reboot=t`), which `-no-reboot` turns into qemu's exit; with
/// `reboot=k` the kernel falls back to a BIOS restart that qemu never sees.
pub const QEMU_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet";

/// The guest kernel's command line under TCG, before the agent's words: `QEMU_CMDLINE` and the
/// host's TSC rate. (hack/ boots its qemu guests with it through `microdib-dev kernel-cmdline`.)
pub fn kernel_cmdline() -> String {
    let mut cmdline = QEMU_CMDLINE.to_owned();
    if let Some(khz) = host_tsc_khz() {
        // Calibrating the TSC against the emulated PIT goes wrong on a busy host (the guest
        // then falls back to jiffies); TCG's TSC runs at the host's rate, so say that rate.
        cmdline.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    cmdline
}

/// `$MICRODIB_QEMU`, else qemu-system-x86_64 from PATH.
pub fn find_qemu() -> Result<PathBuf, VmError> {
    let name = std::env::var("MICRODIB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    crate::host::which(&name).ok_or(VmError::QemuMissing)
}

/// What the reaper and the stop switch share.
struct Child {
    pid: libc::pid_t,
    /// Set once the process is reaped: its pid may then belong to someone else.
    reaped: Mutex<bool>,
    /// The first stop request (a signal number, 0 for microdib's own).
    stop_asked: Mutex<Option<i32>>,
    end: Mutex<Option<VmEnd>>,
    ended: Condvar,
    console: PathBuf,
    log: PathBuf,
}

impl Child {
    /// Signals qemu's process group, unless qemu is already reaped.
    fn kill(&self, sig: libc::c_int) {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if !*reaped {
            // SAFETY: kill(2) on the process group our unreaped child leads (held by `reaped`).
            unsafe {
                libc::kill(-self.pid, sig);
            }
        }
    }

    fn set_end(&self, end: VmEnd) {
        let mut e = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(end);
        }
        self.ended.notify_all();
    }

    fn wait_end(&self, wait: Duration) -> Option<VmEnd> {
        let deadline = Instant::now() + wait;
        let mut e = self.end.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(end) = e.as_ref() {
                return Some(end.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            e = self.ended.wait_timeout(e, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Waits for qemu to exit, reaps it and says how the VM ended.
    fn reap(&self) {
        // SAFETY: siginfo_t is plain data; waitid with WNOWAIT only observes our own child, so
        // the pid stays ours (and `kill` safe) until it is reaped below under the lock.
        let observed = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            loop {
                let r = libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT);
                if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break r == 0;
                }
            }
        };
        let mut status: libc::c_int = 0;
        {
            let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: waitpid on our own child. It has exited when `observed`; otherwise WNOHANG
            // keeps this from blocking while the lock is held.
            let r = unsafe { libc::waitpid(self.pid, &mut status, if observed { 0 } else { libc::WNOHANG }) };
            *reaped = true;
            if r != self.pid {
                self.set_end(VmEnd::Crashed("lost track of qemu".into()));
                return;
            }
        }
        let stopped = *self.stop_asked.lock().unwrap_or_else(|p| p.into_inner());
        let status = std::process::ExitStatus::from_raw(status);
        let end = match (stopped, status.code(), status.signal()) {
            (Some(sig), _, _) => VmEnd::Interrupted(sig),
            (None, Some(0), _) if console_says_panic(&self.console) => VmEnd::Panic,
            // -no-reboot: the guest's reset (reboot=t) ends qemu with status 0.
            (None, Some(0), _) => VmEnd::Shutdown,
            (None, Some(code), _) => VmEnd::Crashed(format!("qemu exited with status {code}")),
            (None, None, Some(sig)) => VmEnd::Crashed(format!("qemu was killed by signal {sig}")),
            (None, None, None) => VmEnd::Crashed("qemu ended".into()),
        };
        tracing::info!("qemu (pid {}) ended: {end}; its log is {}", self.pid, self.log.display());
        self.set_end(end);
    }
}

fn console_says_panic(console: &Path) -> bool {
    file_tail(console, 64 * 1024).contains(PANIC_MARK)
}

struct ChildSwitch(Arc<Child>);

impl StopSwitch for ChildSwitch {
    /// SIGTERM lets qemu close its disks (a user's qcow2 helper drive among them); a qemu still
    /// there after `TERM_GRACE` is killed, whoever asked and whatever the main thread is doing.
    fn stop(&self, signal: i32) {
        let first = {
            let mut asked = self.0.stop_asked.lock().unwrap_or_else(|p| p.into_inner());
            let first = asked.is_none();
            asked.get_or_insert(signal);
            first
        };
        self.0.kill(libc::SIGTERM);
        if first {
            let child = self.0.clone();
            let _ = std::thread::Builder::new().name("qemu-stop".into()).spawn(move || {
                if child.wait_end(TERM_GRACE).is_none() {
                    child.kill(libc::SIGKILL);
                }
            });
        }
    }
}

/// A running qemu and the vhost-user vsock device it uses.
pub struct TcgVm {
    child: Arc<Child>,
    reaper: Option<JoinHandle<()>>,
    /// Dropped after qemu is gone.
    vsock: Option<VhostUserVsock>,
    run_as: RunAs,
    /// Copies what qemu's console socket carries into the bounded console file; ends with qemu.
    console_reader: Option<JoinHandle<()>>,
}

impl TcgVm {
    pub fn start(qemu: &Path, spec: &VmSpec, agent_words: &str, net: Option<UnixStream>) -> Result<TcgVm, VmError> {
        let mut cmdline = kernel_cmdline();
        cmdline.push(' ');
        cmdline.push_str(agent_words);
        let frontend = spec.workdir.join("vhost-user-vsock.sock");
        let vsock = VhostUserVsock::start(GUEST_CID, &frontend, &spec.vsock)
            .map_err(|e| VmError::Setup(format!("vhost-user vsock: {}", super::error_chain(&e))))?;
        let log = spec.workdir.join("qemu.log");
        let stderr = File::create(&log).map_err(|e| VmError::Setup(format!("cannot create {}: {e}", log.display())))?;
        let net = net.map(above_stdio).transpose().map_err(|e| VmError::Setup(format!("passt socket: {e}")))?;
        let net_fd = net.as_ref().map(AsRawFd::as_raw_fd);
        let run_as = RunAs::for_this_process()?;
        let handed = Handed::open(spec, &frontend)?;
        let mut keep = handed.raw_fds();
        keep.extend(net_fd);
        let mut cmd = Command::new(qemu);
        cmd.args(qemu_args(spec, cmdline.trim_end(), &handed.files, net_fd))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        cmd.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        let ids = run_as.ids();
        // SAFETY: the closure only makes the async-signal-safe calls of `vmm::child`.
        unsafe {
            // qemu inherits its stdio, the passt socket and the files it is handed, nothing else
            // of ours (guest memory and eventfds from the vhost-user frontend are not
            // close-on-exec). Credentials first: changing them clears the parent-death signal.
            cmd.pre_exec(move || {
                if let Some((uid, gid)) = ids {
                    child::drop_to(uid, gid)?;
                }
                child::prepare_helper_keeping(parent, &keep)
            });
        }
        let spawned = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmError::QemuMissing,
            _ => VmError::Setup(format!("cannot start {}: {e}", qemu.display())),
        })?;
        drop(net); // qemu has its copy of the passt socket
                   // qemu has its copies of the files it was handed.
        let Handed { fds, console, .. } = handed;
        drop(fds);
        let console_reader = Some(keep_console(console, &spec.console)?);
        let child = Arc::new(Child {
            pid: spawned.id() as libc::pid_t,
            reaped: Mutex::new(false),
            stop_asked: Mutex::new(None),
            end: Mutex::new(None),
            ended: Condvar::new(),
            console: spec.console.clone(),
            log,
        });
        // The reaper owns the waiting; std's handle is not used to wait.
        drop(spawned);
        let c = child.clone();
        let reaper = std::thread::Builder::new().name("qemu-reaper".into()).spawn(move || c.reap());
        let reaper = match reaper {
            Ok(r) => r,
            Err(e) => {
                child.kill(libc::SIGKILL);
                // SAFETY: waitpid on our own child, which no one else waits for.
                unsafe { libc::waitpid(child.pid, std::ptr::null_mut(), 0) };
                return Err(VmError::Setup(format!("cannot start the qemu reaper thread: {e}")));
            }
        };
        tracing::info!("qemu started (pid {}): {}", child.pid, spec.workdir.display());
        Ok(TcgVm { child, reaper: Some(reaper), vsock: Some(vsock), run_as, console_reader })
    }
}

impl RunningVm for TcgVm {
    fn stop_switch(&self) -> Arc<dyn StopSwitch> {
        Arc::new(ChildSwitch(self.child.clone()))
    }

    fn ended(&self) -> Option<VmEnd> {
        let end = self.child.end.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // qemu carries on without its vhost-user device, but the agent is out of reach then.
        // (When qemu itself died, its end comes first: the reaper gets a moment to say how.)
        end.or_else(|| {
            let why = self.vsock.as_ref()?.ended()?;
            self.child
                .wait_end(Duration::from_secs(1))
                .or(Some(VmEnd::Crashed(format!("the build VM's vsock device stopped ({why})"))))
        })
    }

    fn wait_end(&mut self, wait: Duration) -> VmEnd {
        match self.child.wait_end(wait) {
            Some(end) => {
                self.stop_now();
                end
            }
            None => {
                self.stop_now();
                VmEnd::Timeout(wait)
            }
        }
    }

    fn stop_now(&mut self) {
        if self.child.wait_end(Duration::ZERO).is_none() {
            ChildSwitch(self.child.clone()).stop(0);
        }
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
        // The frontend is gone: the vsock device's threads end.
        self.vsock.take();
        if let Some(r) = self.console_reader.take() {
            let _ = r.join();
        }
    }

    fn pid(&self) -> Option<u32> {
        u32::try_from(self.child.pid).ok()
    }

    fn vmm_messages(&self) -> String {
        file_tail(&self.child.log, 8 * 1024)
    }

    fn emulator_user(&self) -> Option<String> {
        Some(self.run_as.describe())
    }
}

/// Who qemu runs as: the caller, or when that is root, an unprivileged user.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunAs {
    Caller,
    User { name: String, uid: libc::uid_t, gid: libc::gid_t },
}

/// The user the .deb makes for qemu; elsewhere `nobody`.
const QEMU_USERS: [&str; 2] = ["microdib-qemu", "nobody"];

impl RunAs {
    fn for_this_process() -> Result<RunAs, VmError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs::Caller);
        }
        QEMU_USERS
            .iter()
            .find_map(|name| user_ids(name).map(|(uid, gid)| RunAs::User { name: (*name).to_owned(), uid, gid }))
            .ok_or_else(|| {
                VmError::Setup("no unprivileged user to run qemu as (neither microdib-qemu nor nobody)".into())
            })
    }

    fn ids(&self) -> Option<(libc::uid_t, libc::gid_t)> {
        match self {
            RunAs::Caller => None,
            RunAs::User { uid, gid, .. } => Some((*uid, *gid)),
        }
    }

    fn describe(&self) -> String {
        let who = match self {
            RunAs::Caller => "this user".to_owned(),
            RunAs::User { name, uid, .. } => format!("{name} (uid {uid})"),
        };
        format!("qemu runs as {who} with an empty environment, in its seccomp sandbox, holding only the files it was handed")
    }
}

/// What qemu's command line names for each file it opens: the descriptors a build hands it (or
/// paths, in the tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct QemuFiles {
    kernel: String,
    initrd: String,
    /// The console's chardev: a file, or a socket microdib reads (`console::ConsoleLog`).
    console: String,
    /// Each disk's `file=`, in `VmSpec::all_disks` order.
    disks: Vec<String>,
    /// The vhost-user chardev's `path=...` or `fd=N`.
    vsock: String,
    /// `-add-fd` values: the descriptor sets the paths above name.
    add_fds: Vec<String>,
}

#[cfg(test)]
impl QemuFiles {
    /// Every file by its path, as the command-line tests read them.
    fn by_path(spec: &VmSpec, vsock_socket: &Path) -> QemuFiles {
        QemuFiles {
            kernel: spec.kernel.to_string_lossy().into_owned(),
            initrd: spec.initrd.to_string_lossy().into_owned(),
            console: format!("file,id=console,path={}", opt_value(&spec.console)),
            disks: spec.all_disks().iter().map(|d| opt_value(&d.path)).collect(),
            vsock: format!("path={}", opt_value(vsock_socket)),
            add_fds: Vec::new(),
        }
    }
}

/// The files a build's qemu gets open, and how its command line names them.
struct Handed {
    fds: Vec<std::os::fd::OwnedFd>,
    files: QemuFiles,
    /// Our end of the console's socket.
    console: UnixStream,
}

impl Handed {
    /// Opens each disk (read-only, and read-write unless it is read-only: qemu's block layer
    /// opens read-only first, then reopens), the console, a connection to the vhost-user
    /// socket, and memfd copies of the kernel and initrd (read through `/proc/self/fd`, which
    /// checks the memfd's permissions, not the path's).
    fn open(spec: &VmSpec, vsock_socket: &Path) -> Result<Handed, VmError> {
        let setup =
            |what: &Path, e: std::io::Error| VmError::Setup(format!("cannot open {} for qemu: {e}", what.display()));
        let (ours, qemus) = UnixStream::pair().map_err(|e| setup(&spec.console, e))?;
        let mut h = Handed { fds: Vec::new(), files: QemuFiles::default(), console: ours };
        h.files.console = format!("socket,id=console,fd={}", h.keep(qemus.into()));
        for (set, d) in spec.all_disks().iter().enumerate() {
            let mut modes = vec![false];
            if !d.read_only {
                modes.push(true);
            }
            for write in modes {
                let f = File::options().read(true).write(write).open(&d.path).map_err(|e| setup(&d.path, e))?;
                h.add_to_set(f.into(), set);
            }
            h.files.disks.push(format!("/dev/fdset/{set}"));
        }
        let vsock = UnixStream::connect(vsock_socket).map_err(|e| setup(vsock_socket, e))?;
        h.files.vsock = format!("fd={}", h.keep(vsock.into()));
        let kernel = memfd_copy(&spec.kernel).map_err(|e| setup(&spec.kernel, e))?;
        h.files.kernel = format!("/proc/self/fd/{}", h.keep(kernel));
        let initrd = memfd_copy(&spec.initrd).map_err(|e| setup(&spec.initrd, e))?;
        h.files.initrd = format!("/proc/self/fd/{}", h.keep(initrd));
        Ok(h)
    }

    fn keep(&mut self, fd: std::os::fd::OwnedFd) -> RawFd {
        let raw = fd.as_raw_fd();
        self.fds.push(fd);
        raw
    }

    fn add_to_set(&mut self, fd: std::os::fd::OwnedFd, set: usize) {
        let raw = self.keep(fd);
        self.files.add_fds.push(format!("fd={raw},set={set}"));
    }

    fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// A thread copying the console socket's bytes into the bounded console file at `path` until
/// qemu closes its end.
fn keep_console(mut from: UnixStream, path: &Path) -> Result<JoinHandle<()>, VmError> {
    let mut log = super::console::ConsoleLog::create(path)
        .map_err(|e| VmError::Setup(format!("cannot create {}: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("qemu-console".into())
        .spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if log.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
        .map_err(|e| VmError::Setup(format!("cannot start the console thread: {e}")))
}

/// A sealed-size memfd holding `path`'s bytes.
fn memfd_copy(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let name = c"microdib-boot";
    // SAFETY: memfd_create with a valid name; the descriptor is owned from here on.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor of ours.
    let mut memfd = unsafe { File::from_raw_fd(fd) };
    std::io::copy(&mut File::open(path)?, &mut memfd)?;
    Ok(memfd.into())
}

/// The uid and gid of the user `name`, if there is one.
fn user_ids(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam reads the password database; the entry is read at once, before any
    // other call could reuse it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    // SAFETY: non-null: a valid entry.
    (!pw.is_null()).then(|| unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

impl Drop for TcgVm {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The host's TSC rate in kHz, measured against CLOCK_MONOTONIC over 20 ms (TCG's guest TSC
/// runs at it). "cpu MHz" in /proc/cpuinfo is the current core clock, not the TSC's, on hosts
/// that scale their frequency.
#[cfg(target_arch = "x86_64")]
fn host_tsc_khz() -> Option<u64> {
    use std::arch::x86_64::_rdtsc;
    let t0 = Instant::now();
    // SAFETY: RDTSC reads a counter; every x86_64 CPU has it.
    let c0 = unsafe { _rdtsc() };
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: as above.
    let c1 = unsafe { _rdtsc() };
    tsc_khz(c1.wrapping_sub(c0), t0.elapsed())
}

#[cfg(not(target_arch = "x86_64"))]
fn host_tsc_khz() -> Option<u64> {
    None
}

/// kHz from a cycle count over `elapsed`, rounded to 1 MHz; None when it makes no sense.
fn tsc_khz(cycles: u64, elapsed: Duration) -> Option<u64> {
    let us = u64::try_from(elapsed.as_micros()).ok().filter(|&us| us > 0)?;
    let khz = cycles.checked_mul(1000)? / us;
    let khz = (khz + 500) / 1000 * 1000;
    (100_000..=20_000_000).contains(&khz).then_some(khz)
}

/// The socket itself, or a copy of it above the standard descriptors: setting up qemu's stdio
/// must not overwrite it (microdib may have been started with one of them closed).
fn above_stdio(socket: UnixStream) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    if socket.as_raw_fd() > 2 {
        return Ok(socket);
    }
    // SAFETY: fcntl on a descriptor we own; the new one is owned by the returned stream.
    let moved = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `moved` is a fresh descriptor nothing else owns.
    Ok(unsafe { UnixStream::from_raw_fd(moved) })
}

/// A value inside a qemu option list: commas are doubled.
fn opt_value(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// One `-drive` + `-device virtio-blk-device` pair. The format is always named (qemu never
/// probes); throwaway disks skip flushes; discards punch holes so the files stay sparse.
fn disk_args(i: usize, d: &VmDisk, file: &str) -> [String; 4] {
    let format = match d.format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    };
    let cache = if d.scratch { "unsafe" } else { "writeback" };
    let mut drive =
        format!("file={file},if=none,id=disk{i},format={format},cache={cache},discard=unmap,detect-zeroes=unmap");
    if d.read_only {
        drive.push_str(",readonly=on");
    }
    let device = format!("virtio-blk-device,drive=disk{i},serial={}", d.serial.replace(',', ",,"));
    ["-drive".into(), drive, "-device".into(), device]
}

/// qemu's command line for `spec`, naming its files as `files` says.
fn qemu_args(spec: &VmSpec, cmdline: &str, files: &QemuFiles, net_fd: Option<RawFd>) -> Vec<String> {
    let machine = Machine {
        kernel: &files.kernel,
        initrd: &files.initrd,
        cmdline,
        mib: spec.memory_mib,
        vcpus: spec.vcpus,
        console: &files.console,
    };
    let mut a: Vec<String> = files.add_fds.iter().flat_map(|f| ["-add-fd".to_owned(), f.clone()]).collect();
    a.extend(machine.args());
    for (i, (d, file)) in spec.all_disks().iter().zip(&files.disks).enumerate() {
        a.extend(disk_args(i, d, file));
    }
    a.extend([
        "-chardev".into(),
        format!("socket,id=vsock,{}", files.vsock),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
    ]);
    a.extend(rng_args());
    if let Some(fd) = net_fd {
        let mac = DEFAULT_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        a.extend([
            "-netdev".into(),
            format!("stream,id=net,addr.type=fd,addr.str={fd}"),
            "-device".into(),
            format!("virtio-net-device,netdev=net,mac={mac}"),
        ]);
    }
    a
}

/// The build VM's machine with one disk and neither vsock (it needs our vhost-user backend) nor
/// network: what hack/bench-accel boots, so that it measures the machine microdib starts.
pub fn bench_qemu_args(
    kernel: &Path,
    initrd: &Path,
    memory_mib: u64,
    vcpus: u8,
    console: &Path,
    disk: &VmDisk,
) -> Vec<String> {
    let cmdline = kernel_cmdline();
    let (kernel, initrd, console) = (
        kernel.to_string_lossy().into_owned(),
        initrd.to_string_lossy().into_owned(),
        format!("file,id=console,path={}", opt_value(console)),
    );
    let machine =
        Machine { kernel: &kernel, initrd: &initrd, cmdline: &cmdline, mib: memory_mib, vcpus, console: &console };
    let mut a = machine.args();
    a.extend(disk_args(0, disk, &opt_value(&disk.path)));
    a.extend(rng_args());
    a
}

/// The machine: microvm under TCG with its memory, CPUs, kernel and console.
struct Machine<'a> {
    kernel: &'a str,
    initrd: &'a str,
    cmdline: &'a str,
    mib: u64,
    vcpus: u8,
    /// The console's chardev.
    console: &'a str,
}

impl Machine<'_> {
    fn args(&self) -> Vec<String> {
        let Machine { kernel, initrd, cmdline, mib, vcpus, console } = *self;
        vec![
            "-name".into(),
            "microdib-build".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            // The guest is hostile and TCG is a large surface: qemu may not spawn, setuid or use
            // obsolete system calls.
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
            "-display".into(),
            "none".into(),
            // The guest's reset (reboot=t) ends qemu, as our own VMM ends on its i8042 reset.
            "-no-reboot".into(),
            "-accel".into(),
            "tcg".into(),
            // vhost-user needs the guest memory in a shareable file; the RTC gives the guest the time.
            "-M".into(),
            "microvm,acpi=off,rtc=on,memory-backend=mem".into(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
            "-m".into(),
            format!("{mib}M"),
            "-smp".into(),
            vcpus.max(1).to_string(),
            "-kernel".into(),
            kernel.to_owned(),
            "-initrd".into(),
            initrd.to_owned(),
            "-append".into(),
            cmdline.to_owned(),
            "-chardev".into(),
            console.to_owned(),
            "-serial".into(),
            "chardev:console".into(),
        ]
    }
}

/// The entropy device, after the disks.
fn rng_args() -> [String; 4] {
    [
        "-object".into(),
        "rng-random,id=rng,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-device,rng=rng".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(network: bool) -> VmSpec {
        VmSpec {
            kernel: "/k/bzImage".into(),
            initrd: "/k/initrd".into(),
            root: "/c/root.sqfs".into(),
            disks: vec![
                VmDisk {
                    path: "/out/a,b.raw".into(),
                    format: DiskFormat::Raw,
                    read_only: false,
                    serial: "microdib-target".into(),
                    scratch: false,
                },
                VmDisk {
                    path: "/u/helper.qcow2".into(),
                    format: DiskFormat::Qcow2,
                    read_only: false,
                    serial: "microdib-helper".into(),
                    scratch: false,
                },
            ],
            memory_mib: 1024,
            vcpus: 2,
            vsock: "/w/vsock".into(),
            console: "/w/console.log".into(),
            network: network.then(|| super::super::NetworkSpec {
                passt: "passt".into(),
                host_loopback: false,
                log: "/w/passt.log".into(),
            }),
            workdir: "/w".into(),
        }
    }

    /// What a build hands qemu: every file open, so no path of the build's (its workspace,
    /// the outputs, the caches) is on qemu's command line, and each descriptor the line names
    /// is one of those it inherits.
    #[test]
    fn a_builds_qemu_is_handed_its_files_and_names_no_path_of_ours() {
        let dir = crate::testing::TempDir::new("qemu-handed");
        let at = |name: &str| dir.0.join(name);
        for (name, bytes) in
            [("bzImage", 7usize), ("initrd", 3), ("target.raw", 4096), ("helper.qcow2", 4096), ("root.sqfs", 4096)]
        {
            std::fs::write(at(name), vec![1u8; bytes]).unwrap();
        }
        let mut s = spec(false);
        s.kernel = at("bzImage");
        s.initrd = at("initrd");
        s.root = at("root.sqfs");
        s.disks[0].path = at("target.raw");
        s.disks[1].path = at("helper.qcow2");
        s.console = at("console.log");
        let listener = std::os::unix::net::UnixListener::bind(at("vu.sock")).unwrap();
        let handed = Handed::open(&s, &at("vu.sock")).unwrap();
        let _accepted = listener.accept().unwrap();
        let args = qemu_args(&s, "c", &handed.files, None);
        let ours = dir.0.to_string_lossy().into_owned();
        assert!(!args.iter().any(|a| a.contains(&ours)), "a path of ours: {args:?}");
        let fds = handed.raw_fds();
        // Two descriptors per writable disk (read-only and read-write), one for the read-only
        // appliance root, then the console's and vsock's sockets and the two memfds.
        assert_eq!(fds.len(), 2 + 2 + 1 + 1 + 3, "{args:?}");
        let named: Vec<RawFd> = args
            .iter()
            .filter_map(|a| {
                a.strip_prefix("fd=").or_else(|| a.split("/proc/self/fd/").nth(1)).or_else(|| a.split(",fd=").nth(1))
            })
            .filter_map(|n| n.split(',').next()?.parse().ok())
            .collect();
        assert_eq!(named.len(), fds.len(), "{args:?}");
        assert!(named.iter().all(|fd| fds.contains(fd)), "{named:?} against {fds:?}");
        assert!(args.iter().any(|a| a.starts_with("file=/dev/fdset/0,")), "{args:?}");
        assert!(args.iter().any(|a| a.starts_with("socket,id=console,fd=")), "{args:?}");
        // The kernel as qemu reads it: the memfd holds the file's bytes.
        let kernel = handed.files.kernel.trim_start_matches("/proc/self/fd/");
        assert_eq!(std::fs::read(format!("/proc/self/fd/{kernel}")).unwrap(), vec![1u8; 7]);
    }

    #[test]
    fn every_disk_has_its_named_format_and_serial() {
        let a =
            qemu_args(&spec(false), "console=ttyS0", &QemuFiles::by_path(&spec(false), Path::new("/w/vu.sock")), None);
        let drives: Vec<&String> = a.iter().filter(|s| s.starts_with("file=")).collect();
        assert_eq!(drives.len(), 3);
        assert!(drives[0].starts_with("file=/out/a,,b.raw,if=none,id=disk0,format=raw,"), "{}", drives[0]);
        assert!(drives[1].contains("format=qcow2") && !drives[1].contains("readonly"));
        assert!(
            drives[2].contains("root.sqfs") && drives[2].contains("format=raw") && drives[2].ends_with("readonly=on")
        );
        let serials: Vec<&String> = a.iter().filter(|s| s.starts_with("virtio-blk-device")).collect();
        assert_eq!(serials[0], "virtio-blk-device,drive=disk0,serial=microdib-target");
        assert!(serials[2].ends_with(&format!("serial={}", microdib_proto::APPLIANCE_DISK_SERIAL)));
    }

    #[test]
    fn the_tsc_rate_is_measured_and_sane() {
        assert_eq!(tsc_khz(52_000_000, Duration::from_millis(20)), Some(2_600_000));
        assert_eq!(tsc_khz(51_990_000, Duration::from_millis(20)), Some(2_600_000));
        assert_eq!(tsc_khz(5, Duration::from_millis(20)), None);
        assert_eq!(tsc_khz(1, Duration::ZERO), None);
        if cfg!(target_arch = "x86_64") {
            assert!(host_tsc_khz().is_some(), "this host's TSC rate could not be measured");
        }
    }

    #[test]
    fn no_network_means_no_net_device() {
        let a = qemu_args(&spec(false), "c", &QemuFiles::by_path(&spec(false), Path::new("/w/vu.sock")), None);
        assert!(!a.iter().any(|s| s.contains("virtio-net") || s == "-netdev"));
        let a = qemu_args(&spec(true), "c", &QemuFiles::by_path(&spec(true), Path::new("/w/vu.sock")), Some(7));
        assert!(a.iter().any(|s| s == "stream,id=net,addr.type=fd,addr.str=7"));
        assert!(a.iter().any(|s| s.starts_with("virtio-net-device,netdev=net,mac=")));
    }

    #[test]
    fn the_bench_machine_is_the_build_vms_with_one_disk() {
        let s = spec(false);
        let mut bench = bench_qemu_args(&s.kernel, &s.initrd, s.memory_mib, s.vcpus, &s.console, &s.disks[0]);
        let build = qemu_args(&s, "c", &QemuFiles::by_path(&s, Path::new("/w/vu.sock")), None);
        let append = bench.iter().position(|a| a == "-append").unwrap();
        assert!(bench[append + 1].starts_with(QEMU_CMDLINE));
        bench[append + 1] = "c".into();
        let machine_and_disk = bench.len() - 4;
        assert_eq!(bench[..machine_and_disk], build[..machine_and_disk]);
        assert_eq!(bench[machine_and_disk..], rng_args());
        assert!(!bench.iter().any(|a| a.contains("vsock") || a.contains("net")));
    }

    #[test]
    fn memory_is_shared_for_vhost_user() {
        let a = qemu_args(&spec(false), "c", &QemuFiles::by_path(&spec(false), Path::new("/w/vu.sock")), None);
        assert!(a.contains(&"memory-backend-memfd,id=mem,size=1024M,share=on".to_owned()));
        assert!(a.iter().any(|s| s.starts_with("microvm,") && s.contains("memory-backend=mem")));
        assert!(a.contains(&"vhost-user-vsock-device,chardev=vsock".to_owned()));
        assert!(a.contains(&"-no-reboot".to_owned()));
    }
}
