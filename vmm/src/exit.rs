//! How a VM ends: the reason (`GuestExit`) and the latch every part of the VMM reports it to
//! (`ExitLatch`). Its own file so the VM, the vCPUs and the devices share it without importing
//! each other.

use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the guest (or the VMM on its behalf) ended the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI-style power off (KVM system event).
    PowerOff,
    /// Reset through the i8042 or a KVM reset event: the normal end of a microVM.
    Reset,
    /// A triple fault: the guest crashed, or was booted with `reboot=t`.
    TripleFault { vcpu: u8 },
    /// The guest kernel panicked (seen on the console) and then rebooted.
    Panic,
    /// KVM reported a guest crash event.
    Crash,
    /// KVM could not run the vCPU.
    KvmFailure { vcpu: u8, reason: String },
    /// The VMM's own time limit ran out.
    Timeout(Duration),
    /// The VMM was asked to stop (a signal such as SIGINT or SIGTERM).
    Interrupted(i32),
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestExit::PowerOff => write!(f, "guest powered off"),
            GuestExit::Reset => write!(f, "guest reset (normal shutdown)"),
            GuestExit::TripleFault { vcpu } => write!(f, "guest triple-faulted on vCPU {vcpu}"),
            GuestExit::Panic => write!(f, "guest kernel panicked"),
            GuestExit::Crash => write!(f, "guest reported a crash"),
            GuestExit::KvmFailure { vcpu, reason } => write!(f, "vCPU {vcpu} stopped: {reason}"),
            GuestExit::Timeout(d) => write!(f, "guest still running after {:.1} s; stopped it", d.as_secs_f64()),
            GuestExit::Interrupted(sig) => write!(f, "stopped the guest on signal {sig}"),
        }
    }
}

/// The first reason to stop wins; everyone else can poll or wait for it.
#[derive(Default)]
pub struct ExitLatch {
    reason: Mutex<Option<GuestExit>>,
    cond: Condvar,
}

impl ExitLatch {
    pub fn set(&self, reason: GuestExit) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
            self.cond.notify_all();
        }
    }

    pub fn get(&self) -> Option<GuestExit> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `timeout` (forever if None) for a reason.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<GuestExit> {
        // A timeout too large to represent is no timeout.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        while r.is_none() {
            match deadline {
                None => r = self.cond.wait(r).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    r = self.cond.wait_timeout(r, d - now).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
        r.clone()
    }
}
