//! The build VM: the guest kernel, the appliance (agent initramfs + squashfs root built from
//! host packages), the disks in their fixed order, and the agent connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use microdib_proto::client::AgentClient;
use microdib_proto::net::GuestNetwork;
use microdib_proto::APPLIANCE_DISK_SERIAL;
use vmm::devices::virtio::block::{Block, DiskConfig, DiskFormat};
use vmm::devices::virtio::net::passt::{Passt, PasstOptions};
use vmm::devices::virtio::net::{Net, DEFAULT_MAC};
use vmm::devices::virtio::{rng::Rng, vsock::Vsock, VirtioDevice};
use vmm::vm::ExitLatch;
use vmm::{ConsoleOutput, GuestExit, KvmHost, Vm, VmConfig, DEFAULT_CMDLINE};

/// How long the agent may take to answer after the VM starts (nested emulation is slow).
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// `${XDG_CACHE_HOME:-~/.cache}/microdib`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("microdib")
}

/// The guest kernel: $MICRODIB_KERNEL, else the newest one hack/build-kernel cached.
pub fn find_kernel() -> Result<PathBuf, String> {
    if let Some(k) = std::env::var_os("MICRODIB_KERNEL") {
        return Ok(PathBuf::from(k));
    }
    let dir = cache_root().join("kernel");
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bzImage"))
        .filter_map(|p| std::fs::metadata(&p).and_then(|m| m.modified()).ok().map(|t| (t, p)))
        .max();
    newest.map(|(_, p)| p).ok_or_else(|| {
        format!("no guest kernel in {}: build it with hack/build-kernel (or set MICRODIB_KERNEL)", dir.display())
    })
}

/// The guest agent binary: $MICRODIB_AGENT, else where the workspace builds it
/// (target/guest/x86_64-unknown-linux-musl/release/microdib-agent, beside target/release).
pub fn find_agent() -> Result<PathBuf, String> {
    if let Some(a) = std::env::var_os("MICRODIB_AGENT") {
        return Ok(PathBuf::from(a));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let candidate =
        exe.parent().and_then(Path::parent).map(|t| t.join("guest/x86_64-unknown-linux-musl/release/microdib-agent"));
    match candidate {
        Some(p) if p.exists() => Ok(p),
        _ => Err("the guest agent is not built: run hack/setup (or set MICRODIB_AGENT)".into()),
    }
}

/// What to start.
pub struct ApplianceSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub root: PathBuf,
    /// Target first, then the helper; the appliance root is added after them.
    pub disks: Vec<DiskConfig>,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub vsock: PathBuf,
    pub console: PathBuf,
    /// The guest network (passt); None with --no-network: no network device at all.
    pub network: Option<NetworkSpec>,
}

/// Where passt is and where its messages go.
pub struct NetworkSpec {
    pub passt: PathBuf,
    pub log: PathBuf,
}

/// A running build VM and its agent.
pub struct ApplianceVm {
    /// -x: print each command sent to the appliance on stderr.
    pub trace: bool,
    /// Taken by `shutdown`.
    agent: Option<AgentClient>,
    latch: Arc<ExitLatch>,
    thread: Option<JoinHandle<vmm::Result<GuestExit>>>,
    console: PathBuf,
    /// The network backend: killed when the VM is dropped (after the VM itself has stopped).
    passt: Option<Passt>,
}

