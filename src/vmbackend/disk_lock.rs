//! Every disk file of the build VM is locked while the VM runs, as qemu's image locking does:
//! exclusively when the VM may write it, shared when it only reads. Two builds sharing one
//! `--drive` would otherwise both mount it read-write and corrupt it; the second now fails at
//! once. `flock` locks, so they never meet the byte-range locks qemu takes on the same files.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{VmDisk, VmError};

/// The locks, held until dropped.
#[derive(Debug)]
pub struct DiskLocks {
    _files: Vec<File>,
}

impl DiskLocks {
    pub fn take(disks: &[VmDisk]) -> Result<DiskLocks, VmError> {
        let mut files = Vec::with_capacity(disks.len());
        for d in disks {
            files.push(lock(&d.path, d.read_only)?);
        }
        Ok(DiskLocks { _files: files })
    }
}

fn lock(path: &Path, read_only: bool) -> Result<File, VmError> {
    let f = File::open(path).map_err(|e| VmError::Setup(format!("cannot open {}: {e}", path.display())))?;
    let how = if read_only { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on a descriptor we own; the result is checked.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(f);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(VmError::DiskInUse(PathBuf::from(path)))
    } else {
        Err(VmError::Setup(format!("cannot lock {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmbackend::DiskFormat;

    fn disk(path: &Path, read_only: bool) -> VmDisk {
        VmDisk { path: path.into(), format: DiskFormat::Raw, read_only, serial: "s".into(), scratch: false }
    }

    #[test]
    fn a_disk_in_use_is_refused_until_released() {
        let p = std::env::temp_dir().join(format!("microdib-lock-{}", std::process::id()));
        std::fs::write(&p, b"").unwrap();
        let first = DiskLocks::take(&[disk(&p, false)]).unwrap();
        let second = DiskLocks::take(&[disk(&p, false)]);
        assert!(matches!(second, Err(VmError::DiskInUse(_))), "{second:?}");
        assert!(matches!(DiskLocks::take(&[disk(&p, true)]), Err(VmError::DiskInUse(_))));
        drop(first);
        let readers = DiskLocks::take(&[disk(&p, true)]).unwrap();
        DiskLocks::take(&[disk(&p, true)]).expect("readers share");
        assert!(DiskLocks::take(&[disk(&p, false)]).is_err(), "no writer while reading");
        drop(readers);
        let _ = std::fs::remove_file(&p);
    }
}
