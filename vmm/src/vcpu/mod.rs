//! vCPUs: per-vCPU setup (CPUID, MSRs, LAPIC, boot registers) and the run loop that dispatches
//! exits to the port bus. One thread per vCPU; the first guest exit ends them all.

use std::sync::Arc;

use kvm_bindings::{
    kvm_lapic_state, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::{cpuid, msr, regs};
use crate::devices::{MmioBus, PioBus};
use crate::error::{Error, Result};
use crate::exit::{ExitLatch, GuestExit};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0b100;
const APIC_MODE_EXTINT: u32 = 0b111;

/// Where the boot CPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub rip: u64,
    pub cr3: u64,
}

/// One virtual CPU.
pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
    pio: Arc<PioBus>,
    mmio: Arc<MmioBus>,
    latch: Arc<ExitLatch>,
}

fn set_lvt(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = lapic.regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

impl Vcpu {
    /// Logs where the guest was (a crash without a console message is otherwise blind).
    fn log_state(&self, why: &str) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => tracing::warn!(
                "vcpu{} {why}: rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} idt={:#x}+{:#x} cs={:#x}",
                self.id, r.rip, r.rsp, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.idt.base, s.idt.limit, s.cs.selector
            ),
            _ => tracing::warn!("vcpu{} {why}: registers unavailable", self.id),
        }
    }

    pub fn new(id: u8, fd: VcpuFd, pio: Arc<PioBus>, mmio: Arc<MmioBus>, latch: Arc<ExitLatch>) -> Self {
        Vcpu { id, fd, pio, mmio, latch }
    }

    /// CPUID must be set before MSRs: KVM hides CPUID-dependent MSRs otherwise.
    pub fn configure(&self, supported: &CpuId, count: u8, tsc_deadline: bool, boot: Option<BootEntry>) -> Result<()> {
        let mut cpuid = supported.clone();
        cpuid::patch(cpuid.as_mut_slice(), cpuid::VcpuTopology { id: self.id, count, tsc_deadline });
        self.fd.set_cpuid2(&cpuid).map_err(Error::kvm("KVM_SET_CPUID2"))?;

        // KVM_SET_MSRS stops at the first MSR it refuses; skip that one and set the rest.
        let entries = msr::boot_msrs();
        let mut rest = &entries[..];
        while !rest.is_empty() {
            let msrs = Msrs::from_entries(rest).map_err(|_| Error::Internal("boot MSR list too long"))?;
            let set = self.fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
            if let Some(refused) = rest.get(set) {
                tracing::warn!("KVM refused boot MSR {:#x}; the guest starts without it", refused.index);
            }
            rest = rest.get(set + 1..).unwrap_or_default();
        }

        let mut lapic = self.fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
        set_lvt(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        self.fd.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))?;

        // Application processors wait for INIT/SIPI from the boot CPU; only it gets registers.
        if let Some(entry) = boot {
            self.fd.set_regs(&regs::boot_regs(entry.rip)).map_err(Error::kvm("KVM_SET_REGS"))?;
            self.fd.set_fpu(&regs::boot_fpu()).map_err(Error::kvm("KVM_SET_FPU"))?;
            let sregs = self.fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
            self.fd.set_sregs(&regs::long_mode_sregs(sregs, entry.cr3)).map_err(Error::kvm("KVM_SET_SREGS"))?;
        }
        Ok(())
    }

    /// Runs until the guest (or the VMM) ends the VM; records why in the latch.
    pub fn run(mut self) {
        let mut exits: u64 = 0;
        loop {
            if let Some(reason) = self.latch.get() {
                // Where a vCPU was when the VM was stopped from outside: for a guest that hung,
                // this is the first clue.
                if let Ok(regs) = self.fd.get_regs() {
                    if matches!(reason, GuestExit::Timeout(_)) {
                        tracing::warn!("vcpu{} was at rip {:#x} after {exits} exits", self.id, regs.rip);
                    } else {
                        tracing::debug!("vcpu{} stopped at rip {:#x} after {exits} exits", self.id, regs.rip);
                    }
                }
                return;
            }
            exits += 1;
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => {
                    self.latch.set(GuestExit::KvmFailure { vcpu: self.id, reason: format!("KVM_RUN failed: {e}") });
                    return;
                }
            };
            let outcome = match exit {
                VcpuExit::IoOut(port, data) => {
                    if !self.pio.write(port, data) {
                        tracing::trace!("vcpu{}: unclaimed OUT {port:#x}", self.id);
                    }
                    None
                }
                VcpuExit::IoIn(port, data) => {
                    self.pio.read(port, data);
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.mmio.read(addr, data);
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !self.mmio.write(addr, data) {
                        tracing::trace!("vcpu{}: unclaimed MMIO write {addr:#x}", self.id);
                    }
                    None
                }
                VcpuExit::Hlt => None,
                VcpuExit::Shutdown => {
                    self.log_state("triple fault");
                    Some(GuestExit::TripleFault { vcpu: self.id })
                }
                VcpuExit::SystemEvent(kind, _) => Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => GuestExit::Reset,
                    KVM_SYSTEM_EVENT_CRASH => GuestExit::Crash,
                    other => GuestExit::KvmFailure { vcpu: self.id, reason: format!("unknown system event {other}") },
                }),
                VcpuExit::FailEntry(reason, cpu) => Some(GuestExit::KvmFailure {
                    vcpu: self.id,
                    reason: format!("VM entry failed (hardware reason {reason:#x}, host cpu {cpu})"),
                }),
                VcpuExit::InternalError => {
                    Some(GuestExit::KvmFailure { vcpu: self.id, reason: "KVM internal error".into() })
                }
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
                other => Some(GuestExit::KvmFailure { vcpu: self.id, reason: format!("unexpected exit {other:?}") }),
            };
            if let Some(reason) = outcome {
                self.latch.set(reason);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_bits() {
        let mut l = kvm_lapic_state::default();
        l.regs[APIC_LVT0 + 2] = 1; // a set mask bit (16) must survive
        set_lvt(&mut l, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt(&mut l, APIC_LVT1, APIC_MODE_NMI);
        let read = |o: usize| {
            u32::from_le_bytes([l.regs[o] as u8, l.regs[o + 1] as u8, l.regs[o + 2] as u8, l.regs[o + 3] as u8])
        };
        assert_eq!(read(APIC_LVT0), 0x1_0700);
        assert_eq!(read(APIC_LVT1), 0x400);
    }
}
