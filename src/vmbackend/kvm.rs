//! The `kvm` backend: our own VMM (`vmm/`) on this host's KVM, on a thread of this process.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use microdib_proto::net::GuestNetwork;
use vmm::devices::virtio::block::{Block, DiskConfig};
use vmm::devices::virtio::net::{Net, DEFAULT_MAC};
use vmm::devices::virtio::{rng::Rng, vsock::Vsock, VirtioDevice};
use vmm::ExitLatch;
use vmm::{ConsoleOutput, GuestExit, KvmHost, Vm, VmConfig, DEFAULT_CMDLINE};

use super::{error_chain, RunningVm, StopSwitch, VmEnd, VmError, VmSpec, GUEST_CID};

pub struct KvmVm {
    latch: Arc<ExitLatch>,
    thread: Option<JoinHandle<vmm::Result<GuestExit>>>,
}

impl KvmVm {
    /// `agent_words` go on the kernel command line after our VMM's own (i8042 reset ends it).
    pub fn start(host: &KvmHost, spec: &VmSpec, agent_words: &str, net: Option<UnixStream>) -> Result<KvmVm, VmError> {
        let setup = |e: &dyn std::error::Error| VmError::Setup(error_chain(e));
        let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
        for d in spec.all_disks() {
            let config = DiskConfig { path: d.path, format: d.format, read_only: d.read_only, id: d.serial };
            devices.push(Box::new(Block::new(&config).map_err(|e| setup(&e))?));
        }
        devices.push(Box::new(Vsock::new(GUEST_CID, &spec.vsock).map_err(|e| setup(&e))?));
        devices.push(Box::new(Rng::default()));
        if let Some(socket) = net {
            let mtu = GuestNetwork::DEFAULT.mtu;
            devices.push(Box::new(Net::new(socket, DEFAULT_MAC, mtu).map_err(|e| setup(&e))?));
        }
        let config = VmConfig {
            kernel: spec.kernel.clone(),
            initramfs: Some(spec.initrd.clone()),
            cmdline: format!("{DEFAULT_CMDLINE} {agent_words}").trim_end().to_owned(),
            memory_mib: spec.memory_mib,
            vcpus: spec.vcpus,
            console: ConsoleOutput::Writer(Box::new(
                super::console::ConsoleLog::create(&spec.console).map_err(|e| setup(&e))?,
            )),
            virtio_devices: devices,
        };
        let vm = Vm::build(host, config).map_err(|e| setup(&e))?;
        let latch = vm.exit_latch();
        let thread = std::thread::Builder::new()
            .name("build-vm".into())
            .spawn(move || vm.run(None))
            .map_err(|e| VmError::Setup(format!("cannot start the build VM: {e}")))?;
        Ok(KvmVm { latch, thread: Some(thread) })
    }
}

/// How our VMM's exit reads at the seam.
fn end_of(exit: GuestExit) -> VmEnd {
    match exit {
        GuestExit::PowerOff | GuestExit::Reset => VmEnd::Shutdown,
        GuestExit::Panic => VmEnd::Panic,
        GuestExit::Timeout(d) => VmEnd::Timeout(d),
        GuestExit::Interrupted(sig) => VmEnd::Interrupted(sig),
        other @ (GuestExit::TripleFault { .. } | GuestExit::Crash | GuestExit::KvmFailure { .. }) => {
            VmEnd::Crashed(other.to_string())
        }
    }
}

struct LatchSwitch(Arc<ExitLatch>);

impl StopSwitch for LatchSwitch {
    fn stop(&self, signal: i32) {
        self.0.set(GuestExit::Interrupted(signal));
    }
}

impl RunningVm for KvmVm {
    fn stop_switch(&self) -> Arc<dyn StopSwitch> {
        Arc::new(LatchSwitch(self.latch.clone()))
    }

    fn ended(&self) -> Option<VmEnd> {
        self.latch.get().map(end_of)
    }

    fn wait_end(&mut self, wait: Duration) -> VmEnd {
        let end = self.latch.wait(Some(wait));
        if end.is_none() {
            self.latch.set(GuestExit::Timeout(wait));
        }
        let result = self.thread.take().and_then(|t| t.join().ok()).and_then(|r| r.ok());
        end.or(result).map(end_of).unwrap_or(VmEnd::Timeout(wait))
    }

    fn stop_now(&mut self) {
        self.latch.set(GuestExit::Interrupted(0));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn vmm_messages(&self) -> String {
        String::new()
    }
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_vmms_exits_map_to_the_seams() {
        assert_eq!(end_of(GuestExit::Reset), VmEnd::Shutdown);
        assert_eq!(end_of(GuestExit::PowerOff), VmEnd::Shutdown);
        assert_eq!(end_of(GuestExit::Panic), VmEnd::Panic);
        assert_eq!(end_of(GuestExit::Interrupted(15)), VmEnd::Interrupted(15));
        assert!(matches!(end_of(GuestExit::TripleFault { vcpu: 1 }), VmEnd::Crashed(m) if m.contains("triple")));
    }
}
