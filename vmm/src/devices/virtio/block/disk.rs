//! What a virtio-blk device reads and writes: a raw host file or a qcow2 image. The format is
//! always the one the caller names; nothing here looks at a file's contents to guess it, since
//! the guest controls those contents (a raw disk holding a qcow2 header must stay raw).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Storage, StorageOpenOptions};

/// Sector size of the virtio-blk interface.
pub const SECTOR: u64 = 512;
/// Zero-fill chunk for file systems that cannot punch holes.
const ZERO_CHUNK: usize = 1 << 20;

/// Image formats a disk may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl std::str::FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            _ => Err(format!("unknown disk format '{s}' (raw or qcow2)")),
        }
    }
}

/// Why a disk could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path} as qcow2: {source}")]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk {path} is {size} bytes, not a whole number of 512-byte sectors")]
    Unaligned { path: PathBuf, size: u64 },
}

/// A disk's contents, addressed in bytes. Ranges are checked by the caller against `size()`.
pub trait DiskImage: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&self) -> io::Result<()>;
    /// Makes the range read as zeros, freeing its storage where the format can.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// Opens `path` as `format`.
pub fn open(path: &Path, format: DiskFormat, read_only: bool) -> Result<Box<dyn DiskImage>, DiskError> {
    let image: Box<dyn DiskImage> = match format {
        DiskFormat::Raw => Box::new(RawFile::open(path, read_only)?),
        DiskFormat::Qcow2 => Box::new(Qcow2Image::open(path, read_only)?),
    };
    if !image.size().is_multiple_of(SECTOR) {
        return Err(DiskError::Unaligned { path: path.to_owned(), size: image.size() });
    }
    Ok(image)
}

/// A raw host file; zeroing punches holes so the file stays sparse.
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
}

impl RawFile {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Ok(RawFile { file, size, read_only })
    }
}

impl DiskImage for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a file descriptor we own, with range values checked above.
        let rc = unsafe {
            libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, n)
        };
        if rc == 0 {
            return Ok(());
        }
        // File systems without hole punching: write zeros instead.
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A qcow2 image through imago. Backing files are refused: the helper drive stands alone, and
/// a header naming another host file must not make us open it.
pub struct Qcow2Image {
    image: FormatAccess<imago::file::File>,
    read_only: bool,
}

impl Qcow2Image {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let err = |source| DiskError::Qcow2 { path: path.to_owned(), source };
        // The file itself is opened here, explicitly; the gate then denies anything its header names.
        let file = imago::file::File::open(StorageOpenOptions::new().filename(path).write(!read_only))
            .map_err(|source| DiskError::Open { path: path.to_owned(), source })?;
        let qcow2 = Qcow2::<imago::file::File>::builder(file)
            .write(!read_only)
            .open(DenyImplicitOpenGate::default())
            .map_err(err)?;
        Ok(Qcow2Image { image: FormatAccess::new(qcow2), read_only })
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.image.size()
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.image.write(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.image.flush()?;
        self.image.sync()
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.image.write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu_img(args: &[&str]) -> Option<std::process::Output> {
        std::process::Command::new("qemu-img").args(args).output().ok()
    }

    #[test]
    fn qcow2_reads_what_qemu_wrote_and_qemu_reads_what_we_wrote() {
        let dir = std::env::temp_dir().join(format!("vmm-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("in.raw");
        let q = dir.join("disk.qcow2");
        let mut data = vec![0u8; 4 << 20];
        for (i, b) in data.iter_mut().enumerate().skip(1 << 20).take(64 * 1024) {
            *b = (i % 251) as u8;
        }
        std::fs::write(&raw, &data).unwrap();
        let Some(out) = qemu_img(&["convert", "-f", "raw", "-O", "qcow2", raw.to_str().unwrap(), q.to_str().unwrap()])
        else {
            panic!("qemu-img is needed for this test (hack/setup installs qemu-utils)");
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        {
            let img = open(&q, DiskFormat::Qcow2, false).unwrap();
            assert_eq!(img.size(), 4 << 20);
            let mut back = vec![0u8; 2 << 20];
            img.read_at(&mut back, 0).unwrap();
            assert_eq!(&back[..], &data[..2 << 20]);
            img.write_at(&[0xab; 4096], 3 << 20).unwrap();
            img.zero_range(1 << 20, 64 * 1024).unwrap();
            img.flush().unwrap();
        }
        data[3 << 20..(3 << 20) + 4096].fill(0xab);
        data[1 << 20..(1 << 20) + 64 * 1024].fill(0);
        std::fs::write(&raw, &data).unwrap();
        let check = qemu_img(&["check", q.to_str().unwrap()]).unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
        let cmp =
            qemu_img(&["compare", "-f", "qcow2", "-F", "raw", q.to_str().unwrap(), raw.to_str().unwrap()]).unwrap();
        assert!(cmp.status.success(), "{}", String::from_utf8_lossy(&cmp.stdout));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn named_format_wins_over_contents() {
        let dir = std::env::temp_dir().join(format!("vmm-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A raw disk whose first sector looks like a qcow2 header stays raw.
        let p = dir.join("looks-like.qcow2");
        let mut bytes = vec![0u8; 64 * 1024];
        bytes[..4].copy_from_slice(b"QFI\xfb");
        std::fs::write(&p, &bytes).unwrap();
        let img = open(&p, DiskFormat::Raw, true).unwrap();
        assert_eq!(img.size(), 64 * 1024);
        // And a raw file named as qcow2 is refused, with the path in the message.
        let plain = dir.join("plain.raw");
        std::fs::write(&plain, vec![0u8; 4096]).unwrap();
        let e = open(&plain, DiskFormat::Qcow2, false).err().unwrap().to_string();
        assert!(e.contains("plain.raw") && e.contains("qcow2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn qcow2_backing_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("vmm-backing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let over = dir.join("over.qcow2");
        let out =
            qemu_img(&["create", "-f", "qcow2", "-F", "raw", "-b", base.to_str().unwrap(), over.to_str().unwrap()])
                .unwrap();
        assert!(out.status.success());
        assert!(open(&over, DiskFormat::Qcow2, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
