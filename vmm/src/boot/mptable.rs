//! Intel MultiProcessor Specification 1.4 table. Our guest kernel has no ACPI, so this table is
//! how it learns the CPUs, the IOAPIC and the ISA interrupt routing (`--smp N` needs it).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{HIMEM_START, IOAPIC_START, LAPIC_START, MPTABLE_START};
use crate::error::{Error, Result};

/// Highest vCPU count the table can describe: xAPIC IDs are 8 bits, 0xff is broadcast, and the
/// IOAPIC takes the ID after the last CPU.
pub const MAX_CPUS: u8 = 254;
/// IOAPIC pins the in-kernel irqchip provides.
const IOAPIC_PINS: u8 = 24;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
// Family 6 signature and the FPU + APIC feature bits, as real firmware reports them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Size in bytes of the whole table (floating pointer + configuration table) for `cpus` CPUs.
pub fn table_size(cpus: u8) -> usize {
    FLOATING_LEN + config_table_len(cpus)
}

fn config_table_len(cpus: u8) -> usize {
    HEADER_LEN
        + CPU_ENTRY_LEN * usize::from(cpus)
        + SMALL_ENTRY_LEN // bus
        + SMALL_ENTRY_LEN // ioapic
        + SMALL_ENTRY_LEN * usize::from(IOAPIC_PINS)
        + SMALL_ENTRY_LEN * 2 // LINT0, LINT1
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg()
}

/// Builds the table for `cpus` CPUs as it will sit at `MPTABLE_START`.
pub fn build(cpus: u8) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::VcpuCount(u64::from(cpus), u64::from(MAX_CPUS)));
    }
    let ioapic_id = cpus; // first ID after the CPUs
    let config_addr = MPTABLE_START + FLOATING_LEN as u64;

    let mut cfg = Vec::with_capacity(config_table_len(cpus));
    cfg.extend_from_slice(b"PCMP");
    cfg.extend_from_slice(&(config_table_len(cpus) as u16).to_le_bytes());
    cfg.push(4); // spec revision 1.4
    cfg.push(0); // checksum, patched below
    cfg.extend_from_slice(b"MICRODIB"); // OEM id, 8 bytes
    cfg.extend_from_slice(b"microVM     "); // product id, 12 bytes
    cfg.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    cfg.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    let entries = u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2;
    cfg.extend_from_slice(&entries.to_le_bytes());
    cfg.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    cfg.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    cfg.push(0); // extended table checksum
    cfg.push(0); // reserved
    debug_assert_eq!(cfg.len(), HEADER_LEN);

    for id in 0..cpus {
        cfg.push(ENTRY_PROCESSOR);
        cfg.push(id);
        cfg.push(APIC_VERSION);
        cfg.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        cfg.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        cfg.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        cfg.extend_from_slice(&[0; 8]);
    }
    cfg.extend_from_slice(&[ENTRY_BUS, 0]);
    cfg.extend_from_slice(b"ISA   ");
    cfg.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    cfg.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    // ISA IRQ n is wired to IOAPIC pin n (the in-kernel irqchip's default GSI routing).
    for pin in 0..IOAPIC_PINS {
        cfg.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
    }
    // LINT0 is the 8259 (ExtINT), LINT1 the NMI, on every local APIC (0xff).
    cfg.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    cfg.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    debug_assert_eq!(cfg.len(), config_table_len(cpus));
    cfg[7] = checksum(&cfg);

    let mut table = Vec::with_capacity(table_size(cpus));
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&(config_addr as u32).to_le_bytes());
    table.push(1); // length in 16-byte units
    table.push(4); // spec revision
    table.push(0); // checksum, patched below
    table.extend_from_slice(&[0; 5]); // feature bytes: 0 = configuration table present
    table[10] = checksum(&table[..FLOATING_LEN]);
    table.extend_from_slice(&cfg);
    Ok(table)
}

/// Writes the table for `cpus` CPUs at `MPTABLE_START`.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    let table = build(cpus)?;
    // The table must stay in the e820-reserved area below 1 MiB.
    debug_assert!(MPTABLE_START + table.len() as u64 <= HIMEM_START);
    mem.write_slice(&table, GuestAddress(MPTABLE_START)).map_err(Error::guest_write("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_zero_and_signatures_present() {
        for cpus in [1u8, 2, 7, 64, MAX_CPUS] {
            let t = build(cpus).unwrap();
            assert_eq!(t.len(), table_size(cpus));
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum, {cpus} cpus");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_START + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[0..4], b"PCMP");
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0, "config table checksum, {cpus} cpus");
            assert!(MPTABLE_START + t.len() as u64 <= HIMEM_START);
        }
    }

    #[test]
    fn lists_every_cpu_once_with_one_bsp() {
        let t = build(4).unwrap();
        let cfg = &t[16..];
        let count = u16::from_le_bytes([cfg[34], cfg[35]]);
        let mut off = HEADER_LEN;
        let (mut cpus, mut bsps, mut seen) = (Vec::new(), 0, 0);
        while off < cfg.len() {
            seen += 1;
            match cfg[off] {
                ENTRY_PROCESSOR => {
                    cpus.push(cfg[off + 1]);
                    if cfg[off + 3] & CPU_BSP != 0 {
                        bsps += 1;
                    }
                    off += CPU_ENTRY_LEN;
                }
                ENTRY_IOAPIC => {
                    assert_eq!(cfg[off + 1], 4, "IOAPIC id follows the CPUs");
                    off += SMALL_ENTRY_LEN;
                }
                1 | 3 | 4 => off += SMALL_ENTRY_LEN,
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(seen, count);
        assert_eq!(cpus, vec![0, 1, 2, 3]);
        assert_eq!(bsps, 1);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(build(0), Err(Error::VcpuCount(0, _))));
        assert!(matches!(build(255), Err(Error::VcpuCount(255, _))));
    }
}
