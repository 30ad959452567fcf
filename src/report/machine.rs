//! Where `--machine-readable` output goes, and opening it.

/// A `--machine-readable` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineReadable {
    Stdout,
    Stderr,
    File(String),
    Fd(i32),
}

impl MachineReadable {
    /// Opens the --machine-readable channel.
    pub fn open(&self) -> std::io::Result<Box<dyn std::io::Write + Send>> {
        use std::os::fd::FromRawFd;
        Ok(match self {
            MachineReadable::Stdout => Box::new(std::io::stdout()),
            MachineReadable::Stderr => Box::new(std::io::stderr()),
            MachineReadable::File(p) => Box::new(std::fs::File::create(p)?),
            MachineReadable::Fd(fd) => {
                // The user handed us this descriptor on the command line; check it is open first.
                // SAFETY: fcntl(F_GETFD) only queries the descriptor.
                if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: the descriptor is open and, by the user's choice, ours to write to.
                Box::new(unsafe { std::fs::File::from_raw_fd(*fd) })
            }
        })
    }
}
