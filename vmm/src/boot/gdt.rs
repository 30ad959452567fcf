//! The boot GDT and the matching KVM segment registers for 64-bit entry.

use kvm_bindings::kvm_segment;

/// Access/flags words (bits 8..24 of the descriptor's high dword, packed as in Firecracker's
/// notation): present, ring 0.
const CODE64: u16 = 0xa09b; // L=1, execute/read, accessed
const DATA: u16 = 0xc093; // 32-bit, read/write, accessed
const TSS: u16 = 0x808b; // busy 64-bit TSS

/// The boot GDT with the selectors the boot protocol names (`__BOOT_CS` = 0x10, `__BOOT_DS` =
/// 0x18): two NULL entries, code, data, then a 64-bit TSS, which takes two entries.
pub fn boot_gdt() -> [u64; 6] {
    [0, 0, gdt_entry(CODE64, 0, 0xfffff), gdt_entry(DATA, 0, 0xfffff), gdt_entry(TSS, 0, 0xfffff), 0]
}

/// Selector index of the code segment in [`boot_gdt`].
pub const CODE_INDEX: u8 = 2;
/// Selector index of the data segment.
pub const DATA_INDEX: u8 = 3;
/// Selector index of the TSS.
pub const TSS_INDEX: u8 = 4;

/// Encodes one 8-byte segment descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = u64::from(flags);
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decodes a descriptor into the form KVM's `set_sregs` wants.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages; KVM wants bytes.
    let limit = if g == 1 { (raw_limit << 12) | 0xfff } else { raw_limit };
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_standard_flat_descriptors() {
        assert_eq!(gdt_entry(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(TSS, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn code_segment_is_long_mode_ring0() {
        let gdt = boot_gdt();
        let cs = kvm_segment_from_gdt(gdt[CODE_INDEX as usize], CODE_INDEX);
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.selector, 0x10);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.type_, 0xb);
        let ds = kvm_segment_from_gdt(gdt[DATA_INDEX as usize], DATA_INDEX);
        assert_eq!((ds.l, ds.db, ds.type_, ds.selector), (0, 1, 3, 0x18));
        let tr = kvm_segment_from_gdt(gdt[TSS_INDEX as usize], TSS_INDEX);
        assert_eq!((tr.type_, tr.s, tr.unusable), (0xb, 0, 0));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0x000a_bcde);
        let s = kvm_segment_from_gdt(e, 2);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0x000a_bcde);
        assert_eq!(s.g, 0);
        assert_eq!(kvm_segment_from_gdt(0, 0).unusable, 1);
    }
}
