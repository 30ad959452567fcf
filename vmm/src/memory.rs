//! Guest RAM: one anonymous mapping below the 32-bit MMIO hole and, for large guests, a second
//! one from 4 GiB up.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};
use crate::error::{Error, Result};

const MIB: u64 = 1 << 20;
/// Below this a Linux guest with an initramfs cannot boot usefully.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Upper bound we accept (1 TiB); the host decides whether it can really back it.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The guest's RAM and where it sits.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    /// End of the RAM region that starts at 0.
    pub low_end: u64,
    /// Bytes of RAM from 4 GiB up (0 if none).
    pub high_size: u64,
}

/// Splits `size` bytes into the (low end, high size) pair.
pub fn split(size: u64) -> (u64, u64) {
    let low = size.min(MMIO_GAP_START);
    (low, size - low)
}

/// Whether `mib` MiB is a guest memory size we can give.
pub fn check_size(mib: u64) -> Result<()> {
    if mib < MIN_MEMORY_MIB {
        return Err(Error::MemoryTooSmall { given: mib, min: MIN_MEMORY_MIB });
    }
    if mib > MAX_MEMORY_MIB {
        return Err(Error::MemoryTooLarge { given: mib, max: MAX_MEMORY_MIB });
    }
    Ok(())
}

impl GuestRam {
    /// Maps `mib` MiB of guest RAM.
    pub fn new(mib: u64) -> Result<Self> {
        check_size(mib)?;
        let (low_end, high_size) = split(mib * MIB);
        let mut ranges = vec![(GuestAddress(0), low_end as usize)];
        if high_size > 0 {
            ranges.push((GuestAddress(MMIO_GAP_END), high_size as usize));
        }
        let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::GuestMemory { mib, source })?;
        for region in memory.iter() {
            if let Ok(addr) = region.get_host_address(MemoryRegionAddress(0)) {
                // SAFETY: the range is exactly the mapping vm-memory just created and owns.
                let rc = unsafe { libc::madvise(addr.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
                // Hosts without transparent huge pages say EINVAL; 4 KiB pages still work.
                if rc != 0 {
                    tracing::debug!("MADV_HUGEPAGE: {}", std::io::Error::last_os_error());
                }
            }
        }
        Ok(GuestRam { memory, low_end, high_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn small_guest_is_one_region() {
        let r = GuestRam::new(128).unwrap();
        assert_eq!((r.low_end, r.high_size), (128 * MIB, 0));
        assert_eq!(r.memory.num_regions(), 1);
        assert!(r.memory.write_obj(1u8, GuestAddress(128 * MIB - 1)).is_ok());
        assert!(r.memory.write_obj(1u8, GuestAddress(128 * MIB)).is_err());
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        assert_eq!(split(4096 * MIB), (MMIO_GAP_START, 1 << 30));
        assert_eq!(split(3072 * MIB), (MMIO_GAP_START, 0));
    }

    #[test]
    fn refuses_too_little_or_too_much() {
        assert!(matches!(GuestRam::new(16), Err(Error::MemoryTooSmall { given: 16, min: 64 })));
        assert!(matches!(GuestRam::new(MAX_MEMORY_MIB + 1), Err(Error::MemoryTooLarge { .. })));
    }
}
