//! The build VM behind one seam, with two backends:
//! - `kvm`: our own VMM (`vmm/`), wherever the host's KVM can run the guest;
//! - `tcg`: `qemu-system-x86_64 -accel tcg -M microvm`, everywhere else.
//!
//! Both boot the same kernel, initramfs and appliance with the same disks (found in the guest by
//! their serials), the same passt network and the same vsock host side (our muxer; under qemu
//! through vhost-user), so the agent is reached through the same protocol. Only the build VM is
//! emulated under `tcg`: everything else stays native on the host.

mod console;
mod disk_lock;
mod kvm;
mod tcg;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microdib_proto::client::AgentClient;
use microdib_proto::net::GuestNetwork;
use microdib_proto::APPLIANCE_DISK_SERIAL;
use vmm::devices::virtio::net::passt::{Passt, PasstOptions};

pub use tcg::{bench_qemu_args, kernel_cmdline as tcg_kernel_cmdline, QEMU_CMDLINE};
pub use vmm::devices::virtio::block::DiskFormat;

/// How long the agent may take to answer after the VM starts (software emulation is slow).
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a normal power-off may take once the agent has been told.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// The guest's vsock address (the host is 2).
const GUEST_CID: u64 = 3;

/// Which backend runs the build VM (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM where it can run the guest, else qemu TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// Why the build VM could not be started or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM cannot run the build VM: {0}")]
    KvmUnusable(String),
    #[error("qemu-system-x86_64 is not installed: install the 'qemu-system-x86' package (needed where KVM cannot run the build VM)")]
    QemuMissing,
    #[error("cannot set up the build VM: {0}")]
    Setup(String),
    #[error("the build VM did not come up ({why}){console}")]
    NoAgent { why: String, console: String },
    #[error("the build VM did not shut down cleanly: {0}")]
    Shutdown(String),
    #[error("{0} is in use by another build or VM (it is locked); wait for it to finish or use another file")]
    DiskInUse(PathBuf),
}

/// The resolved backend, with what it needs from the host.
pub enum Backend {
    Kvm(vmm::KvmHost),
    Tcg { qemu: PathBuf },
}

impl Backend {
    /// Resolves `--accel`. With `auto`, `note` is told in one line when KVM is unusable.
    pub fn choose(accel: Accel, note: impl FnOnce(&str)) -> Result<Backend, VmError> {
        match accel {
            Accel::Tcg => tcg::find_qemu().map(|qemu| Backend::Tcg { qemu }),
            Accel::Kvm => vmm::KvmHost::open().map(Backend::Kvm).map_err(|e| VmError::KvmUnusable(error_chain(&e))),
            Accel::Auto => match vmm::KvmHost::open() {
                Ok(h) => Ok(Backend::Kvm(h)),
                Err(e) => {
                    let qemu = tcg::find_qemu()?;
                    note(&format!(
                        "KVM unusable here ({}); the build VM runs under software emulation (qemu TCG)",
                        error_chain(&e)
                    ));
                    Ok(Backend::Tcg { qemu })
                }
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Kvm(_) => "kvm",
            Backend::Tcg { .. } => "tcg",
        }
    }
}

/// One disk of the build VM. The guest finds each by its serial, never by its position.
#[derive(Debug, Clone)]
pub struct VmDisk {
    pub path: PathBuf,
    /// Always the one named: a disk's contents never decide its format.
    pub format: DiskFormat,
    pub read_only: bool,
    pub serial: String,
    /// A throwaway disk of this build: the backend may skip flushes to it.
    pub scratch: bool,
}

/// What to start.
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The appliance's root file system (squashfs), attached read-only after `disks`.
    pub root: PathBuf,
    pub disks: Vec<VmDisk>,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// The hybrid-vsock host socket the agent is reached through.
    pub vsock: PathBuf,
    /// Where the guest console goes.
    pub console: PathBuf,
    /// The guest network (passt); None with --no-network: no network device at all.
    pub network: Option<NetworkSpec>,
    /// A private directory for the backend's own files (sockets, logs).
    pub workdir: PathBuf,
}

