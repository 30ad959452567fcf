//! Checks made before anything is built, in virt-dib's order (its cmdline.ml, then main):
//! -B, elements, --python, the library's `die`, per-format tools, checksum tools.

use std::path::{Path, PathBuf};

use crate::cli::Cmdline;
use crate::formats::Format;

/// What the checks found on the host.
#[derive(Debug, Clone)]
pub struct HostTools {
    /// The Python interpreter, exported to extra-data.d as DIB_PYTHON_EXEC.
    pub python: PathBuf,
    /// The guest network's backend; None with --no-network.
    pub passt: Option<PathBuf>,
}

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

fn needed(prog: &str) -> Result<PathBuf, String> {
    which(prog).ok_or_else(|| format!("{prog} needed but not found"))
}

/// The python of the virtualenv holding `lib` (diskimage-builder installed there by pip), as
/// disk-image-create would run under it: its host-side Python steps import diskimage_builder.
fn venv_python(lib: &Path) -> Option<PathBuf> {
    let lib = std::path::absolute(lib).ok()?;
    lib.ancestors().find(|d| d.join("pyvenv.cfg").is_file()).and_then(|venv| {
        ["bin/python3", "bin/python"].iter().map(|p| venv.join(p)).find(|p| which(&p.to_string_lossy()).is_some())
    })
}

/// Runs the checks; the error is the message for `prog: error: ...`.
pub fn check(c: &Cmdline) -> Result<HostTools, String> {
    let base = c.basepath.as_deref().filter(|b| !b.is_empty()).ok_or("-B must be specified")?;
    if c.elements.is_empty() {
        return Err("at least one distribution root element must be specified".into());
    }
    // virt-dib looks --python up here, before checking the library.
    let python = match &c.python {
        Some(p) => Some(needed(p)?),
        None => None,
    };
    if std::fs::symlink_metadata(Path::new(base).join("die")).is_err() {
        return Err("the specified base path is not the diskimage-builder library".into());
    }
    // Debian 12 has no `python` unless python-is-python3 is installed: fall back to python3.
    let python = match python {
        Some(p) => p,
        None => match venv_python(Path::new(base)) {
            Some(p) => p,
            None => which("python").or_else(|| which("python3")).ok_or("python needed but not found")?,
        },
    };
    for f in &c.formats {
        if *f == Format::Docker {
            needed("docker")?;
            if c.docker_target.is_none() {
                return Err("docker: a target was not specified, use ‘--docker-target’".into());
            }
        }
        if *f == Format::Qcow2 {
            crate::formats::qcow2::Qcow2Options::parse(c.compress, c.qemu_img_options.as_deref())?;
        }
    }
    // The appliance network is on by default, as in virt-dib; passt provides it.
    let passt = match c.network {
        true => Some(which("passt").ok_or("passt is not installed: install the 'passt' package or use --no-network")?),
        false => None,
    };
    Ok(HostTools { python, passt })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(base: Option<&str>, elements: &[&str]) -> Cmdline {
        Cmdline {
            basepath: base.map(String::from),
            elements: elements.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_library_inside_a_virtualenv_brings_its_python() {
        let venv = std::env::temp_dir().join(format!("microdib-venv-{}", std::process::id()));
        let lib = venv.join("lib/python3.11/site-packages/diskimage_builder/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        assert_eq!(venv_python(&lib), None, "no pyvenv.cfg yet");
        std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        std::os::unix::fs::symlink(which("sh").unwrap(), venv.join("bin/python3")).unwrap();
        assert_eq!(venv_python(&lib), Some(venv.join("bin/python3")));
        std::fs::remove_dir_all(&venv).unwrap();
    }

    #[test]
    fn checks_run_in_virt_dibs_order() {
        assert_eq!(check(&cmdline(None, &[])).unwrap_err(), "-B must be specified");
        assert_eq!(check(&cmdline(Some(""), &["x"])).unwrap_err(), "-B must be specified");
        assert_eq!(
            check(&cmdline(Some("/nonexistent"), &[])).unwrap_err(),
            "at least one distribution root element must be specified"
        );
        let mut c = cmdline(Some("/nonexistent"), &["x"]);
        c.python = Some("no-such-python-here".into());
        assert_eq!(check(&c).unwrap_err(), "no-such-python-here needed but not found");
        c.python = None;
        assert_eq!(check(&c).unwrap_err(), "the specified base path is not the diskimage-builder library");
        let lib = std::env::temp_dir().join(format!("microdib-lib-{}", std::process::id()));
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("die"), "").unwrap();
        let mut c = cmdline(Some(lib.to_str().unwrap()), &["x"]);
        c.network = false;
        assert!(check(&c).is_ok());
        c.qemu_img_options = Some("compat=9".into());
        assert!(check(&c).unwrap_err().contains("invalid value ‘9’ for qcow2 option ‘compat’"));
        std::fs::remove_dir_all(&lib).unwrap();
    }

    #[test]
    fn which_finds_programs() {
        assert!(which("sh").is_some());
        assert!(which("/bin/sh").is_some());
        assert!(which("/etc/passwd").is_none());
        assert!(which("surely-not-a-program-xyz").is_none());
    }
}
