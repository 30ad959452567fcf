//! The agent's listening socket: AF_VSOCK, which std does not offer. An accepted connection is
//! handed on as a `UnixStream`, which only reads and writes it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// A listening AF_VSOCK stream socket on `port`, any CID.
pub fn listen(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen on a bound socket we own.
    if unsafe { libc::listen(fd, 64) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// The next connection on `listener`, retried across signals.
pub fn accept(listener: &OwnedFd) -> std::io::Result<UnixStream> {
    loop {
        // SAFETY: accept4 on our listening socket; peer address not requested.
        let fd = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd >= 0 {
            // SAFETY: fd is a fresh connected stream socket we own; UnixStream only reads/writes it.
            return Ok(unsafe { UnixStream::from_raw_fd(fd) });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
