//! Runs passt (a userspace TCP/IP stack, no privileges needed) as the network backend: it gets
//! one end of a socket pair with `--fd` and speaks length-prefixed Ethernet frames on it.

use std::ffi::OsString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::NetError;
use crate::child;

/// How to run passt and what network it gives the guest.
#[derive(Debug, Clone)]
pub struct PasstOptions {
    /// The program: a bare name is looked up in PATH.
    pub binary: PathBuf,
    /// The guest's address, prefix length and default gateway.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// DNS queries the guest sends here are forwarded to the host's resolver.
    pub dns_forward: Option<Ipv4Addr>,
    /// MTU passt assumes for the guest (and offers over DHCP).
    pub mtu: u16,
    /// Connections to the gateway address reach the host's own loopback (passt's default);
    /// false keeps the host's local services out of the guest's reach (`--no-map-gw`).
    pub gateway_is_host: bool,
    /// More arguments, passed after ours.
    pub extra_args: Vec<OsString>,
    /// Where passt's messages go (appended); `None` discards them.
    pub log: Option<PathBuf>,
}

impl Default for PasstOptions {
    /// The user-mode network layout guests commonly expect (qemu's "slirp" addresses).
    fn default() -> Self {
        PasstOptions {
            binary: PathBuf::from("passt"),
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            dns_forward: Some(Ipv4Addr::new(10, 0, 2, 3)),
            mtu: 1500,
            gateway_is_host: false,
            extra_args: Vec::new(),
            log: None,
        }
    }
}

