//! Identity-mapped page tables for the 64-bit entry point: 2 MiB pages covering the first
//! 4 GiB. 1 GiB pages are avoided on purpose: some hosts (and nested setups) triple-fault on them.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IDENTITY_MAPPED_GIB, PDPT_START, PD_START, PML4_START};
use crate::error::{Error, Result};

const PRESENT_WRITABLE: u64 = 0b11;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Writes PML4, PDPT and page directories; returns the value for CR3.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64> {
    let w = Error::guest_write;
    mem.write_obj(PDPT_START | PRESENT_WRITABLE, GuestAddress(PML4_START)).map_err(w("PML4"))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_START + gib * 0x1000;
        mem.write_obj(pd | PRESENT_WRITABLE, GuestAddress(PDPT_START + gib * 8)).map_err(w("PDPT"))?;
        let mut entries = [0u64; 512];
        for (i, e) in entries.iter_mut().enumerate() {
            let phys = (gib << 30) | ((i as u64) << 21);
            *e = phys | PRESENT_WRITABLE | PAGE_SIZE_2M;
        }
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(pd)).map_err(w("page directory"))?;
    }
    Ok(PML4_START)
}

/// Walks the tables written above the way the CPU would (for tests and sanity checks):
/// returns the physical address `virt` maps to, or None if unmapped.
pub fn translate(mem: &GuestMemoryMmap, cr3: u64, virt: u64) -> Option<u64> {
    let pml4e: u64 = mem.read_obj(GuestAddress(cr3 + ((virt >> 39) & 0x1ff) * 8)).ok()?;
    if pml4e & 1 == 0 {
        return None;
    }
    let pdpte: u64 = mem.read_obj(GuestAddress((pml4e & !0xfff) + ((virt >> 30) & 0x1ff) * 8)).ok()?;
    if pdpte & 1 == 0 {
        return None;
    }
    let pde: u64 = mem.read_obj(GuestAddress((pdpte & !0xfff) + ((virt >> 21) & 0x1ff) * 8)).ok()?;
    if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
        return None;
    }
    Some((pde & !0x1f_ffff) | (virt & 0x1f_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn identity_maps_first_four_gib_with_2m_pages() {
        let m = mem();
        let cr3 = write_identity_page_tables(&m).unwrap();
        assert_eq!(cr3, PML4_START);
        for addr in [0u64, 0x1234, 0x10_0000, 0x3fff_ffff, 0x4000_0000, 0xbfff_f000, 0xffff_ffff] {
            assert_eq!(translate(&m, cr3, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&m, cr3, 0x1_0000_0000), None);
        // Every PD entry is a 2 MiB page, never a 1 GiB PDPT leaf.
        for gib in 0..IDENTITY_MAPPED_GIB {
            let pdpte: u64 = m.read_obj(GuestAddress(PDPT_START + gib * 8)).unwrap();
            assert_eq!(pdpte & PAGE_SIZE_2M, 0);
            let pde: u64 = m.read_obj(GuestAddress(PD_START + gib * 0x1000 + 8)).unwrap();
            assert_eq!(pde & PAGE_SIZE_2M, PAGE_SIZE_2M);
        }
    }

    #[test]
    fn fails_cleanly_without_room() {
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        assert!(matches!(write_identity_page_tables(&tiny), Err(Error::GuestWrite { .. })));
    }
}
