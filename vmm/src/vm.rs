//! A whole microVM: KVM VM + guest RAM + boot state + legacy devices + vCPU threads. `Vm::build`
//! does the setup in the order KVM needs (irqchip before vCPUs, CPUID before MSRs); `Vm::run`
//! starts the vCPUs and waits for the first reason to stop.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::layout::{CMDLINE_START, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, VIRTIO_MMIO_START};
use crate::boot::{loader, mptable, paging, params, regs};
use crate::devices::i8042::{ResetController, I8042_LEN, I8042_PORT};
use crate::devices::serial::{ConsoleSink, ConsoleWatch, ConsoleWriter, SerialConsole, COM1_GSI, COM1_LEN, COM1_PORT};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, QUEUE_NOTIFY};
use crate::devices::virtio::VirtioDevice;
use crate::devices::{EventFdTrigger, MmioBus, PioBus};
use crate::error::{Error, Result};
use crate::exit::{ExitLatch, GuestExit};
use crate::host::KvmHost;
use crate::memory::GuestRam;
use crate::vcpu::{BootEntry, Vcpu};

/// Where the guest console goes.
pub enum ConsoleOutput {
    Stdout,
    Stderr,
    File(PathBuf),
    Null,
    Writer(Box<dyn Write + Send>),
}

/// What to boot and with how much.
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    pub console: ConsoleOutput,
    /// virtio devices in the order the guest should see them (the first block device is vda).
    pub virtio_devices: Vec<Box<dyn VirtioDevice>>,
}

/// What a VM boots, checked before the host's KVM is opened or any device made: a wrong
/// kernel or memory size is the user's mistake on every host, and says so on every host.
pub struct BootInputs<'a> {
    pub kernel: &'a std::path::Path,
    pub initramfs: Option<&'a std::path::Path>,
    pub memory_mib: u64,
}

impl BootInputs<'_> {
    pub fn check(&self) -> Result<()> {
        crate::memory::check_size(self.memory_mib)?;
        crate::boot::loader::check_kernel(self.kernel)?;
        if let Some(initrd) = self.initramfs {
            std::fs::File::open(initrd).map_err(|source| Error::InitramfsRead { path: initrd.to_owned(), source })?;
        }
        Ok(())
    }
}

/// First GSI for virtio devices (0-4 are the timer, keyboard, cascade and COM ports).
const VIRTIO_FIRST_GSI: u32 = 5;
/// GSIs the IOAPIC has.
const IOAPIC_PINS: u32 = 24;

/// The command line microdib boots with unless told otherwise: console on COM1, i8042 reset
/// for reboot (ends the VM), reboot immediately on panic, quiet (each console byte is a VM exit).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

/// A built VM, ready to run.
pub struct Vm {
    _vm_fd: VmFd,
    ram: GuestRam,
    vcpus: Vec<Vcpu>,
    latch: Arc<ExitLatch>,
    serial: Arc<Mutex<SerialConsole>>,
    console_writer: ConsoleWriter,
    watch: Arc<ConsoleWatch>,
}

/// Ends the VM if a vCPU thread ends without saying why (it panicked): the first reason wins,
/// so on every normal path this does nothing.
struct VcpuThreadGuard(Arc<ExitLatch>, u8);

impl Drop for VcpuThreadGuard {
    fn drop(&mut self) {
        self.0.set(GuestExit::KvmFailure { vcpu: self.1, reason: "vCPU thread ended unexpectedly".into() });
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that interrupts KVM_RUN so a vCPU thread sees the VM is over.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() -> Result<()> {
    static ONCE: std::sync::OnceLock<std::result::Result<(), i32>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno())).map_err(|errno| {
        Error::Os { what: "vCPU kick signal handler", source: std::io::Error::from_raw_os_error(errno) }
    })
}

