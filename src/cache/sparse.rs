//! Copies a disk image with its holes kept: the file system is asked to share the extents
//! (FICLONE: btrfs, XFS) and otherwise only the extents holding data (SEEK_DATA/SEEK_HOLE) are
//! copied, with copy_file_range so the bytes stay in the kernel. A checkpoint is such a copy,
//! and so is a restore. Written here because the crates for this (reflink-copy, std::fs::copy)
//! fill the holes of a file system without shared extents, which is ext4, ours.
//!
//! Measured 2026-12-07 on our machine (ext4, no FICLONE): a 4 GiB disk holding 1.5 GiB takes
//! 2.3 s to copy and 0.8 s more to sync.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// The file system shares the extents: no byte was copied.
    Shared,
    /// These many bytes of data were copied; the rest are holes.
    Data(u64),
}

/// Copies `src` to the new file `dest` (which must not exist), holes kept, and syncs it.
pub fn copy_sparse(src: &Path, dest: &Path) -> io::Result<Copied> {
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    let to = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dest)?;
    let copied = copy_open(&from, &to, len);
    if copied.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    let copied = copied?;
    to.sync_all()?;
    Ok(copied)
}

/// Rewrites the existing file `dest` in place with `src`'s bytes, punching holes where `src` has
/// them, and syncs it: a restore into the disk file a running VM holds open (its guest has
/// unmounted the file system and dropped its buffers). Returns the bytes of data copied.
pub fn restore_into(src: &Path, dest: &Path) -> io::Result<u64> {
    let from = File::open(src)?;
    let len = from.metadata()?.len();
    let to = std::fs::OpenOptions::new().write(true).open(dest)?;
    to.set_len(len)?;
    let mut copied = 0;
    let mut at = 0;
    for (offset, length) in data_extents(&from, len)? {
        punch_hole(&to, at, offset - at)?;
        copy_range(&from, &to, offset, length)?;
        copied += length;
        at = offset + length;
    }
    punch_hole(&to, at, len - at)?;
    to.sync_all()?;
    Ok(copied)
}

/// Deallocates `len` bytes at `offset` (they read as zeros), the file's size kept.
fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (off, len) = (offset as libc::off_t, len as libc::off_t);
    let how = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on a descriptor we own; the result is checked.
    if unsafe { libc::fallocate(f.as_raw_fd(), how, off, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn copy_open(from: &File, to: &File, len: u64) -> io::Result<Copied> {
    // SAFETY: FICLONE on two descriptors we own; the result is checked.
    if unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(Copied::Shared);
    }
    to.set_len(len)?;
    let mut copied = 0;
    for (offset, length) in data_extents(from, len)? {
        copy_range(from, to, offset, length)?;
        copied += length;
    }
    Ok(Copied::Data(copied))
}

/// The (offset, length) of each run of `f`'s first `len` bytes that holds data; the rest are
/// holes.
pub fn data_extents(f: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(data) = seek(f, at, libc::SEEK_DATA)?.filter(|d| *d < len) else { break };
        let hole = seek(f, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        extents.push((data, hole - data));
        at = hole;
    }
    Ok(extents)
}

/// `lseek(fd, at, whence)`; None when SEEK_DATA finds no data after `at`.
fn seek(f: &File, at: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a descriptor we own; the result is checked.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Copies `len` bytes at `offset` from one file to the same offset of the other.
fn copy_range(from: &File, to: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (offset + done) as libc::loff_t;
        let mut off_out = off_in;
        let chunk = (len - done).min(1 << 30) as usize;
        // SAFETY: copy_file_range between two descriptors we own, with offsets we own; the
        // result is checked.
        let n = unsafe { libc::copy_file_range(from.as_raw_fd(), &mut off_in, to.as_raw_fd(), &mut off_out, chunk, 0) };
        match n {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                // Between file systems (tmpfs to ext4) or where the kernel has no such copy.
                return match e.raw_os_error() {
                    Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {
                        copy_range_by_reading(from, to, offset + done, len - done)
                    }
                    _ => Err(e),
                };
            }
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the source ended early")),
            n => done += n as u64,
        }
    }
    Ok(())
}

/// `copy_range` through a buffer, where copy_file_range cannot.
fn copy_range_by_reading(from: &File, to: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at = offset;
    read_range(from, offset, len, &mut |chunk| {
        to.write_all_at(chunk, at)?;
        at += chunk.len() as u64;
        Ok(())
    })
}

