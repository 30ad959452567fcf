//! SIGINT, SIGTERM, SIGHUP and SIGQUIT during a build: the build VM is stopped, the running host tool is
//! killed, and the build unwinds through its normal failure path (temporary files removed).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use crate::vmbackend::StopSwitch;

static CAUGHT: AtomicI32 = AtomicI32::new(0);
static CHILD: AtomicI32 = AtomicI32::new(0);
static VM: Mutex<Option<Arc<dyn StopSwitch>>> = Mutex::new(None);

/// Blocks the stop signals in this thread (and so in every thread started later) and starts
/// the thread that takes them. Call before any other thread exists.
pub fn install() {
    // Children are waited for (qemu's reaper): an inherited SIG_IGN would let the kernel reap
    // them behind our back.
    // SAFETY: signal() only restores a default disposition.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    vmm::child::block_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]).take(|sig| {
        CAUGHT.store(sig, Ordering::SeqCst);
        if let Some(vm) = VM.lock().ok().and_then(|g| g.clone()) {
            vm.stop(sig);
        }
        let child = CHILD.load(Ordering::SeqCst);
        if child > 0 {
            stop_child(child);
        }
        true
    });
}

/// The VM a signal should stop (None when it is gone); stopped at once if one already came.
pub fn watch_vm(vm: Option<Arc<dyn StopSwitch>>) {
    // Published first, then CAUGHT read: the signal thread stores CAUGHT, then reads VM, so a
    // signal in between is seen by one of the two.
    if let Ok(mut g) = VM.lock() {
        g.clone_from(&vm);
    }
    let sig = CAUGHT.load(Ordering::SeqCst);
    if let (Some(v), true) = (&vm, sig != 0) {
        v.stop(sig);
    }
}

/// The host process a signal should stop (0 for none); stopped at once if one already came.
/// A child that leads its own process group is stopped with everything it started.
pub fn watch_child(pid: u32) {
    CHILD.store(pid as i32, Ordering::SeqCst);
    if pid > 0 && CAUGHT.load(Ordering::SeqCst) != 0 {
        stop_child(pid as i32);
    }
}

fn stop_child(pid: i32) {
    // SAFETY: kill(2) on our own child, or on the process group it leads.
    unsafe {
        if libc::kill(-pid, libc::SIGTERM) != 0 {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Err(Signal) once a stop signal has come: checked between the steps of a build.
pub fn check() -> Result<(), super::EngineError> {
    match caught() {
        Some(sig) => Err(super::EngineError::Signal(sig)),
        None => Ok(()),
    }
}

/// The signal caught, if any, by name.
pub fn caught() -> Option<&'static str> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGHUP => Some("SIGHUP"),
        libc::SIGQUIT => Some("SIGQUIT"),
        _ => Some("a signal"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn children_do_not_inherit_the_blocked_stop_signals() {
        // SAFETY: blocks SIGTERM in this test thread only, as `install` does in every thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let out = crate::host::command("grep").args(["^SigBlk", "/proc/self/status"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SigBlk:\t0000000000000000");
        let inherited = std::process::Command::new("grep").args(["^SigBlk", "/proc/self/status"]).output().unwrap();
        assert_ne!(inherited.stdout, out.stdout, "std passes the mask on (this test would prove nothing)");
    }
}