impl Vm {
    pub fn build(host: &KvmHost, config: VmConfig) -> Result<Vm> {
        let max = (host.max_vcpus() as u64).min(u64::from(mptable::MAX_CPUS));
        if config.vcpus == 0 || u64::from(config.vcpus) > max {
            return Err(Error::VcpuCount(u64::from(config.vcpus), max));
        }
        let t0 = Instant::now();
        let ram = GuestRam::new(config.memory_mib)?;
        tracing::debug!("guest RAM mapped in {:?}", t0.elapsed());

        let vm_fd = host.kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        vm_fd.set_tss_address(KVM_TSS_ADDRESS as usize).map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        vm_fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS).map_err(Error::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm_fd.create_irq_chip().map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm_fd.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
        for (slot, region) in ram.memory.iter().enumerate() {
            let host_addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(Error::guest_write("memory slot"))?;
            let mr = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
            };
            // SAFETY: the mapping belongs to `ram`, which the Vm owns and keeps alive until
            // every vCPU thread has been joined (or leaks it if one cannot be stopped).
            unsafe { vm_fd.set_user_memory_region(mr) }.map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }

        tracing::debug!("KVM VM created in {:?}", t0.elapsed());

        // virtio devices: one MMIO window and one GSI each, announced on the command line.
        let mut cmdline = config.cmdline.clone();
        let mut mmio_bus = MmioBus::default();
        let count = config.virtio_devices.len() as u32;
        if count > IOAPIC_PINS - VIRTIO_FIRST_GSI {
            return Err(Error::TooManyDevices(count));
        }
        for (i, device) in config.virtio_devices.into_iter().enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * MMIO_WINDOW;
            let gsi = VIRTIO_FIRST_GSI + i as u32;
            let transport = MmioTransport::new(device, ram.memory.clone())
                .map_err(|source| Error::Os { what: "virtio queue eventfds", source })?;
            for (q, evt) in transport.queue_events().iter().enumerate() {
                vm_fd
                    .register_ioevent(evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32)
                    .map_err(Error::kvm("KVM_IOEVENTFD"))?;
            }
            vm_fd.register_irqfd(transport.interrupt().irqfd(), gsi).map_err(Error::kvm("KVM_IRQFD"))?;
            mmio_bus.insert(base, MMIO_WINDOW, Arc::new(Mutex::new(transport)));
            cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
        }
        let mmio_bus = Arc::new(mmio_bus);
        // Kernel, command line, initramfs, zero page, page tables, GDT, MP table.
        let kernel = loader::load_kernel(&ram.memory, &config.kernel)?;
        tracing::debug!("kernel loaded in {:?}", t0.elapsed());
        let cmdline_size = loader::write_cmdline(&ram.memory, &cmdline, &kernel)?;
        let (initrd_addr, initrd_size) = match &config.initramfs {
            Some(p) => loader::load_initrd(&ram.memory, p, ram.low_end, &kernel)?,
            None => (0, 0),
        };
        let place = params::BootPlacement { cmdline_addr: CMDLINE_START, cmdline_size, initrd_addr, initrd_size };
        let zero_page = params::build(kernel.header, &place, &params::e820_map(ram.low_end, ram.high_size))?;
        params::write(&ram.memory, &zero_page)?;
        let cr3 = paging::write_identity_page_tables(&ram.memory)?;
        regs::write_descriptor_tables(&ram.memory)?;
        mptable::write(&ram.memory, config.vcpus)?;
        tracing::debug!("boot data written in {:?}", t0.elapsed());

        // Legacy devices.
        let latch = Arc::new(ExitLatch::default());
        let watch = Arc::new(ConsoleWatch::default());
        let out: Box<dyn Write + Send> = match config.console {
            ConsoleOutput::Stdout => Box::new(std::io::stdout()),
            ConsoleOutput::Stderr => Box::new(std::io::stderr()),
            ConsoleOutput::Null => Box::new(std::io::sink()),
            ConsoleOutput::Writer(w) => w,
            ConsoleOutput::File(p) => {
                Box::new(File::create(&p).map_err(|source| Error::ConsoleOpen { path: p, source })?)
            }
        };
        let com1_irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| Error::Os { what: "serial interrupt eventfd", source })?;
        vm_fd.register_irqfd(&com1_irq, COM1_GSI).map_err(Error::kvm("KVM_IRQFD"))?;
        let (sink, console_writer) = ConsoleSink::new(out, watch.clone())
            .map_err(|source| Error::Os { what: "console writer thread", source })?;
        let serial = Arc::new(Mutex::new(SerialConsole::new(EventFdTrigger(com1_irq), sink)));
        let mut bus = PioBus::default();
        bus.insert(COM1_PORT, COM1_LEN, serial.clone());
        bus.insert(I8042_PORT, I8042_LEN, Arc::new(Mutex::new(ResetController::new(latch.clone()))));
        let bus = Arc::new(bus);

        // vCPUs.
        let supported =
            host.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let tsc_deadline = host.kvm.check_extension(Cap::TscDeadlineTimer);
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let fd = vm_fd.create_vcpu(u64::from(id)).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
            let vcpu = Vcpu::new(id, fd, bus.clone(), mmio_bus.clone(), latch.clone());
            let boot = (id == 0).then_some(BootEntry { rip: kernel.entry, cr3 });
            vcpu.configure(&supported, config.vcpus, tsc_deadline, boot)?;
            vcpus.push(vcpu);
        }
        install_kick_handler()?;
        tracing::debug!("vCPUs configured in {:?}", t0.elapsed());
        tracing::debug!(
            entry = format_args!("{:#x}", kernel.entry),
            initrd = format_args!("{initrd_addr:#x}+{initrd_size}"),
            "VM built"
        );
        Ok(Vm { _vm_fd: vm_fd, ram, vcpus, latch, serial, console_writer, watch })
    }

    /// Setting a reason on this latch stops the VM (for signal handlers and supervisors).
    pub fn exit_latch(&self) -> Arc<ExitLatch> {
        self.latch.clone()
    }

    /// Runs the guest until it ends (or `timeout` passes) and says how it ended.
    pub fn run(mut self, timeout: Option<Duration>) -> Result<GuestExit> {
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            let id = vcpu.id;
            let guard = VcpuThreadGuard(self.latch.clone(), id);
            let spawned = std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
                let _guard = guard;
                vcpu.run()
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    self.latch.set(GuestExit::KvmFailure { vcpu: id, reason: "thread start failed".into() });
                    if !Self::stop(threads) {
                        std::mem::forget(self.ram);
                    }
                    return Err(Error::VcpuThread { id, source });
                }
            }
        }
        let reason = match self.latch.wait(timeout) {
            Some(r) => r,
            None => {
                let t = timeout.unwrap_or_default();
                self.latch.set(GuestExit::Timeout(t));
                self.latch.get().unwrap_or(GuestExit::Timeout(t))
            }
        };
        let all_stopped = Self::stop(threads);
        // try_lock: a vCPU that would not stop might hold the UART; never wait on it.
        let close_deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.serial.try_lock() {
                Ok(mut s) => break s.close(),
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner().close(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < close_deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(std::sync::TryLockError::WouldBlock) => break,
            }
        }
        self.console_writer.finish(Duration::from_secs(2));
        if self.watch.dropped_lines() > 0 {
            tracing::warn!("the console output could not keep up; {} lines were dropped", self.watch.dropped_lines());
        }
        if !all_stopped {
            // A vCPU thread may still touch guest memory: never unmap it under it.
            std::mem::forget(self.ram);
        }
        Ok(match reason {
            GuestExit::Reset | GuestExit::TripleFault { .. } if self.watch.kernel_panicked() => GuestExit::Panic,
            r => r,
        })
    }

    /// Kicks every vCPU out of KVM_RUN until its thread ends; false if one would not stop.
    fn stop(threads: Vec<JoinHandle<()>>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all = true;
        for t in threads {
            // The kick can arrive just before the thread enters KVM_RUN, so repeat it.
            while !t.is_finished() && Instant::now() < deadline {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_micros(200));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                all = false;
            }
        }
        all
    }

    /// Guest-physical address of the zero page, for tests.
    pub fn guest_memory(&self) -> &vm_memory::GuestMemoryMmap {
        &self.ram.memory
    }

    /// Reads guest memory (tests and diagnostics).
    pub fn read_guest(&self, addr: u64, buf: &mut [u8]) -> bool {
        use vm_memory::Bytes;
        self.ram.memory.read_slice(buf, GuestAddress(addr)).is_ok()
    }
}