impl VmSpec {
    /// Every disk in attach order: the build's, then the appliance root.
    fn all_disks(&self) -> Vec<VmDisk> {
        let mut disks = self.disks.clone();
        disks.push(VmDisk {
            path: self.root.clone(),
            format: DiskFormat::Raw,
            read_only: true,
            serial: APPLIANCE_DISK_SERIAL.into(),
            scratch: false,
        });
        disks
    }
}

/// Where passt is, where its messages go, and whether the guest reaches the host's loopback.
pub struct NetworkSpec {
    pub passt: PathBuf,
    pub host_loopback: bool,
    pub log: PathBuf,
}

/// How the build VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEnd {
    /// Powered off or reset by the guest: the normal end.
    Shutdown,
    /// The guest kernel panicked.
    Panic,
    /// The guest or its VMM failed (triple fault, KVM failure, qemu dying).
    Crashed(String),
    /// Still running after its time; stopped.
    Timeout(Duration),
    /// Stopped on a signal (0: by microdib itself).
    Interrupted(i32),
}

impl std::fmt::Display for VmEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmEnd::Shutdown => write!(f, "guest shut down"),
            VmEnd::Panic => write!(f, "guest kernel panicked"),
            VmEnd::Crashed(why) => write!(f, "{why}"),
            VmEnd::Timeout(d) => write!(f, "guest still running after {:.1} s; stopped it", d.as_secs_f64()),
            VmEnd::Interrupted(0) => write!(f, "stopped the guest"),
            VmEnd::Interrupted(sig) => write!(f, "stopped the guest on signal {sig}"),
        }
    }
}

/// Stops a running build VM from any thread (the signal thread holds one).
pub trait StopSwitch: Send + Sync {
    fn stop(&self, signal: i32);
}

/// A running VM, as each backend provides it.
trait RunningVm: Send {
    fn stop_switch(&self) -> Arc<dyn StopSwitch>;
    /// How the VM ended, if it has.
    fn ended(&self) -> Option<VmEnd>;
    /// Waits up to `wait` for the VM to end by itself, then stops it; how it ended.
    fn wait_end(&mut self, wait: Duration) -> VmEnd;
    /// Stops the VM at once and waits for it (failure and signal paths); idempotent.
    fn stop_now(&mut self);
    /// The VMM's process, if it is one (for --debug).
    fn pid(&self) -> Option<u32>;
    /// What the VMM itself said (qemu's stderr), for error messages.
    fn vmm_messages(&self) -> String;
    /// Who runs the guest's emulator, when it is a process of its own.
    fn emulator_user(&self) -> Option<String> {
        None
    }
}

/// A running build VM and its agent.
pub struct BuildVm {
    /// -x: print each command sent to the appliance on stderr.
    pub trace: bool,
    backend: &'static str,
    /// Taken by `shutdown`.
    agent: Option<AgentClient>,
    vm: Box<dyn RunningVm>,
    console: PathBuf,
    /// The hybrid-vsock host socket the agent is reached through.
    vsock: PathBuf,
    /// The network backend: killed when the VM is dropped, after the VM has stopped.
    passt: Option<Passt>,
    started: Instant,
    /// Dropped last: the disks stay locked until the VM is gone.
    _locks: disk_lock::DiskLocks,
}

impl BuildVm {
    /// Boots the VM; `wait_for_agent` then waits for its agent. Call from a thread that lives as
    /// long as the VM: child processes die with the thread that started them (PDEATHSIG).
    pub fn start(backend: &Backend, spec: VmSpec) -> Result<BuildVm, VmError> {
        // Kernel command-line words for the agent; each backend puts its own base first.
        let mut agent_words = String::new();
        let locks = disk_lock::DiskLocks::take(&spec.all_disks())?;
        let (passt, net_socket) = match &spec.network {
            Some(n) => {
                let net = GuestNetwork::DEFAULT;
                agent_words.push_str(&net.cmdline_word());
                let (p, s) = start_passt(n, &net)?;
                (Some(p), Some(s))
            }
            None => (None, None),
        };
        let console = spec.console.clone();
        let vsock = spec.vsock.clone();
        let vm: Box<dyn RunningVm> = match backend {
            Backend::Kvm(host) => Box::new(kvm::KvmVm::start(host, &spec, &agent_words, net_socket)?),
            Backend::Tcg { qemu } => Box::new(tcg::TcgVm::start(qemu, &spec, &agent_words, net_socket)?),
        };
        Ok(BuildVm {
            trace: false,
            backend: backend.name(),
            agent: None,
            vm,
            console,
            vsock,
            passt,
            started: Instant::now(),
            _locks: locks,
        })
    }

