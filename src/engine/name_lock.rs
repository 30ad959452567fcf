//! One build per output name at a time: two builds with the same `--name` would write, rename
//! and remove each other's NAME.* files and NAME.d. The build holds an exclusive `flock` on
//! `.NAME.lock` beside its outputs from before it creates any of them until it is over; a
//! second build with the name fails at once. The file is removed on release.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NameLockError {
    #[error("another build is writing the outputs named {0} (it holds {1}); wait for it or choose another --name")]
    Busy(String, String),
    #[error("cannot lock {0}: {1}")]
    Io(String, #[source] std::io::Error),
}

#[derive(Debug)]
pub struct NameLock {
    path: PathBuf,
    file: File,
}

impl NameLock {
    pub fn take(name: &str) -> Result<NameLock, NameLockError> {
        let n = Path::new(name);
        let base = n.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
        let path = n.with_file_name(format!(".{base}.lock"));
        let shown = path.display().to_string();
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .custom_flags_nofollow()
                .open(&path)
                .map_err(|e| NameLockError::Io(shown.clone(), e))?;
            // SAFETY: flock on a descriptor we own; the result is checked.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => NameLockError::Busy(name.to_owned(), shown),
                    _ => NameLockError::Io(shown, e),
                });
            }
            // The holder before us may have removed the file after we opened it: then our lock
            // is on a file nobody else will find; take it again.
            let ours = file.metadata().map_err(|e| NameLockError::Io(shown.clone(), e))?;
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => return Ok(NameLock { path, file }),
                _ => continue,
            }
        }
    }
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}
impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        // Removed while still locked, so a waiting build never locks a file that is gone.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_build_per_name() {
        let dir = std::env::temp_dir().join(format!("microdib-namelock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let name = dir.join("img").display().to_string();
        let first = NameLock::take(&name).unwrap();
        assert!(dir.join(".img.lock").exists());
        assert!(matches!(NameLock::take(&name), Err(NameLockError::Busy(..))));
        NameLock::take(&dir.join("other").display().to_string()).expect("another name is free");
        drop(first);
        assert!(!dir.join(".img.lock").exists(), "removed with the lock");
        let again = NameLock::take(&name).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
