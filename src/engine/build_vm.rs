//! The build VM of one build: its disks (the target, the helper drive, the scratch disk for
//! the block-device layer), the kernel and appliance it boots, started and waited for.

use std::path::{Path, PathBuf};

use super::checkpoints::Tools;
use super::outputs::OutputPlan;
use super::signals::Stop;
use super::workspace::Workspace;
use super::{appliance, helper_drive, EngineError};
use crate::cache::Digest;
use crate::guest::paths::{BUILD_SERIAL, HELPER_SERIAL, TARGET_SERIAL};
use crate::guest::{BuildGuest, GuestOps};
use crate::plan::BuildPlan;
use crate::report::Reporter;
use crate::vmbackend::{self, Backend, BuildVm, DiskFormat, VmDisk, VmSpec};

/// Size of the throwaway helper drive, as virt-dib made it.
const HELPER_SIZE: u64 = 5 << 30;

/// What starting a build VM needs to know: the build and its disks.
pub struct VmRequest<'a> {
    pub plan: &'a BuildPlan,
    pub stop: &'a Stop,
    pub reporter: &'a Reporter,
    pub workspace: &'a Workspace,
    pub outputs: &'a OutputPlan,
    /// The block-device layer's scratch disk, made by the engine (a checkpoint may fill it).
    pub scratch: Option<&'a Path>,
}

/// Starts a build's VM: this module's, or in the engine's tests a fake guest.
pub trait VmStarter {
    /// Finds where the VM runs and what it boots (building the appliance if need be).
    fn prepare(&mut self, plan: &BuildPlan, r: &Reporter) -> Result<(), EngineError>;
    /// What runs the phases, by content (microdib, the guest kernel, the agent, the appliance):
    /// an input of every phase checkpoint.
    fn tools(&mut self, plan: &BuildPlan, r: &Reporter) -> Result<Digest, EngineError>;
    fn start(&mut self, req: &VmRequest<'_>) -> Result<Box<dyn BuildGuest>, EngineError>;
}

/// The real build VM: its backend chosen first (a host that cannot run it is told so before
/// anything is built), then what it boots.
#[derive(Default)]
pub struct RealVm {
    ready: Option<Ready>,
}

/// Where the build VM runs and what it boots, found once per build.
pub struct Ready {
    backend: Backend,
    boot: BootFiles,
}

impl RealVm {
    fn ready(&mut self, c: &BuildPlan, r: &Reporter) -> Result<&Ready, EngineError> {
        let ready = match self.ready.take() {
            Some(ready) => ready,
            None => {
                // Where the build VM runs: this host's KVM, or qemu's software emulation.
                let backend = Backend::choose(c.vm.accel, |why| r.info(why))?;
                Ready { backend, boot: BootFiles::find(c, r)? }
            }
        };
        Ok(self.ready.insert(ready))
    }
}

impl VmStarter for RealVm {
    fn prepare(&mut self, plan: &BuildPlan, r: &Reporter) -> Result<(), EngineError> {
        self.ready(plan, r).map(|_| ())
    }

    fn tools(&mut self, plan: &BuildPlan, r: &Reporter) -> Result<Digest, EngineError> {
        let boot = &self.ready(plan, r)?.boot;
        let microdib = std::env::current_exe().map_err(EngineError::host("cannot find my own executable"))?;
        let tools =
            Tools { microdib: &microdib, kernel: &boot.kernel, agent: &boot.agent, appliance_root: &boot.files.root };
        tools.digest().map_err(|e| EngineError::Invalid(e.to_string()))
    }

