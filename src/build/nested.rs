//! Builds on hosts whose KVM cannot run the build VM (the PVM hypervisor, no /dev/kvm) or with
//! `--accel tcg`: the same microdib command runs again inside a software-emulated machine whose
//! own KVM is real (qemu TCG with an emulated AMD CPU with SVM), the way hack/nested-run does
//! for the tests. Paths stay the same: the host's root is shared read-only, the current
//! directory and the output, helper-drive and cache directories writable.

use std::path::{Path, PathBuf};

use super::{appliance, signals, BuildError};
use crate::cli::Cmdline;
use crate::messages::Reporter;

/// hack/nested-run, carried in the binary so an installed microdib can use it.
const NESTED_RUN: &str = include_str!("../../hack/nested-run");
/// Set for the inner microdib: it must use the (real) KVM it finds there.
pub const INSIDE_VAR: &str = "MICRODIB_IN_NESTED";

/// Whether this process is the inner microdib.
pub fn inside() -> bool {
    std::env::var_os(INSIDE_VAR).is_some_and(|v| v == "1")
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Runs this build inside the emulated machine and returns how it ended.
pub fn run(c: &Cmdline, r: &Reporter, why: &str) -> Result<(), BuildError> {
    r.info(&format!("{why}; running the build inside a software-emulated KVM host (much slower than a KVM host)"));
    if crate::preflight::which("qemu-system-x86_64").is_none() {
        return Err(BuildError::Error(
            "qemu-system-x86_64 needed but not found (apt-get install qemu-system-x86), or run microdib on a host with KVM".into(),
        ));
    }
    // Everything the inner run reads from the host's (read-only) caches is made here first.
    let kernel = appliance::find_kernel()?;
    let agent = appliance::find_agent()?;
    initramfs::appliance::build_or_cached(&agent, &appliance::cache_root().join("appliance"), |m| r.info(m))
        .map_err(|e| format!("cannot build the appliance: {}", appliance::error_chain(&e)))?;
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let image_cache = super::image_cache_dir(c)?;
    let mut writable: Vec<PathBuf> = Vec::new();
    let out_dir = Path::new(&c.name).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    writable.push(absolute(out_dir));
    if let Some(d) = &c.drive {
        writable.push(absolute(Path::new(d).parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))));
    }
    writable.push(absolute(&image_cache));
    writable.sort();
    writable.dedup();
    writable.retain(|d| !d.starts_with(&cwd));
    if writable.len() > 3 {
        return Err(BuildError::Error("too many separate output directories for the emulated host (at most 3)".into()));
    }
    let ws = super::workspace::Workspace::create()?;
    let script = ws.dir.join("nested-run");
    super::workspace::write_executable(&script, NESTED_RUN)?;
    let vm_memory = c.memsize.unwrap_or(1024).max(256) as u64;
    // The emulated host's /tmp is RAM, and the build's throwaway disks live there: the scratch
    // disk the tree is built on (up to --size) and the helper disk with the download cache. A
    // debian-minimal vm build was killed for memory with only 2 GiB on top of the build VM's.
    // qemu takes the memory only as it is touched.
    let scratch_mib = (c.size >> 20).min(8192) + 1024;
    let mut cmd = signals::command("bash");
    cmd.arg(&script).args(["--memory", &(vm_memory + 2048 + scratch_mib).to_string(), "--cpus", "2"]);
    for d in &writable {
        cmd.arg("--rw").arg(d);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    cmd.arg("--").arg(exe).args(std::env::args_os().skip(1));
    cmd.env(INSIDE_VAR, "1")
        .env("MICRODIB_KERNEL", &kernel)
        .env("MICRODIB_AGENT", &agent)
        .env("MICRODIB_PROG", r.prog());
    for attempt in 1..=2 {
        let mut child = cmd.spawn().map_err(|e| format!("cannot start the emulated KVM host: {e}"))?;
        signals::watch_child(child.id());
        let status = child.wait();
        signals::watch_child(0);
        let code = status.as_ref().ok().and_then(|s| s.code());
        if code != Some(0) && c.delete_on_failure {
            // A stopped emulated host cannot clean up after the build inside it.
            remove_partials(out_dir, &c.name);
        }
        // The emulation resetting the build VM, or dying itself, is its fault, not the build's:
        // the build runs once more from the start.
        let emulation_fault = code == Some(i32::from(super::EMULATION_RESET_STATUS)) || code == Some(125);
        if emulation_fault && attempt == 1 && signals::caught().is_none() {
            r.warning("the software-emulated KVM host failed under the build (a known fault of the emulation, see README); running the build again");
            continue;
        }
        return match status.map(|s| s.code()) {
            Ok(Some(0)) => Ok(()),
            Ok(Some(125)) => {
                Err(BuildError::Error("the software-emulated KVM host failed (its console is above)".into()))
            }
            Ok(Some(code)) => Err(BuildError::Exit(code)),
            Ok(None) => Err(BuildError::Error("the software-emulated KVM host was killed".into())),
            Err(e) => Err(BuildError::Error(format!("waiting for the emulated KVM host failed: {e}"))),
        };
    }
    Err(BuildError::Error("the software-emulated KVM host failed twice".into()))
}

/// Removes `.NAME.EXT.partial-PID` files a build left in `dir`.
fn remove_partials(dir: &Path, name: &str) {
    let base = Path::new(name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if f.starts_with(&format!(".{base}.")) && f.contains(".partial-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_builds_partial_outputs_are_removed() {
        let d = std::env::temp_dir().join(format!("microdib-partials-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for f in [".img.raw.partial-12", ".img.tar.partial-99", "img.raw", ".other.raw.partial-12", "notes"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        remove_partials(&d, &d.join("img").to_string_lossy());
        let mut left: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec![".other.raw.partial-12", "img.raw", "notes"]);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