    /// Waits until the agent answers; stops the VM if it does not, or if the VM ends (or is
    /// stopped through its switch) first.
    pub fn wait_for_agent(&mut self) -> Result<(), VmError> {
        let deadline = self.started + AGENT_TIMEOUT;
        loop {
            // Short attempts, so a VM that died is noticed at once rather than at the deadline.
            let attempt = (Instant::now() + Duration::from_millis(500)).min(deadline);
            match AgentClient::connect(&self.vsock, attempt.saturating_duration_since(Instant::now())) {
                Ok(agent) => {
                    tracing::info!(
                        "the build VM's agent ({}) answered after {:.2} s",
                        self.backend,
                        self.started.elapsed().as_secs_f64()
                    );
                    self.agent = Some(agent);
                    return Ok(());
                }
                Err(e) => {
                    let why = match self.vm.ended() {
                        Some(end) => end.to_string(),
                        None if Instant::now() >= deadline => {
                            format!("no answer from its agent in {} s: {e}", AGENT_TIMEOUT.as_secs())
                        }
                        None => continue,
                    };
                    self.vm.stop_now();
                    return Err(VmError::NoAgent { why, console: self.console_tail() });
                }
            }
        }
    }

    /// `kvm` or `tcg`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Prints a command about to be sent (with -x).
    pub fn trace_command(&self, what: &[&str]) {
        if self.trace {
            eprintln!("appliance: {}", what.iter().map(|a| crate::shell::quote(a)).collect::<Vec<_>>().join(" "));
        }
    }

    /// The pid of the network backend, if there is one.
    pub fn passt_pid(&self) -> Option<u32> {
        self.passt.as_ref().map(Passt::pid)
    }

    /// The pid of the VMM process (qemu), if the VMM is one.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    /// Who runs the guest's emulator and how it is confined, when it is a process of its own.
    pub fn emulator_user(&self) -> Option<String> {
        self.vm.emulator_user()
    }

    /// The agent connection (None once shut down). Only `guest::GuestOps` uses it.
    pub(crate) fn agent(&mut self) -> Option<&mut AgentClient> {
        self.agent.as_mut()
    }

    /// The VM's stop switch (signal handlers hold it).
    pub fn stop_switch(&self) -> Arc<dyn StopSwitch> {
        self.vm.stop_switch()
    }

    /// How the VM ended, if it has.
    pub fn ended(&self) -> Option<VmEnd> {
        self.vm.ended()
    }

    /// The last lines of the guest console and of what the VMM said, for error messages.
    pub fn console_tail(&self) -> String {
        let mut s = tail_lines("guest console", &file_tail(&self.console, 64 * 1024), 15);
        s.push_str(&tail_lines(&format!("{} says", self.backend), &self.vm.vmm_messages(), 10));
        s
    }

    /// Syncs and powers off through the agent, then waits for the VM to end.
    pub fn shutdown(mut self) -> Result<(), VmError> {
        let said = match self.agent.take() {
            Some(agent) => agent.power_off().map_err(|e| e.to_string()),
            None => Err("no agent connection".to_owned()),
        };
        let end = self.vm.wait_end(SHUTDOWN_TIMEOUT);
        match (said, end) {
            (Ok(()), VmEnd::Shutdown) => Ok(()),
            (Err(e), VmEnd::Timeout(_)) => Err(VmError::Shutdown(e)),
            (_, other) => Err(VmError::Shutdown(other.to_string())),
        }
    }

