//! The host microdib runs on, one way everywhere: programs in PATH, starting them as children
//! that die with us, the dpkg name of its architecture, and microdib's cache directory.

use std::path::{Path, PathBuf};

/// `which`: a name with a slash must be executable itself; a bare name is searched in PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    fn executable(p: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return executable(&p).then(|| std::path::absolute(&p).unwrap_or(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| executable(p))
}

/// The dpkg-style name of this host's architecture.
pub fn arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".into(),
        "x86" => "i386".into(),
        "arm" => "armhf".into(),
        other => other.into(),
    }
}

/// A command for a child process. The stop signals are blocked in all of microdib's threads
/// (`engine::signals::install`) and a child would inherit that mask (std does not reset it), leaving it
/// deaf to the SIGTERM that stops it: the child unblocks them before it runs. It inherits no
/// descriptor of ours beyond its stdio.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes the async-signal-safe calls of `vmm::child`.
    unsafe {
        cmd.pre_exec(move || {
            // Killed with microdib, even by SIGKILL (the commands are started from the build's
            // own thread, which lives as long as they do).
            vmm::child::die_with_parent(parent)?;
            vmm::child::unblock_signals();
            // Host tools and extra-data.d scripts get nothing of ours but their stdio (no guest
            // memory, eventfds or sockets a library opened without O_CLOEXEC).
            vmm::child::cloexec_from_3()
        });
    }
    cmd
}

/// `${XDG_CACHE_HOME:-~/.cache}/microdib`: the kernel, the appliance, the nested harness.
pub use initramfs::cache_root;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_finds_programs() {
        assert!(which("sh").is_some());
        assert!(which("/bin/sh").is_some());
        assert!(which("/etc/passwd").is_none());
        assert!(which("surely-not-a-program-xyz").is_none());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(arch(), "amd64");
        }
    }
}
