//! microdib's guest PID 1. So far it only brings up the pseudo file systems, announces itself on
//! the console and ends the VM; the vsock command protocol is the next step (issue 3).

use std::ffi::CString;
use std::io::Write;

/// Printed on the console once the guest userland is up.
const BANNER: &str = "microdib-agent: ready";

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f)) = (CString::new(source), CString::new(target), CString::new(fstype)) else {
        return;
    };
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        eprintln!("microdib-agent: mount {fstype} on {target}: {}", std::io::Error::last_os_error());
    }
}

fn main() {
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("tmpfs", "/run", "tmpfs");
    mount("tmpfs", "/tmp", "tmpfs");
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{BANNER}");
    let _ = out.flush();
    // SAFETY: sync and reboot take no pointers; as PID 1 ending the VM is the intent.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
}
