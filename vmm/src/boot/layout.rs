//! Fixed guest-physical addresses of the x86_64 boot layout. Everything below 1 MiB that the
//! VMM writes lives here so that overlaps are visible in one place (and tested below).

/// Global descriptor table (6 entries, see `gdt::boot_gdt`).
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table: empty (limit 7) until the kernel installs its own.
pub const IDT_START: u64 = 0x540;
/// The Linux "zero page" (`struct boot_params`), passed in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot CPU (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table; its address goes to CR3.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table: 4 entries, one per GiB below 4 GiB.
pub const PDPT_START: u64 = 0xa000;
/// Four page directories of 512 x 2 MiB entries each (0xb000..0xf000).
pub const PD_START: u64 = 0xb000;
/// How many GiB the boot page tables identity-map.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Hard cap on the command line the VMM will place (the kernel's own limit is in its header).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the area reserved for the MP table (last KiB of conventional memory, as the MP
/// specification requires for the floating pointer), up to the BIOS area end.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of conventional memory usable by the guest (e820 RAM below this).
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy BIOS/VGA hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (devices, IOAPIC, LAPIC); RAM stops here and resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where virtio-mmio transports are placed, one 4 KiB window each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IOAPIC registers (fixed by the in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Three pages KVM needs for the Intel TSS (`KVM_SET_TSS_ADDR`), inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Identity-map page KVM needs on Intel (`KVM_SET_IDENTITY_MAP_ADDR`), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

// The stack grows down from just below the page tables and must not reach the zero page.
const _: () = assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(KVM_IDENTITY_MAP_ADDRESS + 0x1000 <= KVM_TSS_ADDRESS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_structures_do_not_overlap() {
        // (start, end) of every structure below 1 MiB.
        let mut areas = [
            (GDT_START, GDT_START + 6 * 8),
            (IDT_START, IDT_START + 8),
            (ZERO_PAGE_START, ZERO_PAGE_START + 0x1000),
            (PML4_START, PML4_START + 0x1000),
            (PDPT_START, PDPT_START + 0x1000),
            (PD_START, PD_START + IDENTITY_MAPPED_GIB * 0x1000),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, HIMEM_START),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(w[0].1 <= w[1].0, "{:x?} overlaps {:x?}", w[0], w[1]);
        }
    }

    #[test]
    fn mmio_hole_holds_the_fixed_devices() {
        for addr in [VIRTIO_MMIO_START, IOAPIC_START, LAPIC_START, KVM_TSS_ADDRESS, KVM_IDENTITY_MAP_ADDRESS] {
            assert!((MMIO_GAP_START..MMIO_GAP_END).contains(&addr));
        }
    }
}
