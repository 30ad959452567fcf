//! Guest initramfs images: an in-memory list of entries written out as a newc cpio archive (the
//! format the kernel unpacks), plus the boot-probe image used by tests and benchmarks.

pub mod appliance;
pub mod probe;

use std::io::Write;
use std::path::{Path, PathBuf};

/// `${XDG_CACHE_HOME:-~/.cache}/microdib`: where the kernel (hack/build-kernel), the appliance and
/// the nested harness are cached. The one Rust spelling of it (hack/lib.sh has the shell's).
pub fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("microdib")
}

/// Errors while assembling or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the initramfs")]
    Write(#[source] std::io::Error),
    #[error("archive path {0:?} must be relative, without '..' or empty parts")]
    BadPath(String),
    #[error("{path} is {size} bytes; newc archives hold files up to 4 GiB")]
    TooLarge { path: String, size: u64 },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

struct Entry {
    path: String,
    mode: u32,
    content: Content,
}

/// An initramfs being assembled. Entries keep their insertion order; parents must come first.
#[derive(Default)]
pub struct Archive {
    entries: Vec<Entry>,
}

fn check_path(path: &str) -> Result<String, Error> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path.split('/').all(|c| !c.is_empty() && c != "..")
        && !path.contains('\0');
    ok.then(|| path.to_owned()).ok_or_else(|| Error::BadPath(path.to_owned()))
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, Error> {
        self.entries.push(Entry { path: check_path(path)?, mode: S_IFDIR | (perm & 0o7777), content: Content::Dir });
        Ok(self)
    }

    pub fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) -> Result<&mut Self, Error> {
        let data = data.into();
        if u32::try_from(data.len()).is_err() {
            return Err(Error::TooLarge { path: path.to_owned(), size: data.len() as u64 });
        }
        self.entries.push(Entry {
            path: check_path(path)?,
            mode: S_IFREG | (perm & 0o7777),
            content: Content::File(data),
        });
        Ok(self)
    }

    /// Copies a file from the host, keeping its permission bits.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<&mut Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| Error::Read { path: host.to_owned(), source };
        let perm = std::fs::metadata(host).map_err(read)?.permissions().mode();
        let data = std::fs::read(host).map_err(read)?;
        self.file(path, perm, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, Error> {
        self.entries.push(Entry {
            path: check_path(path)?,
            mode: S_IFLNK | 0o777,
            content: Content::Symlink(target.to_owned()),
        });
        Ok(self)
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<&mut Self, Error> {
        self.entries.push(Entry {
            path: check_path(path)?,
            mode: S_IFCHR | (perm & 0o7777),
            content: Content::CharDevice { major, minor },
        });
        Ok(self)
    }

    /// Writes the archive (uncompressed newc, with trailer).
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<W, Error> {
        for (i, e) in self.entries.iter().enumerate() {
            let mut b = cpio::newc::Builder::new(&e.path).ino(i as u32 + 1).mode(e.mode).nlink(1);
            if let Content::Dir = e.content {
                b = b.nlink(2);
            }
            if let Content::CharDevice { major, minor } = e.content {
                b = b.rdev_major(major).rdev_minor(minor);
            }
            let data: &[u8] = match &e.content {
                Content::File(d) => d,
                Content::Symlink(t) => t.as_bytes(),
                Content::Dir | Content::CharDevice { .. } => &[],
            };
            let mut cw = b.write(&mut w, data.len() as u32);
            cw.write_all(data).map_err(Error::Write)?;
            cw.finish().map_err(Error::Write)?;
        }
        cpio::newc::trailer(&mut w).map_err(Error::Write)?;
        Ok(w)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        self.write_to(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_cpio_reader() {
        let mut a = Archive::new();
        a.dir("dev", 0o755).unwrap();
        a.char_device("dev/console", 0o600, 5, 1).unwrap();
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        a.symlink("sh", "busybox").unwrap();
        let bytes = a.to_bytes().unwrap();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);

        let mut r = std::io::Cursor::new(bytes);
        let mut seen = Vec::new();
        loop {
            let rd = cpio::newc::Reader::new(&mut r).unwrap();
            if rd.entry().is_trailer() {
                break;
            }
            let e = rd.entry();
            seen.push((e.name().to_owned(), e.mode(), e.file_size(), e.rdev_major(), e.rdev_minor()));
            rd.finish().unwrap();
        }
        assert_eq!(
            seen,
            vec![
                ("dev".into(), 0o40755, 0, 0, 0),
                ("dev/console".into(), 0o20600, 0, 5, 1),
                ("init".into(), 0o100755, 10, 0, 0),
                ("sh".into(), 0o120777, 7, 0, 0),
            ]
        );
    }

    #[test]
    fn rejects_escaping_paths() {
        let mut a = Archive::new();
        for bad in ["/etc", "../x", "a//b", "", "a/../b"] {
            assert!(matches!(a.dir(bad, 0o755), Err(Error::BadPath(_))), "{bad}");
        }
    }
}
