//! What only the guest's PID 1 does: mount the pseudo file systems, make the appliance's
//! squashfs the root, reap orphans, and end the VM. Nothing here runs in the host tests.

use std::path::Path;

use crate::{network, sys};

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// PID 1's setup before serving. It returns in the process that is to serve: a child of PID 1,
/// which stays behind to reap (see [`supervise`]).
pub fn init() {
    mount_pseudo_filesystems();
    if let Some(disk) = appliance_disk() {
        if let Err(e) = switch_to_appliance_root(&disk) {
            eprintln!("microdib-agent: cannot switch to the appliance root on {disk}: {e}");
            power_off();
        }
    }
    network::setup(&network::kernel_cmdline());
    supervise();
}

fn mount_pseudo_filesystems() {
    for (src, dir, fs) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ] {
        if let Err(e) = sys::mount(src, dir, fs, 0, None) {
            eprintln!("microdib-agent: mount {fs} on {dir}: {e}");
        }
    }
}

/// The block device carrying the appliance root, found by its serial number.
fn appliance_disk() -> Option<String> {
    let entries = std::fs::read_dir("/sys/block").ok()?;
    entries.flatten().find_map(|e| {
        let serial = std::fs::read_to_string(e.path().join("serial")).ok()?;
        (serial.trim() == microdib_proto::APPLIANCE_DISK_SERIAL)
            .then(|| format!("/dev/{}", e.file_name().to_string_lossy()))
    })
}

/// Makes the appliance's squashfs, under a tmpfs overlay, the root file system: the agent keeps
/// running (it is static) and everything it starts sees the appliance's tools.
fn switch_to_appliance_root(disk: &str) -> std::io::Result<()> {
    sys::mount(disk, "/sysroot/ro", "squashfs", libc::MS_RDONLY, None)?;
    sys::mount("tmpfs", "/sysroot/rw", "tmpfs", 0, None)?;
    std::fs::create_dir_all("/sysroot/rw/upper")?;
    std::fs::create_dir_all("/sysroot/rw/work")?;
    sys::mount(
        "overlay",
        "/sysroot/root",
        "overlay",
        0,
        Some("lowerdir=/sysroot/ro,upperdir=/sysroot/rw/upper,workdir=/sysroot/rw/work"),
    )?;
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        sys::mount(d, format!("/sysroot/root{d}"), "", libc::MS_MOVE, None)?;
    }
    std::env::set_current_dir("/sysroot/root")?;
    sys::mount(".", "/", "", libc::MS_MOVE, None)?;
    sys::chroot(Path::new("."))?;
    std::env::set_current_dir("/")
}

/// Runs the server in a child process and, as PID 1, reaps every process that ends up ours
/// (orphans of element scripts included); if the server itself dies, ends the VM.
fn supervise() {
    // SAFETY: fork before any thread exists; the child continues as a normal process.
    let server = unsafe { libc::fork() };
    if server < 0 {
        eprintln!("microdib-agent: fork: {}", std::io::Error::last_os_error());
        return; // serve from PID 1 itself, without a reaper
    }
    if server == 0 {
        return; // the child serves
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == server {
            eprintln!("microdib-agent: the server process ended (status {status}); powering off");
            power_off();
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Flushes the file systems and ends the VM.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; ending the VM is the intent. With the kernel's
    // reboot=k our VMM sees the i8042 reset and exits; with reboot=t qemu sees a triple fault and,
    // given -no-reboot, exits.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(0)
}
