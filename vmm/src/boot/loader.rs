//! Kernel, initramfs and command line placement. The kernel may be a bzImage (booted at its
//! 64-bit entry, load address + 0x200) or an ELF vmlinux (booted at its ELF entry).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use super::params::{self, DEFAULT_INITRD_ADDR_MAX};
use crate::error::{Error, Result};

/// Offset of the 64-bit entry point from the protected-mode load address of a bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;

/// The two kernel formats we boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub format: KernelFormat,
    /// Guest-physical address of the 64-bit entry point.
    pub entry: u64,
    /// First byte after the loaded image.
    pub end: u64,
    /// First byte the running kernel may still need (decompression buffer included).
    pub reserved_end: u64,
    pub header: setup_header,
}

/// Tells a bzImage from an ELF vmlinux by their magic numbers.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && &head[..4] == b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Opens the kernel at `path` and tells its format from its first bytes.
fn open_kernel(path: &Path) -> Result<(File, KernelFormat)> {
    let read_err = |source| Error::KernelRead { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(read_err)?;
    let mut head = vec![0u8; 0x400];
    let n = read_up_to(&mut file, &mut head).map_err(read_err)?;
    head.truncate(n);
    let format = detect_format(&head).ok_or_else(|| Error::KernelFormat { path: path.to_owned() })?;
    Ok((file, format))
}

/// Whether `path` is a kernel this loader takes (readable, a bzImage or an ELF vmlinux),
/// checked before any VM exists.
pub fn check_kernel(path: &Path) -> Result<KernelFormat> {
    open_kernel(path).map(|(_, format)| format)
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let (mut file, format) = open_kernel(path)?;
    let load_err =
        |e: linux_loader::loader::Error| Error::KernelLoad { path: path.to_owned(), reason: describe_loader_error(&e) };
    match format {
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let hdr = r.setup_header.ok_or_else(|| Error::KernelFormat { path: path.to_owned() })?;
            let version = hdr.version;
            let xloadflags = hdr.xloadflags;
            if version < 0x020c {
                return Err(Error::KernelTooOld { path: path.to_owned(), major: version >> 8, minor: version & 0xff });
            }
            if xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::KernelNot64Bit { path: path.to_owned() });
            }
            // The kernel decompresses itself to pref_address and needs init_size bytes there.
            let init_size = u64::from(hdr.init_size);
            let pref_address = hdr.pref_address;
            Ok(LoadedKernel {
                format,
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                end: r.kernel_end,
                reserved_end: r.kernel_end.max(pref_address.saturating_add(init_size)),
                header: hdr,
            })
        }
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            Ok(LoadedKernel {
                format,
                entry: r.kernel_load.0,
                end: r.kernel_end,
                reserved_end: r.kernel_end,
                header: params::elf_setup_header(),
            })
        }
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn describe_loader_error(e: &linux_loader::loader::Error) -> String {
    use linux_loader::loader::Error as E;
    match e {
        E::MemoryOverflow => "it does not fit in guest memory".into(),
        E::InvalidKernelStartAddress => "its load address is below 1 MiB".into(),
        other => format!("{other}"),
    }
}

/// Chooses where the initramfs goes: as high as possible in low RAM, page-aligned, below the
/// kernel's `initrd_addr_max` and above everything the kernel still needs.
pub fn place_initrd(low_ram_end: u64, size: u64, kernel: &LoadedKernel) -> Option<u64> {
    let top = low_ram_end.min(initrd_addr_max(kernel).saturating_add(1));
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel.reserved_end).then_some(addr)
}

fn initrd_addr_max(kernel: &LoadedKernel) -> u64 {
    match kernel.header.initrd_addr_max {
        0 => u64::from(DEFAULT_INITRD_ADDR_MAX),
        m => u64::from(m),
    }
}

/// Loads the initramfs at `path`; returns (address, size).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, low_ram_end: u64, kernel: &LoadedKernel) -> Result<(u64, u64)> {
    let data = std::fs::read(path).map_err(|source| Error::InitramfsRead { path: path.to_owned(), source })?;
    let size = data.len() as u64;
    let addr = place_initrd(low_ram_end, size, kernel).ok_or_else(|| Error::InitramfsTooLarge {
        path: path.to_owned(),
        size,
        floor: kernel.reserved_end,
        limit: low_ram_end.min(initrd_addr_max(kernel).saturating_add(1)),
    })?;
    mem.write_slice(&data, GuestAddress(addr)).map_err(Error::guest_write("initramfs"))?;
    Ok((addr, size))
}

/// Writes the NUL-terminated command line; returns its size including the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, kernel: &LoadedKernel) -> Result<u32> {
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::CmdlineNul);
    }
    let kernel_max = match kernel.header.cmdline_size {
        0 => params::DEFAULT_CMDLINE_SIZE as usize,
        m => m as usize,
    };
    let max = kernel_max.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong { len: cmdline.len(), max });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START)).map_err(Error::guest_write("kernel command line"))?;
    Ok(bytes.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(reserved_end: u64, initrd_addr_max: u32, cmdline_size: u32) -> LoadedKernel {
        let mut header = params::elf_setup_header();
        header.initrd_addr_max = initrd_addr_max;
        header.cmdline_size = cmdline_size;
        LoadedKernel { format: KernelFormat::BzImage, entry: 0x100200, end: 0x60_0000, reserved_end, header }
    }

    #[test]
    fn detects_formats() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let k = kernel(0x300_0000, 0x7fff_ffff, 2048);
        let a = place_initrd(512 << 20, 10_000, &k).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 10_000 <= 512 << 20);
        assert!((512 << 20) - a < 10_000 + 4096);
        // Respects initrd_addr_max below the end of RAM.
        let k2 = kernel(0x300_0000, 0x0fff_ffff, 2048);
        let b = place_initrd(1 << 30, 4096, &k2).unwrap();
        assert_eq!(b, 0x1000_0000 - 4096);
        // Refuses to overlap the kernel's working area.
        assert_eq!(place_initrd(64 << 20, 62 << 20, &k), None);
        assert_eq!(place_initrd(1 << 20, 2 << 20, &k), None);
    }

    #[test]
    fn cmdline_limits() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let k = kernel(0, 0, 16);
        assert_eq!(write_cmdline(&m, "console=ttyS0", &k).unwrap(), 14);
        let mut buf = [0u8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&m, "x".repeat(17).as_str(), &k),
            Err(Error::CmdlineTooLong { len: 17, max: 16 })
        ));
        assert!(matches!(write_cmdline(&m, "a\0b", &k), Err(Error::CmdlineNul)));
    }

    #[test]
    fn rejects_files_that_are_not_kernels() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-loader-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, b"not a kernel at all").unwrap();
        assert!(matches!(load_kernel(&m, &junk), Err(Error::KernelFormat { .. })));
        // A header that claims HdrS but is truncated must fail without panicking.
        let mut fake = vec![0u8; 0x300];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&junk, &fake).unwrap();
        assert!(load_kernel(&m, &junk).is_err());
        assert!(matches!(load_kernel(&m, &dir.join("missing")), Err(Error::KernelRead { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
