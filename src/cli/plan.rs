//! From the command line to a `BuildPlan`: virt-dib's checks before anything is built, in its
//! order (its cmdline.ml, then main: -B, elements, --python, the library's `die`, per-format
//! tools and options, the network), then every option typed once.

use std::path::{Path, PathBuf};

use super::Cmdline;
use crate::formats::qcow2::Qcow2Options;
use crate::formats::Format;
use crate::host::which;
use crate::plan::{BuildPlan, CachePlan, ElementsPlan, HelperDrive, ImagePlan, NetworkPlan, OutputsPlan, VmPlan};

/// Build VM defaults when -m / --smp are not given.
const DEFAULT_MEMORY_MIB: u64 = 1024;
const DEFAULT_VCPUS: u8 = 2;

/// Why a command line cannot be built; the text is virt-dib's `prog: error: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("-B must be specified")]
    NoLibrary,
    #[error("at least one distribution root element must be specified")]
    NoElements,
    #[error("{0} needed but not found")]
    Needed(String),
    #[error("the specified base path is not the diskimage-builder library")]
    NotTheLibrary,
    #[error("docker: a target was not specified, use ‘--docker-target’")]
    NoDockerTarget,
    #[error("{0}")]
    Qcow2Options(String),
    #[error("passt is not installed: install the 'passt' package or use --no-network")]
    NoPasst,
    #[error("--network-host-loopback needs the network, which --no-network turns off")]
    LoopbackWithoutNetwork,
}

fn needed(prog: &str) -> Result<PathBuf, PlanError> {
    which(prog).ok_or_else(|| PlanError::Needed(prog.to_owned()))
}

/// The python of the virtualenv holding `lib` (diskimage-builder installed there by pip), as
/// disk-image-create would run under it: its host-side Python steps import diskimage_builder.
fn venv_python(lib: &Path) -> Option<PathBuf> {
    let lib = std::path::absolute(lib).ok()?;
    lib.ancestors().find(|d| d.join("pyvenv.cfg").is_file()).and_then(|venv| {
        ["bin/python3", "bin/python"].iter().map(|p| venv.join(p)).find(|p| which(&p.to_string_lossy()).is_some())
    })
}

/// Runs the checks and types the options.
pub fn plan(c: &Cmdline) -> Result<BuildPlan, PlanError> {
    let base = c.basepath.as_deref().filter(|b| !b.is_empty()).ok_or(PlanError::NoLibrary)?;
    if c.elements.is_empty() {
        return Err(PlanError::NoElements);
    }
    // virt-dib looks --python up here, before checking the library.
    let python = match &c.python {
        Some(p) => Some(needed(p)?),
        None => None,
    };
    if std::fs::symlink_metadata(Path::new(base).join("die")).is_err() {
        return Err(PlanError::NotTheLibrary);
    }
    // Debian 12 has no `python` unless python-is-python3 is installed: fall back to python3.
    let python = match python {
        Some(p) => p,
        None => match venv_python(Path::new(base)) {
            Some(p) => p,
            None => which("python").or_else(|| which("python3")).ok_or(PlanError::Needed("python".into()))?,
        },
    };
    let mut qcow2 = Qcow2Options::default();
    for f in &c.formats {
        if *f == Format::Docker {
            needed("docker")?;
            if c.docker_target.is_none() {
                return Err(PlanError::NoDockerTarget);
            }
        }
        if *f == Format::Qcow2 {
            qcow2 = Qcow2Options::parse(c.compress, c.qemu_img_options.as_deref()).map_err(PlanError::Qcow2Options)?;
        }
    }
    // The appliance network is on by default, as in virt-dib; passt provides it.
    if c.network_host_loopback && !c.network {
        return Err(PlanError::LoopbackWithoutNetwork);
    }
    let network = match c.network {
        true => Some(NetworkPlan {
            passt: which("passt").ok_or(PlanError::NoPasst)?,
            host_loopback: c.network_host_loopback,
        }),
        false => None,
    };
    Ok(BuildPlan {
        elements: ElementsPlan {
            named: c.elements.clone(),
            paths: c.element_paths.clone(),
            exclude_elements: c.exclude_elements.clone(),
            exclude_scripts: c.exclude_scripts.clone(),
            skip_base: c.skip_base,
            ramdisk: c.ramdisk,
            ramdisk_element: c.ramdisk_element.clone(),
            install_type: c.install_type.clone(),
            arch: c.arch.clone().unwrap_or_else(crate::host::arch),
        },
        image: ImagePlan {
            name: c.name.clone(),
            size: c.size,
            fs_type: c.fs_type.clone(),
            root_label: c.root_label(),
            mkfs_options: c.mkfs_options.clone(),
        },
        outputs: OutputsPlan {
            formats: c.formats.clone(),
            checksum: c.checksum,
            delete_on_failure: c.delete_on_failure,
            qcow2,
            squashfs_compression: c.squashfs_compression,
            docker_target: c.docker_target.clone(),
        },
        vm: VmPlan {
            accel: c.accel,
            memory_mib: c.memsize.map(|m| m.max(256) as u64).unwrap_or(DEFAULT_MEMORY_MIB),
            vcpus: c.smp.map(|n| n.clamp(1, 64) as u8).unwrap_or(DEFAULT_VCPUS),
            network,
            drive: c.drive.as_ref().map(|d| HelperDrive { path: PathBuf::from(d), format: c.drive_format.clone() }),
        },
        lib_dir: PathBuf::from(base),
        envvars: c.envvars.clone(),
        extra_packages: c.extra_packages.clone(),
        image_cache: image_cache_path(c.image_cache.as_deref(), std::env::var_os("HOME")),
        python,
        debug: c.debug,
        trace: c.trace,
        cache: CachePlan {
            dir: c.cache.enabled.then(|| cache_dir(&c.cache)),
            max_bytes: c.cache.max_bytes,
            max_age: c.cache.max_age,
        },
    })
}

