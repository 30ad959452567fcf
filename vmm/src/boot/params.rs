//! The Linux zero page (`struct boot_params`): setup header fields and the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, ZERO_PAGE_START};
use crate::error::{Error, Result};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_UNDEFINED: u8 = 0xff;
/// Kernel accepts initrd anywhere below this when its header does not say (ELF boot).
pub const DEFAULT_INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// COMMAND_LINE_SIZE of x86 Linux for kernels whose header does not say.
pub const DEFAULT_CMDLINE_SIZE: u32 = 2048;

/// Where things were placed, for the zero page.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootPlacement {
    pub cmdline_addr: u64,
    /// Length including the terminating NUL.
    pub cmdline_size: u32,
    pub initrd_addr: u64,
    pub initrd_size: u64,
}

/// A setup header for kernels loaded as ELF (no header in the image).
pub fn elf_setup_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        kernel_alignment: 0x0100_0000,
        initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
        cmdline_size: DEFAULT_CMDLINE_SIZE,
        ..Default::default()
    }
}

/// The e820 map for RAM `low_end` bytes from 0 (ends at or below the MMIO gap) plus `high` bytes
/// from 4 GiB.
pub fn e820_map(low_end: u64, high: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry { addr: 0, size: EBDA_START, r#type: E820_RAM },
        boot_e820_entry { addr: EBDA_START, size: HIMEM_START - EBDA_START, r#type: E820_RESERVED },
    ];
    if low_end > HIMEM_START {
        map.push(boot_e820_entry { addr: HIMEM_START, size: low_end - HIMEM_START, r#type: E820_RAM });
    }
    if high > 0 {
        map.push(boot_e820_entry { addr: MMIO_GAP_END, size: high, r#type: E820_RAM });
    }
    map
}

/// Fills the zero page from the kernel's setup header and the placement.
pub fn build(hdr: setup_header, place: &BootPlacement, e820: &[boot_e820_entry]) -> Result<boot_params> {
    let mut params = boot_params { hdr, ..Default::default() };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = place.cmdline_addr as u32;
    params.ext_cmd_line_ptr = (place.cmdline_addr >> 32) as u32;
    params.hdr.cmdline_size = place.cmdline_size;
    params.hdr.ramdisk_image = place.initrd_addr as u32;
    params.ext_ramdisk_image = (place.initrd_addr >> 32) as u32;
    params.hdr.ramdisk_size = place.initrd_size as u32;
    params.ext_ramdisk_size = (place.initrd_size >> 32) as u32;
    if e820.len() > params.e820_table.len() {
        return Err(Error::Internal("more e820 entries than the zero page holds"));
    }
    params.e820_table[..e820.len()].copy_from_slice(e820);
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the zero page at its fixed address.
pub fn write(mem: &GuestMemoryMmap, params: &boot_params) -> Result<()> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START)).map_err(Error::guest_write("zero page"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::MMIO_GAP_START;

    #[test]
    fn e820_for_small_and_large_guests() {
        let small = e820_map(512 << 20, 0);
        assert_eq!(small.len(), 3);
        assert_eq!((small[0].addr, small[0].size, small[0].r#type), (0, 0x9fc00, E820_RAM));
        assert_eq!({ small[1].r#type }, E820_RESERVED);
        assert_eq!(small[1].addr + small[1].size, HIMEM_START);
        assert_eq!((small[2].addr, small[2].addr + small[2].size), (HIMEM_START, 512 << 20));

        let big = e820_map(MMIO_GAP_START, 1 << 30);
        assert_eq!(big.len(), 4);
        assert_eq!((big[3].addr, big[3].size), (1 << 32, 1 << 30));
        // No RAM entry touches the MMIO hole.
        for e in &big {
            let (a, b) = (e.addr, e.addr + e.size);
            assert!(b <= MMIO_GAP_START || a >= MMIO_GAP_END);
        }
    }

    #[test]
    fn zero_page_fields() {
        let hdr = elf_setup_header();
        let place =
            BootPlacement { cmdline_addr: 0x20000, cmdline_size: 12, initrd_addr: 0x1f00_0000, initrd_size: 4096 };
        let p = build(hdr, &place, &e820_map(1 << 30, 0)).unwrap();
        let h = p.hdr;
        assert_eq!({ h.type_of_loader }, 0xff);
        assert_eq!({ h.boot_flag }, 0xaa55);
        assert_eq!({ h.header }, HDRS_MAGIC);
        assert_eq!({ h.cmd_line_ptr }, 0x20000);
        assert_eq!({ h.cmdline_size }, 12);
        assert_eq!({ h.ramdisk_image }, 0x1f00_0000);
        assert_eq!({ h.ramdisk_size }, 4096);
        assert_eq!({ p.e820_entries }, 3);

        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&m, &p).unwrap();
        // boot_flag sits at 0x1fe and "HdrS" at 0x202 of the zero page, per the boot protocol.
        assert_eq!(m.read_obj::<u16>(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap(), 0xaa55);
        assert_eq!(m.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + 0x202)).unwrap(), HDRS_MAGIC);
        assert_eq!(m.read_obj::<u8>(GuestAddress(ZERO_PAGE_START + 0x1e8)).unwrap(), 3, "e820_entries");
        assert_eq!(m.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + 0x228)).unwrap(), 0x20000, "cmd_line_ptr");
    }
}