/// Reads `len` bytes of `f` at `offset`, a chunk at a time, each given to `each`.
pub fn read_range(f: &File, offset: u64, len: u64, each: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (1 << 20).min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = f.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended early"));
        }
        each(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use std::os::unix::fs::{FileExt, MetadataExt};

    const MIB: u64 = 1 << 20;

    /// A 64 MiB file with data at `extents` (offset, length, byte), the rest holes.
    fn sparse_file(path: &Path, extents: &[(u64, u64, u8)]) {
        let f = File::create(path).unwrap();
        f.set_len(64 * MIB).unwrap();
        for &(at, len, byte) in extents {
            f.write_all_at(&vec![byte; len as usize], at).unwrap();
        }
        f.sync_all().unwrap();
    }

    #[test]
    fn a_copy_has_the_same_bytes_and_only_the_data_is_copied() {
        let t = TempDir::new("sparse");
        let (src, dest) = (t.0.join("disk"), t.0.join("copy"));
        sparse_file(&src, &[(0, 4096, 1), (10 * MIB + 512, 3 * MIB, 2), (64 * MIB - 100, 100, 3)]);
        let copied = copy_sparse(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap());
        let allocated = std::fs::metadata(&dest).unwrap().blocks() * 512;
        match copied {
            Copied::Shared => {}
            Copied::Data(n) => {
                assert!(n < 8 * MIB, "copied {n} bytes of a file holding about 3 MiB");
                assert!(allocated < 8 * MIB, "the copy takes {allocated} bytes: its holes were filled");
            }
        }
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 64 * MIB);
    }

    #[test]
    fn files_of_only_holes_only_data_or_nothing_copy_whole() {
        let t = TempDir::new("sparse-edges");
        for (name, extents) in [("holes", vec![]), ("data", vec![(0, 64 * MIB, 7u8)])] {
            let (src, dest) = (t.0.join(name), t.0.join(format!("{name}.copy")));
            sparse_file(&src, &extents);
            copy_sparse(&src, &dest).unwrap();
            assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap(), "{name}");
        }
        let (empty, copy) = (t.0.join("empty"), t.0.join("empty.copy"));
        File::create(&empty).unwrap();
        assert!(matches!(copy_sparse(&empty, &copy).unwrap(), Copied::Shared | Copied::Data(0)));
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), 0);
    }

    #[test]
    fn a_restore_rewrites_the_open_file_in_place_holes_and_all() {
        let t = TempDir::new("sparse-restore");
        let (checkpoint, disk) = (t.0.join("checkpoint"), t.0.join("disk"));
        sparse_file(&checkpoint, &[(MIB, MIB, 5), (40 * MIB, 4096, 6)]);
        // The disk a VM has open, written all over since the checkpoint.
        sparse_file(&disk, &[(0, 64 * MIB, 9)]);
        let held = File::open(&disk).unwrap();
        let inode = std::fs::metadata(&disk).unwrap().ino();
        let copied = restore_into(&checkpoint, &disk).unwrap();
        assert_eq!(copied, MIB + 4096);
        assert_eq!(std::fs::metadata(&disk).unwrap().ino(), inode, "not in place");
        let mut seen = vec![0u8; 64 * MIB as usize];
        held.read_exact_at(&mut seen, 0).unwrap();
        assert!(seen == std::fs::read(&checkpoint).unwrap(), "the open file does not read as the checkpoint");
        let allocated = std::fs::metadata(&disk).unwrap().blocks() * 512;
        assert!(allocated < 4 * MIB, "{allocated} bytes still allocated: the holes were not punched");
    }

    #[test]
    fn a_copy_between_file_systems_falls_back_to_reading() {
        let shm = Path::new("/dev/shm");
        assert!(shm.is_dir(), "no /dev/shm (a tmpfs) to copy from");
        let t = TempDir::new("sparse-cross");
        let src = shm.join(format!("microdib-sparse-{}", std::process::id()));
        sparse_file(&src, &[(MIB, 5000, 4), (30 * MIB, MIB + 3, 5)]);
        let (copy, restored) = (t.0.join("copy"), t.0.join("restored"));
        let copied = copy_sparse(&src, &copy);
        sparse_file(&restored, &[(0, 64 * MIB, 9)]);
        let back = restore_into(&src, &restored);
        let want = std::fs::read(&src).unwrap();
        std::fs::remove_file(&src).unwrap();
        copied.unwrap();
        back.unwrap();
        assert!(std::fs::read(&copy).unwrap() == want && std::fs::read(&restored).unwrap() == want);
    }

    #[test]
    fn an_existing_destination_is_never_overwritten() {
        let t = TempDir::new("sparse-exists");
        let (src, dest) = (t.0.join("disk"), t.0.join("copy"));
        sparse_file(&src, &[(0, 4096, 1)]);
        std::fs::write(&dest, b"keep").unwrap();
        assert!(copy_sparse(&src, &dest).is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), b"keep");
    }
}
