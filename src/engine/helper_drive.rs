//! The format of the user's `--drive` when `--drive-format` is not given.
//!
//! virt-dib let qemu probe it on every build. But the helper is written by the guest: a raw
//! helper whose first sector the guest sets to the qcow2 magic would become, on the next build,
//! a qcow2 image whose header (and backing file) the guest chose. So the format is decided once,
//! from the file as the user made it, and remembered on the file itself in an extended
//! attribute the guest cannot touch (`user.microdib.drive-format`):
//! 1. `--drive-format F` wins, and is remembered.
//! 2. Else the remembered format.
//! 3. Else (first use): qcow2 if the file starts with the qcow2 magic, raw otherwise, remembered.
//!    Where the file system keeps no extended attributes, a qcow2-looking file is refused
//!    instead: nothing would stop the guest from making a raw helper look like that.

use std::path::Path;

use crate::vmbackend::DiskFormat;

const XATTR: &str = "user.microdib.drive-format";
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

#[derive(Debug, thiserror::Error)]
pub enum HelperDriveError {
    #[error("cannot open the helper drive {0}: {1}")]
    Open(String, #[source] std::io::Error),
    #[error("--drive-format: {0}")]
    BadFormat(String),
    #[error(
        "the helper drive {0} starts like a qcow2 image, but its file system cannot record which format it is: \
         give --drive-format qcow2 or --drive-format raw"
    )]
    Undecidable(String),
}

/// The helper drive's format (see the module's first lines).
pub fn drive_format(path: &Path, given: Option<&str>) -> Result<DiskFormat, HelperDriveError> {
    let shown = path.display().to_string();
    // Opening it first gives the clearest error for a missing or unreadable drive.
    let f = std::fs::File::open(path).map_err(|e| HelperDriveError::Open(shown.clone(), e))?;
    if let Some(g) = given {
        let format: DiskFormat = g.parse().map_err(HelperDriveError::BadFormat)?;
        let _ = remember(path, format);
        return Ok(format);
    }
    if let Some(format) = remembered(path) {
        return Ok(format);
    }
    let mut magic = [0u8; 4];
    let n = std::os::unix::fs::FileExt::read_at(&f, &mut magic, 0).unwrap_or(0);
    let format = if n == 4 && &magic == QCOW2_MAGIC { DiskFormat::Qcow2 } else { DiskFormat::Raw };
    match remember(path, format) {
        Ok(()) => Ok(format),
        Err(_) if format == DiskFormat::Qcow2 => Err(HelperDriveError::Undecidable(shown)),
        Err(_) => Ok(format),
    }
}

fn name(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    }
}

fn cpath(p: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn remember(path: &Path, format: DiskFormat) -> std::io::Result<()> {
    let (p, key, value) = (cpath(path)?, std::ffi::CString::new(XATTR)?, name(format));
    // SAFETY: the strings and the value outlive the call; the result is checked.
    let r = unsafe { libc::setxattr(p.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn remembered(path: &Path) -> Option<DiskFormat> {
    let (p, key) = (cpath(path).ok()?, std::ffi::CString::new(XATTR).ok()?);
    let mut buf = [0u8; 16];
    // SAFETY: `buf` is writable for its length; the strings outlive the call.
    let n = unsafe { libc::getxattr(p.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    match &buf[..usize::try_from(n).ok()?] {
        b"raw" => Some(DiskFormat::Raw),
        b"qcow2" => Some(DiskFormat::Qcow2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(tag: &str, start: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("microdib-helper-{tag}-{}", std::process::id()));
        std::fs::write(&p, start).unwrap();
        p
    }

    /// A guest that writes the qcow2 magic into a raw helper does not make it qcow2 next time.
    #[test]
    fn guest_writes_do_not_change_the_helper_format() {
        let p = temp_file("raw", &[0u8; 4096]);
        if remember(&p, DiskFormat::Raw).is_err() {
            // No user xattrs here: then a qcow2-looking helper must be refused.
            std::fs::write(&p, b"QFI\xfb").unwrap();
            assert!(matches!(drive_format(&p, None), Err(HelperDriveError::Undecidable(_))));
            let _ = std::fs::remove_file(&p);
            return;
        }
        let _ = std::fs::remove_file(&p);
        let p = temp_file("raw", &[0u8; 4096]);
        assert_eq!(drive_format(&p, None).unwrap(), DiskFormat::Raw);
        // The guest writes sector 0.
        use std::os::unix::fs::FileExt;
        std::fs::File::options().write(true).open(&p).unwrap().write_at(b"QFI\xfb", 0).unwrap();
        assert_eq!(drive_format(&p, None).unwrap(), DiskFormat::Raw);
        // The user decides otherwise, explicitly: remembered from then on.
        assert_eq!(drive_format(&p, Some("qcow2")).unwrap(), DiskFormat::Qcow2);
        assert_eq!(drive_format(&p, None).unwrap(), DiskFormat::Qcow2);
        let _ = std::fs::remove_file(&p);

        // A qcow2 file the user made, used for the first time without --drive-format.
        let q = temp_file("qcow2", b"QFI\xfb\0\0\0\x03");
        assert_eq!(drive_format(&q, None).unwrap(), DiskFormat::Qcow2);
        let _ = std::fs::remove_file(&q);
        assert!(matches!(drive_format(&q, None), Err(HelperDriveError::Open(..))));
    }
}