/// `--cache-dir`, or `${XDG_CACHE_HOME:-~/.cache}/microdib/phases`.
pub fn cache_dir(o: &super::CacheOptions) -> PathBuf {
    match &o.dir {
        Some(dir) => PathBuf::from(dir),
        None => crate::host::cache_root().join("phases"),
    }
}

/// `--image-cache`, or `$HOME/.cache/image-create`.
fn image_cache_path(option: Option<&str>, home: Option<std::ffi::OsString>) -> PathBuf {
    match option {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(home.unwrap_or_default()).join(".cache/image-create"),
    }
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
        assert_eq!(plan(&cmdline(None, &[])).unwrap_err().to_string(), "-B must be specified");
        assert_eq!(plan(&cmdline(Some(""), &["x"])).unwrap_err().to_string(), "-B must be specified");
        assert_eq!(
            plan(&cmdline(Some("/nonexistent"), &[])).unwrap_err().to_string(),
            "at least one distribution root element must be specified"
        );
        let mut c = cmdline(Some("/nonexistent"), &["x"]);
        c.python = Some("no-such-python-here".into());
        assert_eq!(plan(&c).unwrap_err().to_string(), "no-such-python-here needed but not found");
        c.python = None;
        assert_eq!(plan(&c).unwrap_err().to_string(), "the specified base path is not the diskimage-builder library");
        let lib = std::env::temp_dir().join(format!("microdib-lib-{}", std::process::id()));
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("die"), "").unwrap();
        let mut c = cmdline(Some(lib.to_str().unwrap()), &["x"]);
        c.network = false;
        assert!(plan(&c).is_ok());
        c.qemu_img_options = Some("compat=9".into());
        assert!(plan(&c).unwrap_err().to_string().contains("invalid value ‘9’ for qcow2 option ‘compat’"));
        std::fs::remove_dir_all(&lib).unwrap();
    }

    #[test]
    fn image_cache_defaults_to_homes_image_create() {
        assert_eq!(image_cache_path(None, Some("/home/u".into())), PathBuf::from("/home/u/.cache/image-create"));
        assert_eq!(image_cache_path(Some("rel/c"), Some("/home/u".into())), PathBuf::from("rel/c"));
    }
}
