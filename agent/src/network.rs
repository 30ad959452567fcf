//! The appliance's network: loopback always; with `microdib.net=` on the kernel command line,
//! the one virtio-net interface gets the addresses microdib gave passt, a default route and the
//! appliance's /etc/resolv.conf. Chrooted commands then get that resolv.conf in place of the
//! target's own while they run, as libguestfs did for virt-dib.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use microdib_proto::net::GuestNetwork;

/// Whether the guest network was configured (chroots get resolv.conf only then).
static CONFIGURED: OnceLock<bool> = OnceLock::new();

const APPLIANCE_RESOLV_CONF: &str = "/etc/resolv.conf";

/// `struct ifreq` with the members we use (name + a sockaddr / int / short union of 24 bytes).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

/// `struct rtentry` (x86_64 layout, linux/route.h).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr_in and sockaddr are plain data of the same size (16 bytes).
    unsafe {
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(addr).to_be();
        std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin)
    }
}

struct ControlSocket(OwnedFd);

impl ControlSocket {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked and owned.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and ours.
        Ok(ControlSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        // SAFETY: `arg` is a valid, properly laid out struct for `request` and lives for the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, arg as *mut T) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{what}: {}", std::io::Error::last_os_error()))
        }
    }

    fn ifreq(name: &str) -> IfReq {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        for (d, s) in req.name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        req
    }

    fn set_up(&self, name: &str) -> Result<(), String> {
        let mut req = Self::ifreq(name);
        self.ioctl(libc::SIOCGIFFLAGS, &mut req, &format!("read the flags of {name}"))?;
        let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        self.ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("bring {name} up"))
    }

    fn set_addr(&self, name: &str, request: libc::c_ulong, addr: Ipv4Addr, what: &str) -> Result<(), String> {
        let mut req = Self::ifreq(name);
        let sa = sockaddr_in(addr);
        // SAFETY: sockaddr is 16 bytes of plain data; the union has room for it.
        let bytes: [u8; 16] = unsafe { std::mem::transmute(sa) };
        req.data[..16].copy_from_slice(&bytes);
        self.ioctl(request, &mut req, &format!("set the {what} of {name} to {addr}"))
    }

    fn set_mtu(&self, name: &str, mtu: u16) -> Result<(), String> {
        let mut req = Self::ifreq(name);
        req.data[..4].copy_from_slice(&i32::from(mtu).to_ne_bytes());
        self.ioctl(libc::SIOCSIFMTU, &mut req, &format!("set the MTU of {name} to {mtu}"))
    }

    fn add_default_route(&self, gateway: Ipv4Addr) -> Result<(), String> {
        let any = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        let mut rt = RtEntry {
            pad1: 0,
            dst: any,
            gateway: sockaddr_in(gateway),
            genmask: any,
            flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            pad2: 0,
            pad3: 0,
            pad4: std::ptr::null_mut(),
            metric: 0,
            dev: std::ptr::null_mut(),
            mtu: 0,
            window: 0,
            irtt: 0,
        };
        self.ioctl(libc::SIOCADDRT, &mut rt, &format!("add the default route via {gateway}"))
    }
}

/// The first network interface that is not loopback (the virtio-net device).
fn guest_interface() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Brings up loopback, and the guest network if the kernel command line describes one.
/// Failures are reported on the console; the agent serves either way.
pub fn setup(cmdline: &str) {
    let sock = match ControlSocket::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("microdib-agent: no network control socket: {e}");
            return;
        }
    };
    if let Err(e) = sock.set_up("lo") {
        eprintln!("microdib-agent: {e}");
    }
    let configured = match GuestNetwork::from_cmdline(cmdline) {
        None => false,
        Some(Err(e)) => {
            eprintln!("microdib-agent: {e}");
            false
        }
        Some(Ok(net)) => match configure(&sock, &net) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("microdib-agent: network: {e}");
                false
            }
        },
    };
    let _ = CONFIGURED.set(configured);
}

fn configure(sock: &ControlSocket, net: &GuestNetwork) -> Result<(), String> {
    let name = guest_interface().ok_or("no network interface (is the virtio-net device there?)")?;
    sock.set_mtu(&name, net.mtu)?;
    sock.set_addr(&name, libc::SIOCSIFADDR, net.address, "address")?;
    sock.set_addr(&name, libc::SIOCSIFNETMASK, net.netmask(), "netmask")?;
    sock.set_up(&name)?;
    sock.add_default_route(net.gateway)?;
    std::fs::write(APPLIANCE_RESOLV_CONF, format!("nameserver {}\n", net.dns))
        .map_err(|e| format!("cannot write {APPLIANCE_RESOLV_CONF}: {e}"))
}

