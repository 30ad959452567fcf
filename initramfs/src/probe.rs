//! The boot-probe initramfs: busybox plus an /init that prints a marker, the number of online
//! CPUs and /proc/uptime, then ends the VM the chosen way. Tests and the boot benchmark use it
//! to check and time the VMM without the agent.

use std::path::Path;

use crate::{Archive, Error};

/// Printed by the probe's init as soon as it runs (benchmarks time to this line).
pub const MARKER: &str = "MICRODIB-PROBE: init reached";

/// Disk checks, run when the guest has /dev/vda (and /dev/vdb): size, serial, the first 16
/// bytes, a write at 4 KiB, a discard of the second MiB; whether vdb accepts a write.
const DISK_CHECKS: &str = "\
B=/bin/busybox\n\
if [ -b /dev/vda ]; then\n\
  echo \"MICRODIB-PROBE: vda-size=$($B blockdev --getsize64 /dev/vda)\"\n\
  echo \"MICRODIB-PROBE: vda-serial=$($B cat /sys/block/vda/serial)\"\n\
  echo \"MICRODIB-PROBE: vda-head=$($B dd if=/dev/vda bs=16 count=1 2>/dev/null | $B xxd -p)\"\n\
  echo -n microdib-was-here | $B dd of=/dev/vda bs=4096 seek=1 conv=notrunc 2>/dev/null && $B sync && echo 'MICRODIB-PROBE: vda-write=ok'\n\
  $B blkdiscard -o 1048576 -l 1048576 /dev/vda && echo 'MICRODIB-PROBE: vda-discard=ok'\n\
fi\n\
if [ -b /dev/vdb ]; then\n\
  if echo x | $B dd of=/dev/vdb conv=fsync 2>/dev/null; then echo 'MICRODIB-PROBE: vdb-write=accepted'; else echo 'MICRODIB-PROBE: vdb-write=refused'; fi\n\
fi\n";

/// How the probe's init ends the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeExit {
    /// `reboot -f`: with `reboot=k` the i8042 reset, the normal microVM shutdown.
    Reboot,
    /// init exits, so the kernel panics ("Attempted to kill init").
    Panic,
}

/// The /init script.
pub fn init_script(exit: ProbeExit) -> String {
    let end = match exit {
        ProbeExit::Reboot => "exec /bin/busybox reboot -f",
        ProbeExit::Panic => "exit 1",
    };
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         echo '{MARKER}'\n\
         echo \"MICRODIB-PROBE: nproc=$(/bin/busybox nproc)\"\n\
         echo \"MICRODIB-PROBE: uptime=$(/bin/busybox cat /proc/uptime)\"\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         for d in /sys/bus/virtio/devices/*; do [ -e \"$d/device\" ] && echo \"MICRODIB-PROBE: virtio-device=$(/bin/busybox cat $d/device)\"; done\n\
         [ -e /dev/hwrng ] && echo \"MICRODIB-PROBE: hwrng=$(/bin/busybox dd if=/dev/hwrng bs=16 count=1 2>/dev/null | /bin/busybox od -An -tx1 | /bin/busybox tr -d ' \\n')\"\n\
         {DISK_CHECKS}\
         {end}\n"
    )
}

/// Builds the probe image around a statically linked busybox.
pub fn archive(busybox: &Path, exit: ProbeExit) -> Result<Archive, Error> {
    let mut a = Archive::new();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        a.dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before anything mounts devtmpfs.
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.char_device("dev/null", 0o666, 1, 3)?;
    a.host_file("bin/busybox", busybox)?;
    a.symlink("bin/sh", "busybox")?;
    a.file("init", 0o755, init_script(exit))?;
    Ok(a)
}

/// A minimal appliance for testing the agent: the agent as /init, plus busybox for commands.
pub fn agent_archive(agent: &Path, busybox: &Path) -> Result<Archive, Error> {
    let mut a = Archive::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "run"] {
        a.dir(d, 0o755)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.host_file("init", agent)?;
    a.host_file("bin/busybox", busybox)?;
    for applet in [
        "sh",
        "cat",
        "echo",
        "sleep",
        "kill",
        "ls",
        "dd",
        "sync",
        "mkdir",
        "sha256sum",
        "mount",
        "umount",
        "tar",
        "find",
        "stat",
        "env",
    ] {
        a.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_prints_marker_then_ends() {
        let s = init_script(ProbeExit::Reboot);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains(MARKER));
        assert!(s.trim_end().ends_with("reboot -f"));
        assert!(init_script(ProbeExit::Panic).trim_end().ends_with("exit 1"));
    }
}