impl ApplianceVm {
    /// Boots the VM and waits for the agent. `host` is the checked KVM device.
    pub fn start(host: &KvmHost, spec: ApplianceSpec) -> Result<ApplianceVm, String> {
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        let mut disks = spec.disks;
        disks.push(DiskConfig {
            path: spec.root.clone(),
            format: DiskFormat::Raw,
            read_only: true,
            id: APPLIANCE_DISK_SERIAL.into(),
        });
        for d in &disks {
            devices.push(Box::new(Block::new(d).map_err(|e| error_chain(&e))?));
        }
        devices.push(Box::new(Vsock::new(3, &spec.vsock).map_err(|e| error_chain(&e))?));
        devices.push(Box::new(Rng::default()));
        let mut cmdline = DEFAULT_CMDLINE.to_owned();
        let passt = match &spec.network {
            Some(n) => {
                let net = GuestNetwork::DEFAULT;
                let opts = PasstOptions {
                    binary: n.passt.clone(),
                    address: net.address,
                    prefix_len: net.prefix_len,
                    gateway: net.gateway,
                    dns_forward: Some(net.dns),
                    mtu: net.mtu,
                    extra_args: Vec::new(),
                    log: Some(n.log.clone()),
                };
                let (passt, socket) = Passt::spawn(&opts).map_err(|e| error_chain(&e))?;
                devices.push(Box::new(Net::new(socket, DEFAULT_MAC, net.mtu).map_err(|e| error_chain(&e))?));
                cmdline.push(' ');
                cmdline.push_str(&net.cmdline_word());
                Some(passt)
            }
            None => None,
        };
        let config = VmConfig {
            kernel: spec.kernel,
            initramfs: Some(spec.initrd),
            cmdline,
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            console: ConsoleOutput::File(spec.console.clone()),
            virtio_devices: devices,
        };
        let vm = Vm::build(host, config).map_err(|e| format!("cannot create the build VM: {}", error_chain(&e)))?;
        let latch = vm.exit_latch();
        let thread = std::thread::Builder::new()
            .name("build-vm".into())
            .spawn(move || vm.run(None))
            .map_err(|e| format!("cannot start the build VM: {e}"))?;
        let booting = std::time::Instant::now();
        match AgentClient::connect(&spec.vsock, AGENT_TIMEOUT) {
            Ok(agent) => {
                tracing::info!("the build VM's agent answered after {:.2} s", booting.elapsed().as_secs_f64());
                Ok(ApplianceVm {
                    trace: false,
                    agent: Some(agent),
                    latch,
                    thread: Some(thread),
                    console: spec.console,
                    passt,
                })
            }
            Err(e) => {
                let mut me = ApplianceVm {
                    trace: false,
                    agent: None,
                    latch,
                    thread: Some(thread),
                    console: spec.console,
                    passt,
                };
                let why = me.latch.get().map(|x| x.to_string()).unwrap_or_else(|| e.to_string());
                me.stop_now();
                Err(format!("the build VM did not come up ({why}){}", me.console_tail()))
            }
        }
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

    /// The agent connection.
    pub fn agent(&mut self) -> Result<&mut AgentClient, String> {
        self.agent.as_mut().ok_or_else(|| "the build VM is shut down".to_owned())
    }

    /// The VM's stop switch (signal handlers set it).
    pub fn latch(&self) -> Arc<ExitLatch> {
        self.latch.clone()
    }

    /// Why the VM ended, if it has.
    pub fn ended(&self) -> Option<GuestExit> {
        self.latch.get()
    }

    /// The last lines of the guest console, for error messages.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(15).collect();
        if lines.is_empty() {
            return String::new();
        }
        format!("\nguest console:\n{}", lines.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }

    /// Syncs and powers off through the agent, then waits for the VM to end.
    pub fn shutdown(mut self) -> Result<(), String> {
        let said = match self.agent.take() {
            Some(agent) => agent.power_off().map_err(|e| e.to_string()),
            None => Err("no agent connection".to_owned()),
        };
        let end = self.join(Duration::from_secs(60));
        match (said, end) {
            (Ok(()), Some(GuestExit::Reset | GuestExit::PowerOff)) => Ok(()),
            (_, Some(other)) => Err(format!("the build VM did not shut down cleanly: {other}")),
            (Err(e), None) => Err(format!("the build VM did not shut down: {e}")),
            (Ok(()), None) => Err("the build VM did not shut down in time".into()),
        }
    }

    fn join(&mut self, wait: Duration) -> Option<GuestExit> {
        let end = self.latch.wait(Some(wait));
        if end.is_none() {
            self.latch.set(GuestExit::Timeout(wait));
        }
        let result = self.thread.take().and_then(|t| t.join().ok()).and_then(|r| r.ok());
        end.or(result)
    }

    /// Stops the VM at once (failure and signal paths).
    pub fn stop_now(&mut self) {
        self.latch.set(GuestExit::Interrupted(0));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApplianceVm {
    fn drop(&mut self) {
        self.stop_now();
    }
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