/// The target's /etc/resolv.conf moved aside while chrooted commands run, the appliance's in
/// its place; the last command out of a root puts the target's back. Counted per root, since
/// several commands may run in the same chroot at once.
pub struct ResolvConfSwap {
    root: PathBuf,
}

/// Per root: commands inside, and where the target's own resolv.conf waits (None if it had none).
type SwapTable = HashMap<PathBuf, (usize, Option<PathBuf>)>;
static SWAPS: Mutex<Option<SwapTable>> = Mutex::new(None);

impl ResolvConfSwap {
    /// Swaps in the appliance's resolv.conf under `root` if the network is on and `root/etc` is
    /// a real directory; None otherwise (nothing to undo).
    pub fn enter(root: &Path) -> Option<ResolvConfSwap> {
        if !CONFIGURED.get().copied().unwrap_or(false) {
            return None;
        }
        let etc = root.join("etc");
        if !std::fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
            return None;
        }
        let mut swaps = SWAPS.lock().unwrap_or_else(|p| p.into_inner());
        let entry = swaps.get_or_insert_with(HashMap::new).entry(root.to_owned()).or_insert((0, None));
        if entry.0 == 0 {
            let target = etc.join("resolv.conf");
            let saved = if std::fs::symlink_metadata(&target).is_ok() {
                let aside = etc.join(format!(".resolv.conf.microdib-{}", random_suffix()));
                if let Err(e) = std::fs::rename(&target, &aside) {
                    eprintln!("microdib-agent: cannot move {} aside: {e}", target.display());
                    return None;
                }
                Some(aside)
            } else {
                None
            };
            if let Err(e) = std::fs::copy(APPLIANCE_RESOLV_CONF, &target) {
                eprintln!("microdib-agent: cannot put resolv.conf into {}: {e}", root.display());
            }
            entry.1 = saved;
        }
        entry.0 += 1;
        Some(ResolvConfSwap { root: root.to_owned() })
    }
}

impl Drop for ResolvConfSwap {
    fn drop(&mut self) {
        let mut swaps = SWAPS.lock().unwrap_or_else(|p| p.into_inner());
        let Some(map) = swaps.as_mut() else { return };
        let Some(entry) = map.get_mut(&self.root) else { return };
        entry.0 = entry.0.saturating_sub(1);
        if entry.0 > 0 {
            return;
        }
        let saved = entry.1.take();
        map.remove(&self.root);
        let target = self.root.join("etc/resolv.conf");
        // Whatever the commands left there (ours, or one a package wrote) goes.
        let _ = std::fs::remove_file(&target);
        if let Some(aside) = saved {
            if let Err(e) = std::fs::rename(&aside, &target) {
                eprintln!("microdib-agent: cannot restore {}: {e}", target.display());
            }
        }
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a local buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads the kernel command line (empty if it cannot).
pub fn kernel_cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn a_chroots_resolv_conf_is_swapped_while_commands_run_and_restored_after() {
        let _ = CONFIGURED.set(true);
        let root = std::env::temp_dir().join(format!("agent-resolv-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/resolv.conf"), "nameserver 192.0.2.99\n").unwrap();
        // APPLIANCE_RESOLV_CONF is the test host's own; only that it is copied matters here.
        let first = ResolvConfSwap::enter(&root).expect("swapped");
        let second = ResolvConfSwap::enter(&root).expect("counted");
        let inside = std::fs::read(root.join("etc/resolv.conf")).unwrap();
        assert_eq!(inside, std::fs::read(APPLIANCE_RESOLV_CONF).unwrap_or_default());
        drop(first);
        assert_eq!(std::fs::read(root.join("etc/resolv.conf")).unwrap(), inside, "still one inside");
        drop(second);
        assert_eq!(std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(), "nameserver 192.0.2.99\n");
        let left: Vec<_> = std::fs::read_dir(root.join("etc")).unwrap().collect();
        assert_eq!(left.len(), 1, "nothing left aside");
        // A root without resolv.conf gets none back.
        std::fs::remove_file(root.join("etc/resolv.conf")).unwrap();
        drop(ResolvConfSwap::enter(&root));
        assert!(std::fs::symlink_metadata(root.join("etc/resolv.conf")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