    /// Stops the VM at once (failure and signal paths).
    pub fn stop_now(&mut self) {
        self.vm.stop_now();
    }
}

impl Drop for BuildVm {
    fn drop(&mut self) {
        self.vm.stop_now();
        // passt goes after the VM (its own Drop kills and reaps it).
    }
}

fn start_passt(n: &NetworkSpec, net: &GuestNetwork) -> Result<(Passt, UnixStream), VmError> {
    let opts = PasstOptions {
        binary: n.passt.clone(),
        address: net.address,
        prefix_len: net.prefix_len,
        gateway: net.gateway,
        dns_forward: Some(net.dns),
        mtu: net.mtu,
        gateway_is_host: n.host_loopback,
        extra_args: Vec::new(),
        log: Some(n.log.clone()),
    };
    Passt::spawn(&opts).map_err(|e| VmError::Setup(error_chain(&e)))
}

/// "\n<what>:\n<last n lines>", or nothing when `text` is empty. The text comes from the guest
/// (its console) or is steered by it (qemu's complaints): control characters are dropped so it
/// cannot drive the user's terminal.
fn tail_lines(what: &str, text: &str, n: usize) -> String {
    let lines: Vec<String> =
        text.lines().rev().take(n).map(|l| l.chars().filter(|c| !c.is_control() || *c == '\t').collect()).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("\n{what}:\n{}", lines.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// The last `max` bytes of a file (a log the VMM writes).
fn file_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(tail_lines("x", "", 3), "");
        assert_eq!(tail_lines("console", "a\nb\nc\nd\n", 2), "\nconsole:\nc\nd");
        assert_eq!(tail_lines("console", "x\x1b]0;owned\x07\ty\r\n", 1), "\nconsole:\nx]0;owned\ty");
    }

    #[test]
    fn file_tail_reads_only_the_end() {
        let p = std::env::temp_dir().join(format!("microdib-tail-{}", std::process::id()));
        std::fs::write(&p, "0123456789").unwrap();
        assert_eq!(file_tail(&p, 4), "6789");
        assert_eq!(file_tail(&p, 100), "0123456789");
        // A byte that is not UTF-8 (the guest chose it) costs one character, not the message.
        std::fs::write(&p, b"boot\xffpanic").unwrap();
        assert_eq!(file_tail(&p, 100), "boot\u{fffd}panic");
        std::fs::remove_file(&p).unwrap();
        assert_eq!(file_tail(&p, 4), "");
    }

    #[test]
    fn accel_kvm_never_falls_back_and_auto_says_why() {
        if vmm::KvmHost::open().is_ok() {
            let chosen = Backend::choose(Accel::Auto, |m| panic!("KVM works, nothing to say: {m}"));
            assert!(matches!(chosen, Ok(Backend::Kvm(_))));
            return;
        }
        let kvm = Backend::choose(Accel::Kvm, |m| panic!("kvm says nothing: {m}"));
        assert!(matches!(kvm, Err(VmError::KvmUnusable(_))));
        let mut said = String::new();
        match Backend::choose(Accel::Auto, |m| said = m.to_owned()) {
            Ok(Backend::Tcg { .. }) => {
                assert!(
                    said.starts_with("KVM unusable here (") && said.ends_with("under software emulation (qemu TCG)")
                )
            }
            Err(VmError::QemuMissing) => {}
            _ => panic!("auto picked neither tcg nor said qemu is missing"),
        }
    }

    #[test]
    fn the_appliance_root_comes_last_read_only() {
        let spec = VmSpec {
            kernel: "k".into(),
            initrd: "i".into(),
            root: "root.sqfs".into(),
            disks: vec![VmDisk {
                path: "t".into(),
                format: DiskFormat::Raw,
                read_only: false,
                serial: "microdib-target".into(),
                scratch: false,
            }],
            memory_mib: 256,
            vcpus: 1,
            vsock: "v".into(),
            console: "c".into(),
            network: None,
            workdir: "w".into(),
        };
        let d = spec.all_disks();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].serial, APPLIANCE_DISK_SERIAL);
        assert!(d[1].read_only && !d[0].read_only);
    }
}