    fn start(&mut self, req: &VmRequest<'_>) -> Result<Box<dyn BuildGuest>, EngineError> {
        let ready = self.ready(req.plan, req.reporter)?;
        Ok(Box::new(start(req, ready)?))
    }
}

/// The kernel, agent and appliance a build VM boots.
#[derive(Clone)]
pub struct BootFiles {
    kernel: PathBuf,
    agent: PathBuf,
    files: initramfs::appliance::ApplianceFiles,
}

impl BootFiles {
    /// Finds the kernel and agent, and builds the appliance (or finds it cached).
    fn find(c: &BuildPlan, r: &Reporter) -> Result<BootFiles, EngineError> {
        let (kernel, kernel_origin) = appliance::find_kernel()?;
        let (agent, agent_origin) = appliance::find_agent()?;
        if c.debug >= 1 {
            r.debug(&appliance::found_line("guest kernel", &kernel, kernel_origin));
            r.debug(&appliance::found_line("guest agent", &agent, agent_origin));
        }
        let cache = crate::host::cache_root().join("appliance");
        let files = initramfs::appliance::build_or_cached(&agent, &cache, |m| r.info(m))?;
        if c.debug >= 1 {
            let how = if files.built { "built now" } else { "cached" };
            r.debug(&format!("appliance: {} ({how})", files.root.parent().unwrap_or(&cache).display()));
            for (path, why) in &files.withheld {
                r.debug(&format!("appliance: left out {} ({})", path.display(), why.describe()));
            }
        }
        if !files.missing.is_empty() {
            // Elements that call these in the build VM will fail: say how to add them.
            let names = files.missing.join(" ");
            r.warning(&format!(
                "the build VM lacks {names} (not installed on this host); add them with: apt install {names}"
            ));
        }
        Ok(BootFiles { kernel, agent, files })
    }
}

/// Starts the build VM and waits for its agent; a stop signal stops it from then on.
pub fn start(req: &VmRequest<'_>, ready: &Ready) -> Result<GuestOps, EngineError> {
    let VmRequest { plan: c, stop, reporter: r, workspace: ws, outputs, scratch } = *req;
    let spec = spec(c, &ready.boot, ws, outputs, scratch)?;
    stop.check()?;
    let mut vm = BuildVm::start(&ready.backend, spec)?;
    // A signal while it boots stops it too.
    stop.watch_vm(Some(vm.stop_switch()));
    if let Some(confined) = vm.emulator_user() {
        r.info(&format!("the build VM: {confined}"));
    }
    vm.wait_for_agent()?;
    let ready = r.elapsed();
    vm.trace = c.trace;
    if c.debug >= 1 {
        let vmm = match vm.vmm_pid() {
            Some(pid) => format!("qemu pid {pid}"),
            None => "microdib's own VMM".to_owned(),
        };
        r.debug(&format!("build VM: {} ({vmm}); its agent answered {ready:.2} s after microdib started", vm.backend()));
        if let Some(pid) = vm.passt_pid() {
            r.debug(&format!("network: passt (pid {pid})"));
        }
    }
    Ok(GuestOps::new(vm))
}

/// The VM's disks, kernel, appliance and resources.
fn spec(
    c: &BuildPlan,
    boot: &BootFiles,
    ws: &Workspace,
    outputs: &OutputPlan,
    scratch: Option<&Path>,
) -> Result<VmSpec, EngineError> {
    let helper = match &c.vm.drive {
        Some(d) => VmDisk {
            path: d.path.clone(),
            format: helper_drive::drive_format(&d.path, d.format.as_deref())
                .map_err(|e| EngineError::Invalid(e.to_string()))?,
            read_only: false,
            serial: HELPER_SERIAL.into(),
            scratch: false,
        },
        None => throwaway_disk(ws.dir.join("helper.raw"), HELPER_SIZE, HELPER_SERIAL)?,
    };
    let target = VmDisk {
        path: outputs.target_disk.clone(),
        format: DiskFormat::Raw,
        read_only: false,
        serial: TARGET_SERIAL.into(),
        scratch: false,
    };
    let mut disks = vec![target, helper];
    if let Some(path) = scratch {
        // The tree is built here until the block-device layer has made the image's file systems.
        disks.push(VmDisk {
            path: path.to_owned(),
            format: DiskFormat::Raw,
            read_only: false,
            serial: BUILD_SERIAL.into(),
            scratch: true,
        });
    }
    Ok(VmSpec {
        kernel: boot.kernel.clone(),
        initrd: boot.files.initrd.clone(),
        root: boot.files.root.clone(),
        disks,
        memory_mib: c.vm.memory_mib,
        vcpus: c.vm.vcpus,
        vsock: ws.dir.join("vsock"),
        console: ws.dir.join("console.log"),
        network: c.vm.network.as_ref().map(|n| vmbackend::NetworkSpec {
            passt: n.passt.clone(),
            host_loopback: n.host_loopback,
            log: ws.dir.join("passt.log"),
        }),
        workdir: ws.dir.clone(),
    })
}

/// A sparse raw disk of `size` bytes in the workspace (gone with it), with serial `id`.
fn throwaway_disk(path: PathBuf, size: u64, serial: &str) -> Result<VmDisk, EngineError> {
    sparse_file(&path, size)?;
    Ok(VmDisk { path, format: DiskFormat::Raw, read_only: false, serial: serial.into(), scratch: true })
}

/// Makes `path` an empty sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) -> Result<(), EngineError> {
    let f = std::fs::File::create(path).map_err(EngineError::host(format!("cannot create {}", path.display())))?;
    f.set_len(size).map_err(EngineError::host(format!("cannot size {}", path.display())))
}
