//! Dynamic VHD from the raw target disk: what `vhd-util convert` made for virt-dib (footer copy,
//! dynamic header, BAT, 2 MiB blocks each behind an all-ones sector bitmap, footer), written
//! front to back so its checksums can be taken while it is written.

use std::fs::File;
use std::io::{self, Write};

use super::sparse::{blocks_with_data, data_extents, is_zero, read_block};

const BLOCK: u64 = 2 << 20;
const SECTOR: u64 = 512;
/// One bit per sector of a block, padded to a sector.
const BITMAP: u64 = (BLOCK / SECTOR / 8).next_multiple_of(SECTOR);
const FOOTER_LEN: usize = 512;
const DYN_HEADER_LEN: usize = 1024;
const UNUSED: u32 = u32::MAX;
/// The VHD format's limit (a 32-bit sector count in its CHS geometry and tools' checks).
const MAX_SIZE: u64 = 2040 << 30;
/// VHD timestamps count from 2000-01-01 00:00:00 UTC.
const VHD_EPOCH: u64 = 946_684_800;

/// What a conversion wrote.
#[derive(Debug, Clone, Copy)]
pub struct VhdSummary {
    pub virtual_size: u64,
    pub bytes_out: u64,
}

/// Writes `src` (a raw disk image) as a dynamic VHD to `out`. `progress` gets the number of
/// source bytes processed so far and stops the conversion by returning an error.
pub fn write_vhd(
    src: &File,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64) -> io::Result<()>,
) -> io::Result<VhdSummary> {
    let len = src.metadata()?.len();
    let size = len.div_ceil(SECTOR) * SECTOR;
    if size > MAX_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("VHD images are limited to 2040 GiB, not {size} bytes"),
        ));
    }
    let blocks = size.div_ceil(BLOCK);
    // First pass: which blocks hold anything but zeros (the data is in the page cache after
    // the build, so this costs memory bandwidth, not disk reads).
    let extents = data_extents(src, len)?;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut present = Vec::new();
    for b in blocks_with_data(&extents, BLOCK) {
        read_block(src, b * BLOCK, &mut buf)?;
        if !is_zero(&buf) {
            present.push(b);
        }
    }

    let bat_offset = (FOOTER_LEN + DYN_HEADER_LEN) as u64;
    let bat_len = (blocks * 4).next_multiple_of(SECTOR);
    let first_block = bat_offset + bat_len;
    let mut bat = vec![UNUSED; blocks as usize];
    for (i, &b) in present.iter().enumerate() {
        let sector = (first_block + i as u64 * (BITMAP + BLOCK)) / SECTOR;
        let entry = u32::try_from(sector).map_err(|_| io::Error::other("VHD block table overflow"))?;
        if let Some(e) = bat.get_mut(b as usize) {
            *e = entry;
        }
    }

    let footer = footer(size, first_footer_fields());
    out.write_all(&footer)?;
    out.write_all(&dynamic_header(bat_offset, blocks as u32))?;
    let mut bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_be_bytes()).collect();
    bat_bytes.resize(bat_len as usize, 0);
    out.write_all(&bat_bytes)?;
    let bitmap = vec![0xffu8; BITMAP as usize];
    for &b in &present {
        read_block(src, b * BLOCK, &mut buf)?;
        // The last block may run past the disk's end: those sectors read as zero.
        let keep = (size - b * BLOCK).min(BLOCK) as usize;
        buf[keep..].fill(0);
        out.write_all(&bitmap)?;
        out.write_all(&buf)?;
        progress(((b + 1) * BLOCK).min(len))?;
    }
    out.write_all(&footer)?;
    out.flush()?;
    progress(len)?;
    Ok(VhdSummary { virtual_size: size, bytes_out: first_block + present.len() as u64 * (BITMAP + BLOCK) + 512 })
}

/// Timestamp and unique id of a new image.
fn first_footer_fields() -> (u32, [u8; 16]) {
    let secs = crate::stamp::creation_time().max(VHD_EPOCH);
    ((secs - VHD_EPOCH) as u32, crate::stamp::random_uuid_bytes())
}

fn footer(size: u64, (timestamp, id): (u32, [u8; 16])) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // "reserved" feature bit, always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&(FOOTER_LEN as u64).to_be_bytes()); // the dynamic header
    f[24..28].copy_from_slice(&timestamp.to_be_bytes());
    // vhd-util's creator: qemu and Xen then take the size from the footer, not the geometry.
    f[28..32].copy_from_slice(b"tap\0");
    f[32..36].copy_from_slice(&0x0001_0003u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&3u32.to_be_bytes()); // dynamic disk
    f[68..84].copy_from_slice(&id);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

fn dynamic_header(bat_offset: u64, entries: u32) -> [u8; DYN_HEADER_LEN] {
    let mut h = [0u8; DYN_HEADER_LEN];
    h[0..8].copy_from_slice(b"cxsparse");
    h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    h[16..24].copy_from_slice(&bat_offset.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&entries.to_be_bytes());
    h[32..36].copy_from_slice(&(BLOCK as u32).to_be_bytes());
    let sum = checksum(&h);
    h[36..40].copy_from_slice(&sum.to_be_bytes());
    h
}

/// One's complement of the byte sum, taken with the checksum field zero.
fn checksum(b: &[u8]) -> u32 {
    !b.iter().fold(0u32, |a, &x| a.wrapping_add(u32::from(x)))
}

/// The VHD specification's CHS geometry for a size (cylinders, heads, sectors per track).
fn geometry(size: u64) -> (u16, u8, u8) {
    let total = (size / SECTOR).min(65535 * 16 * 255);
    let (spt, heads, cyl_times_heads) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let mut spt = 17;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            (spt, heads) = (31, 16);
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            (spt, heads) = (63, 16);
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    ((cyl_times_heads / heads) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn geometry_of_known_sizes() {
        // The specification's algorithm rounds cylinders down (as vhd-util and Hyper-V do; qemu's
        // own images round up by one cylinder to cover the size, 603 and 10403 here).
        assert_eq!(geometry(5 << 30), (10402, 16, 63));
        assert_eq!(geometry(20 << 20), (602, 4, 17));
        assert_eq!(geometry(2040 << 30), (65535, 16, 255));
    }

    #[test]
    fn qemu_reads_what_is_written() {
        let d = std::env::temp_dir().join(format!("microdib-vhd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let raw = d.join("disk.raw");
        let f = File::create(&raw).unwrap();
        f.set_len((9 << 20) + 512).unwrap();
        f.write_all_at(b"first", 0).unwrap();
        f.write_all_at(&vec![0u8; 2 << 20], 2 << 20).unwrap(); // allocated zeros: stays a hole in the VHD
        f.write_all_at(b"last", (9 << 20) + 508).unwrap();
        let img = d.join("disk.vhd");
        let mut out = std::io::BufWriter::new(File::create(&img).unwrap());
        let s = write_vhd(&File::open(&raw).unwrap(), &mut out, &mut |_| Ok(())).unwrap();
        drop(out);
        assert_eq!(s.bytes_out, std::fs::metadata(&img).unwrap().len());
        // Blocks 0 and 4 only.
        assert_eq!(s.bytes_out, 1536 + 512 + 2 * (512 + (2 << 20)) + 512);
        crate::formats::qcow2::tests::assert_qemu_agrees(&raw, &img, "vpc");
        let info = std::process::Command::new("qemu-img").args(["info", "--output=json"]).arg(&img).output().unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains(&format!("\"virtual-size\": {}", (9 << 20) + 512)), "{info}");
        assert!(info.contains("\"format\": \"vpc\""), "{info}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
