//! What every child process microdib starts (passt, qemu, host tools, extra-data.d scripts) does
//! between fork and exec. Each function is async-signal-safe: no allocation, no locks.

use std::io;
use std::os::fd::RawFd;

/// `close_range(2)`'s flag: mark the range close-on-exec instead of closing it.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// Where the fallback loop stops when the descriptor limit is unknown or huge.
const MAX_FD_SCAN: libc::c_int = 1 << 16;

/// Marks every descriptor from 3 up close-on-exec, so a child inherits only its stdio and what
/// it is handed explicitly (`inherit`): not guest memory, eventfds or sockets of ours that a
/// library opened without `O_CLOEXEC`.
pub fn cloexec_from_3() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on this process's descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: every possible descriptor, one by one.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        libc::c_int::try_from(lim.rlim_cur).unwrap_or(MAX_FD_SCAN).min(MAX_FD_SCAN)
    } else {
        MAX_FD_SCAN
    };
    for fd in 3..max {
        // SAFETY: fcntl on a descriptor number; EBADF for unused ones is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Clears close-on-exec on `fd`, which the child is meant to inherit (call after
/// `cloexec_from_3`).
pub fn inherit(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unblocks every signal: microdib blocks its stop signals in all its threads (a signal thread
/// takes them) and exec keeps the mask, which would leave the child deaf to the SIGTERM that
/// stops it.
pub fn unblock_signals() {
    // SAFETY: sigemptyset and pthread_sigmask touch only a local set and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Signals blocked in every thread, waiting to be taken by one (`take`).
pub struct BlockedSignals(libc::sigset_t);

/// Blocks `signals` in this thread (and so in every thread it starts later). Call before other
/// threads exist; children must `unblock_signals` before exec.
pub fn block_signals(signals: &[libc::c_int]) -> BlockedSignals {
    // SAFETY: sigset_t is plain data set up by sigemptyset/sigaddset before use; pthread_sigmask
    // changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        BlockedSignals(set)
    }
}

impl BlockedSignals {
    /// Hands each signal that arrives to `on_signal` on a thread of its own, until it returns
    /// false.
    pub fn take(self, mut on_signal: impl FnMut(libc::c_int) -> bool + Send + 'static) {
        let set = self.0;
        std::thread::spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait gets a valid set and output pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 || !on_signal(sig) {
                return;
            }
        });
    }
}

/// Asks for SIGKILL when the thread that started us dies (so even a SIGKILLed microdib takes its
/// children along), and fails if `parent` is already gone.
pub fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid only affect and read this process.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// All of the above for a helper process of the VMM (passt, qemu): dies with `parent`'s
/// thread, hears signals, and inherits only its stdio and `keep`.
pub fn prepare_helper(parent: libc::pid_t, keep: Option<RawFd>) -> io::Result<()> {
    prepare_helper_keeping(parent, keep.as_slice())
}

/// `prepare_helper` with any number of descriptors to inherit.
pub fn prepare_helper_keeping(parent: libc::pid_t, keep: &[RawFd]) -> io::Result<()> {
    die_with_parent(parent)?;
    unblock_signals();
    cloexec_from_3()?;
    keep.iter().try_for_each(|fd| inherit(*fd))
}

/// Becomes `uid`:`gid` with no supplementary groups, for good: a child that root starts to
/// handle guest bytes. Call before `die_with_parent` (a change of credentials clears the
/// parent-death signal).
pub fn drop_to(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: setgroups, setgid and setuid change only this (single-threaded, forked) process's
    // credentials; setgroups gets an empty list.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Root could take its privileges back if any id were left at 0.
        if libc::setuid(0) == 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    #[test]
    fn children_inherit_only_what_they_are_given() {
        // Two descriptors opened without O_CLOEXEC, as a library might.
        let path = std::ffi::CString::new("/dev/null").unwrap();
        // SAFETY: open(2) with a valid path; the descriptors are closed below.
        let (leaked, given) =
            unsafe { (libc::open(path.as_ptr(), libc::O_RDONLY), libc::open(path.as_ptr(), libc::O_RDONLY)) };
        assert!(leaked > 2 && given > 2);
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            &format!("[ -e /proc/self/fd/{leaked} ] && echo leaked; [ -e /proc/self/fd/{given} ] && echo given; true"),
        ]);
        // SAFETY: only the async-signal-safe functions of this module run in the child.
        unsafe {
            cmd.pre_exec(move || {
                super::cloexec_from_3()?;
                super::inherit(given)
            });
        }
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "given\n");
        let plain = std::process::Command::new("sh")
            .args(["-c", &format!("[ -e /proc/self/fd/{leaked} ] && echo leaked; true")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&plain.stdout), "leaked\n", "this test would prove nothing");
        // SAFETY: closing the descriptors opened above.
        unsafe {
            libc::close(leaked);
            libc::close(given);
        }
    }
}
