//! Whole small files read and written for the host.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use microdib_proto::Response;

/// The most `read_file` returns: what fits a frame beside the answer's own encoding.
const READ_LIMIT: u64 = microdib_proto::MAX_FRAME as u64 - 1024;

/// `File` with the contents of the regular file `path`, or `Error`.
pub fn read_file(path: &[u8]) -> Response {
    let path = Path::new(OsStr::from_bytes(path));
    match read_regular_file(path, READ_LIMIT) {
        Ok(data) if data.len() as u64 > READ_LIMIT => {
            Response::Error(format!("{} is over {READ_LIMIT} bytes; use TarOut", path.display()))
        }
        Ok(data) => Response::File(data),
        Err(e) => Response::Error(format!("cannot read {}: {e}", path.display())),
    }
}

/// At most `limit + 1` bytes of `path` (one more tells a file over the limit). Only a regular
/// file, opened without blocking (a FIFO must not hang us); the limit holds whatever size it
/// reports (a /proc file says 0).
fn read_regular_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data)?;
    Ok(data)
}

/// Creates or replaces `path` with `data` and permission bits `mode`: `Done`, or `Error`.
pub fn write_file(path: &[u8], mode: u32, data: &[u8]) -> Response {
    let path = Path::new(OsStr::from_bytes(path));
    match write_with_mode(path, mode & 0o7777, data) {
        Ok(()) => Response::Done,
        Err(e) => Response::Error(format!("cannot write {}: {e}", path.display())),
    }
}

/// The mode is set again after writing: the one given at creation is cut by the umask and does
/// not apply to a file that already existed.
fn write_with_mode(path: &Path, mode: u32, data: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(data)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}
