//! SIGINT, SIGTERM, SIGHUP and SIGQUIT during a build: the build VM is stopped, the running host tool is
//! killed, and the build unwinds through its normal failure path (temporary files removed).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::vmbackend::StopSwitch;

/// A build's stop switch: the stop signal caught, if any, and what it must stop (the build VM,
/// the host process running now). The process's own one is fed by the signal thread
/// (`Stop::install`); a test makes its own and raises on it.
#[derive(Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Default)]
struct StopState {
    caught: AtomicI32,
    child: AtomicI32,
    vm: Mutex<Option<Arc<dyn StopSwitch>>>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// The process's stop switch: blocks the stop signals in this thread (and so in every
    /// thread started later) and starts the thread that takes them. The first call must come
    /// before any other thread exists.
    pub fn install() -> Stop {
        static PROCESS: OnceLock<Stop> = OnceLock::new();
        PROCESS
            .get_or_init(|| {
                // Children are waited for (qemu's reaper): an inherited SIG_IGN would let the
                // kernel reap them behind our back.
                // SAFETY: signal() only restores a default disposition.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                let stop = Stop::new();
                let taker = stop.clone();
                vmm::child::block_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]).take(
                    move |sig| {
                        taker.raise(sig);
                        true
                    },
                );
                stop
            })
            .clone()
    }

    /// A stop signal came: it is recorded, and the VM and the running host process stopped.
    pub fn raise(&self, sig: i32) {
        self.0.caught.store(sig, Ordering::SeqCst);
        if let Some(vm) = self.0.vm.lock().ok().and_then(|g| g.clone()) {
            vm.stop(sig);
        }
        let child = self.0.child.load(Ordering::SeqCst);
        if child > 0 {
            stop_child(child);
        }
    }

    /// The VM a signal should stop (None when it is gone); stopped at once if one already came.
    pub fn watch_vm(&self, vm: Option<Arc<dyn StopSwitch>>) {
        // Published first, then `caught` read: `raise` stores `caught`, then reads the VM, so a
        // signal in between is seen by one of the two.
        if let Ok(mut g) = self.0.vm.lock() {
            g.clone_from(&vm);
        }
        let sig = self.0.caught.load(Ordering::SeqCst);
        if let (Some(v), true) = (&vm, sig != 0) {
            v.stop(sig);
        }
    }

    /// The host process a signal should stop (0 for none); stopped at once if one already
    /// came. A child that leads its own process group is stopped with everything it started.
    pub fn watch_child(&self, pid: u32) {
        self.0.child.store(pid as i32, Ordering::SeqCst);
        if pid > 0 && self.0.caught.load(Ordering::SeqCst) != 0 {
            stop_child(pid as i32);
        }
    }

    /// Err(Signal) once a stop signal has come: checked between the steps of a build.
    pub fn check(&self) -> Result<(), super::EngineError> {
        match self.caught() {
            Some(sig) => Err(super::EngineError::Signal(sig)),
            None => Ok(()),
        }
    }

    /// The signal caught, if any, by name.
    pub fn caught(&self) -> Option<&'static str> {
        match self.0.caught.load(Ordering::SeqCst) {
            0 => None,
            libc::SIGINT => Some("SIGINT"),
            libc::SIGTERM => Some("SIGTERM"),
            libc::SIGHUP => Some("SIGHUP"),
            libc::SIGQUIT => Some("SIGQUIT"),
            _ => Some("a signal"),
        }
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
