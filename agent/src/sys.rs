//! Thin wrappers over the system calls the agent makes itself (besides those std makes).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// mount(2), creating `target` first if it is missing (PID 1's mount points under /sysroot are).
pub fn mount(
    source: impl AsRef<OsStr>,
    target: impl AsRef<Path>,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let target = target.as_ref();
    let _ = std::fs::create_dir_all(target);
    let (s, t, f) = (cstring(source.as_ref())?, cstring(target.as_os_str())?, cstring(OsStr::new(fstype))?);
    let d = data.map(|d| cstring(OsStr::new(d))).transpose()?;
    let dp = d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: all pointers are valid NUL-terminated strings (or null data) during the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, dp) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lazily unmounts `target`; a failure only leaves a mount behind, so it is not reported.
pub fn unmount_detached(target: &Path) {
    if let Ok(t) = cstring(target.as_os_str()) {
        // SAFETY: umount2 with a valid NUL-terminated path; no memory is kept.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
}

/// chroot(2) of the calling process.
pub fn chroot(dir: &Path) -> io::Result<()> {
    let d = cstring(dir.as_os_str())?;
    // SAFETY: chroot with a valid NUL-terminated path; no memory is kept.
    if unsafe { libc::chroot(d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILL to the whole process group `pgid` (a command started as its group's leader).
pub fn kill_process_group(pgid: u32) {
    // Never 0: kill(0) would hit the agent's own group.
    if let Some(pgid) = libc::pid_t::try_from(pgid).ok().filter(|&p| p > 0) {
        // SAFETY: kill(2) on a process group we created; no memory is involved.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}