impl PasstOptions {
    /// passt's command line, without the program and `--fd`.
    pub fn args(&self) -> Vec<OsString> {
        // No --one-off: --fd implies it (passt quits when the socket closes) and this passt
        // version refuses the two together ("Redundant --one-off option").
        let mut a: Vec<OsString> = ["--foreground", "--quiet", "-4"].map(OsString::from).to_vec();
        // Nothing on the host is opened to the outside: the guest only makes outbound connections.
        a.extend(["--tcp-ports", "none", "--udp-ports", "none"].map(OsString::from));
        let mut opt = |name: &str, value: String| a.extend([OsString::from(name), OsString::from(value)]);
        opt("--address", self.address.to_string());
        opt("--netmask", self.prefix_len.to_string());
        opt("--gateway", self.gateway.to_string());
        opt("--mtu", self.mtu.to_string());
        if let Some(dns) = self.dns_forward {
            opt("--dns-forward", dns.to_string());
        }
        if !self.gateway_is_host {
            a.push("--no-map-gw".into());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// Finds `binary` the way execvp would: names with a slash are taken as they are.
fn find_program(binary: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if binary.components().count() > 1 || binary.is_absolute() {
        return executable(binary).then(|| binary.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(binary)).find(|p| executable(p))
}

/// A running passt. Dropping it kills and reaps it.
#[derive(Debug)]
pub struct Passt {
    child: Child,
}

impl Passt {
    /// Starts passt on a fresh socket pair and returns it with our end of the socket.
    pub fn spawn(opts: &PasstOptions) -> Result<(Passt, UnixStream), NetError> {
        if opts.prefix_len == 0 || opts.prefix_len > 32 {
            return Err(NetError::BadPrefix(opts.prefix_len));
        }
        let program = find_program(&opts.binary).ok_or(NetError::PasstMissing)?;
        let (ours, theirs) = socket_pair().map_err(NetError::Socket)?;
        let theirs_fd = theirs.as_raw_fd();
        let (stdout, stderr) = match &opts.log {
            Some(path) => {
                let f = File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| NetError::PasstLog { path: path.clone(), source })?;
                let g = f.try_clone().map_err(|source| NetError::PasstLog { path: path.clone(), source })?;
                (Stdio::from(f), Stdio::from(g))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new(&program);
        // Nothing of our environment (tokens, proxies) reaches the process that relays the guest's traffic.
        cmd.arg("--fd")
            .arg(theirs_fd.to_string())
            .args(opts.args())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes the async-signal-safe calls of `crate::child`.
        unsafe {
            cmd.pre_exec(move || {
                // Die with us. The signal is tied to the thread that spawns passt, not the
                // process: spawn from a thread that lives as long as the VM. (passt running as
                // root switches to "nobody", which clears it; it then quits when the socket closes.)
                // Only passt's copy of its end survives exec.
                child::prepare_helper(parent, Some(theirs_fd))?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => NetError::PasstMissing,
            _ => NetError::PasstSpawn { path: program.clone(), source },
        })?;
        drop(theirs); // passt has its copy
        Ok((Passt { child }, ours))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether passt has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connected stream socket pair, both ends close-on-exec. The second end is moved above the
/// standard descriptors so setting up passt's stdio cannot overwrite it.
fn socket_pair() -> std::io::Result<(UnixStream, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1; 2];
    // SAFETY: fds has room for the two descriptors socketpair(2) returns.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (ours, theirs) = unsafe { (UnixStream::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if theirs.as_raw_fd() > 2 {
        return Ok((ours, theirs));
    }
    // SAFETY: plain fcntl on a descriptor we own; the result is owned by the OwnedFd.
    let moved = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `moved` is a fresh descriptor we own.
    Ok((ours, unsafe { OwnedFd::from_raw_fd(moved) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    #[test]
    fn missing_binary_says_how_to_fix_it() {
        let opts = PasstOptions { binary: "/nonexistent/passt".into(), ..Default::default() };
        let err = Passt::spawn(&opts).unwrap_err();
        assert_eq!(err.to_string(), "passt is not installed: install the 'passt' package or use --no-network");
        let opts = PasstOptions { binary: "no-such-passt-binary".into(), ..Default::default() };
        assert!(matches!(Passt::spawn(&opts), Err(NetError::PasstMissing)));
    }

    #[test]
    fn command_line_exposes_no_host_ports() {
        let args: Vec<String> = PasstOptions::default().args().into_iter().map(|a| a.into_string().unwrap()).collect();
        let line = args.join(" ");
        assert!(line.contains("--tcp-ports none --udp-ports none"), "{line}");
        assert!(line.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2 --mtu 1500"), "{line}");
        assert!(line.contains("--dns-forward 10.0.2.3") && line.contains("-4"), "{line}");
    }

    #[test]
    fn the_gateway_is_the_hosts_loopback_only_when_asked() {
        let line = |o: PasstOptions| o.args().into_iter().map(|a| a.into_string().unwrap()).collect::<Vec<_>>();
        assert!(line(PasstOptions::default()).contains(&"--no-map-gw".to_owned()));
        let opened = PasstOptions { gateway_is_host: true, ..Default::default() };
        assert!(!line(opened).contains(&"--no-map-gw".to_owned()));
    }

    fn arp_request(mac: [u8; 6], from: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x08, 0x06]); // ARP
        f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
        f.extend_from_slice(&mac);
        f.extend_from_slice(&from);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f.resize(60, 0); // minimum Ethernet frame
        f
    }

    /// Reads framed frames until one satisfies `want` or time runs out.
    fn read_frame_until(s: &mut UnixStream, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            s.set_read_timeout(Some(deadline - Instant::now())).ok()?;
            let mut len = [0u8; 4];
            s.read_exact(&mut len).ok()?;
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut frame).ok()?;
            if want(&frame) {
                return Some(frame);
            }
        }
        None
    }

    #[test]
    fn real_passt_answers_arp_and_dies_with_its_handle() {
        if find_program(Path::new("passt")).is_none() {
            println!("skipped: passt is not installed");
            return;
        }
        let opts =
            PasstOptions { log: Some(std::env::temp_dir().join("microdib-passt-test.log")), ..Default::default() };
        let (mut passt, mut sock) = Passt::spawn(&opts).unwrap();
        assert!(passt.is_running());
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let req = arp_request(mac, [10, 0, 2, 15], [10, 0, 2, 2]);
        sock.write_all(&(req.len() as u32).to_be_bytes()).unwrap();
        sock.write_all(&req).unwrap();
        let reply = read_frame_until(&mut sock, |f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2])
            .expect("an ARP reply from passt");
        assert_eq!(&reply[..6], &mac, "sent to us");
        assert_eq!(&reply[28..32], &[10, 0, 2, 2], "sender is the gateway");
        assert_eq!(&reply[32..38], &mac);
        assert_eq!(&reply[38..42], &[10, 0, 2, 15]);

        let pid = passt.pid() as libc::pid_t;
        drop(passt);
        // SAFETY: signal 0 only checks that the process exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "passt is gone");
    }
}
