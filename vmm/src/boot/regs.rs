//! Register state for the boot CPU at the kernel's 64-bit entry point: long mode, paging on with
//! the identity tables, flat segments from the boot GDT, RSI pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, ZERO_PAGE_START};
use crate::error::{Error, Result};

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// General-purpose registers at entry.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU state as after FNINIT, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

/// Writes the GDT and an empty IDT into guest memory.
pub fn write_descriptor_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let gdt = gdt::boot_gdt();
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(GDT_START)).map_err(Error::guest_write("GDT"))?;
    mem.write_obj(0u64, GuestAddress(IDT_START)).map_err(Error::guest_write("IDT"))
}

/// Turns the special registers KVM reported into 64-bit mode with paging rooted at `cr3`.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    let gdt = gdt::boot_gdt();
    let code = gdt::kvm_segment_from_gdt(gdt[CODE_INDEX as usize], CODE_INDEX);
    let data = gdt::kvm_segment_from_gdt(gdt[DATA_INDEX as usize], DATA_INDEX);
    let tss = gdt::kvm_segment_from_gdt(gdt[TSS_INDEX as usize], TSS_INDEX);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_bits() {
        let s = long_mode_sregs(kvm_sregs::default(), 0x9000);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.selector), (1, 0x10));
        assert_eq!((s.ds.selector, s.tr.selector), (0x18, 0x20));
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_START, 47));
        let r = boot_regs(0x100200);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100200, ZERO_PAGE_START, 2));
    }

    #[test]
    fn descriptor_tables_land_in_memory() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_descriptor_tables(&m).unwrap();
        let code: u64 = m.read_obj(GuestAddress(GDT_START + 0x10)).unwrap();
        assert_eq!(code, 0x00af_9b00_0000_ffff);
    }
}
