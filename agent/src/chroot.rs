//! A command run inside a chroot: the appliance's /proc, /sys and /dev bound into it and its
//! resolv.conf in place of the target's while it runs, the chroot entered between fork and exec.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::network::ResolvConfSwap;
use crate::sys;

/// What a chrooted command holds until it is done; dropping it undoes both.
pub struct Chroot {
    // Fields drop in this order: the mounts go before the target's resolv.conf comes back.
    _mounts: PseudoMounts,
    _resolv_conf: Option<ResolvConfSwap>,
}

impl Chroot {
    /// Sets `cmd` up to run inside `root`, in `cwd` there (`/` if none).
    pub fn prepare(cmd: &mut Command, root: PathBuf, cwd: Option<Vec<u8>>) -> Result<Chroot, String> {
        enter_on_exec(cmd, &root, cwd)?;
        let resolv_conf = ResolvConfSwap::enter(&root);
        let mounts = PseudoMounts::bind(&root)?;
        Ok(Chroot { _mounts: mounts, _resolv_conf: resolv_conf })
    }
}

/// Makes `cmd` chroot to `root` and chdir to `cwd` just before it execs.
fn enter_on_exec(cmd: &mut Command, root: &Path, cwd: Option<Vec<u8>>) -> Result<(), String> {
    let (Ok(root), Ok(cwd)) =
        (CString::new(root.as_os_str().as_bytes()), CString::new(cwd.unwrap_or_else(|| b"/".to_vec())))
    else {
        return Err("chroot or cwd contains a NUL byte".into());
    };
    // SAFETY: only async-signal-safe calls (chroot, chdir) between fork and exec, on strings
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(cwd.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The appliance's pseudo file systems bound under a chroot; unmounted again when dropped.
struct PseudoMounts(Vec<PathBuf>);

const PSEUDO_FILESYSTEMS: [(&str, &str); 3] = [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs")];

impl PseudoMounts {
    fn bind(root: &Path) -> Result<Self, String> {
        let mut mounts = PseudoMounts(Vec::new());
        for (src, fstype) in PSEUDO_FILESYSTEMS {
            let target = beneath(root, src);
            // Like libguestfs: a root without the mount point just goes without it.
            if !target.is_dir() {
                continue;
            }
            sys::mount(src, &target, fstype, libc::MS_BIND | libc::MS_REC, None)
                .map_err(|e| format!("cannot bind-mount {src} into {}: {e}", root.display()))?;
            mounts.0.push(target);
        }
        Ok(mounts)
    }
}

impl Drop for PseudoMounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            sys::unmount_detached(target);
        }
    }
}

/// `root` followed by the absolute `path`, as the kernel will resolve it.
fn beneath(root: &Path, path: &str) -> PathBuf {
    let mut joined = OsString::from(root.as_os_str());
    joined.push(path);
    PathBuf::from(joined)
}
