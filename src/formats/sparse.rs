//! Reading a sparse raw disk: where its data is (SEEK_DATA/SEEK_HOLE), so the writers touch
//! only allocated ranges, and zero detection for allocated-but-zero blocks.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The allocated byte ranges `[start, end)` of `file` up to `len`, in order. File systems
/// without SEEK_DATA report the whole file as data.
pub fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let seek = |off: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let off = libc::off_t::try_from(off).map_err(io::Error::other)?;
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(vec![(0, len)]),
            Err(e) => return Err(e),
        };
        if start >= len {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        out.push((start, end));
        pos = end;
    }
    Ok(out)
}

/// Whether every byte is zero. OR-folding fixed-size chunks lets the compiler vectorise it;
/// it runs over every block of every image.
pub fn is_zero(buf: &[u8]) -> bool {
    let chunks = buf.chunks_exact(64);
    let tail = chunks.remainder();
    chunks.into_iter().all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0) && tail.iter().all(|&b| b == 0)
}

/// Fills `buf` from `file` at `offset`; bytes past the end of the file read as zero.
pub fn read_block(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The block indices (of `block` bytes) that overlap data, in order, for a disk of `len` bytes.
pub fn blocks_with_data(extents: &[(u64, u64)], block: u64) -> impl Iterator<Item = u64> + '_ {
    let mut last = None;
    extents.iter().flat_map(move |&(s, e)| s / block..e.div_ceil(block)).filter(move |&b| {
        let new = last.is_none_or(|l| b > l);
        if new {
            last = Some(b);
        }
        new
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn extents_and_blocks_of_a_sparse_file() {
        let p = std::env::temp_dir().join(format!("microdib-sparse-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"x", 3 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], (10 << 20) - 4096).unwrap();
        f.flush().unwrap();
        let ext = data_extents(&f, 10 << 20).unwrap();
        // tmpfs and ext4 report page/block-sized extents; at least the two regions are found.
        assert!(ext.iter().any(|&(s, e)| s <= 3 << 20 && e > 3 << 20), "{ext:?}");
        assert!(ext.iter().any(|&(s, e)| s <= (10 << 20) - 4096 && e == 10 << 20), "{ext:?}");
        let blocks: Vec<u64> = blocks_with_data(&ext, 2 << 20).collect();
        assert!(blocks.contains(&1) && blocks.contains(&4) && !blocks.contains(&0), "{blocks:?}");
        let mut sorted = blocks.clone();
        sorted.dedup();
        assert_eq!(sorted, blocks);
        let mut buf = vec![9u8; 8192];
        read_block(&f, (10 << 20) - 4096, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 1) && is_zero(&buf[4096..]));
        assert!(!is_zero(&buf) && is_zero(&[]) && !is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
        std::fs::remove_file(&p).unwrap();
    }
}
