//! The build plan: what one build is asked to do, every option validated and typed once.
//! `cli::plan` makes it from the command line (with virt-dib's checks, in virt-dib's order);
//! the engine reads only this. It lives outside `cli` so the engine never sees the command line.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::formats::qcow2::Qcow2Options;
use crate::formats::squashfs::SquashfsCompression;
use crate::formats::Format;
use crate::vmbackend::Accel;

/// One build.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub elements: ElementsPlan,
    pub image: ImagePlan,
    pub outputs: OutputsPlan,
    pub vm: VmPlan,
    /// The diskimage-builder library (`-B`), checked to be one.
    pub lib_dir: PathBuf,
    /// `--envvar` as given, in command-line order (resolved against the environment by the engine).
    pub envvars: Vec<String>,
    /// `--extra-packages`, in order.
    pub extra_packages: Vec<String>,
    /// `--image-cache`, or `$HOME/.cache/image-create`.
    pub image_cache: PathBuf,
    /// The Python interpreter for extra-data.d (DIB_PYTHON_EXEC).
    pub python: PathBuf,
    /// `--debug N`.
    pub debug: i64,
    /// `-x`: trace the guest commands.
    pub trace: bool,
    pub cache: CachePlan,
}

/// The phase cache.
#[derive(Debug, Clone)]
pub struct CachePlan {
    /// Where it is (`--cache-dir`); None with `--no-cache`: nothing used, nothing stored.
    pub dir: Option<PathBuf>,
    /// `--cache-max-size`: the most its entries take together, in bytes.
    pub max_bytes: u64,
    /// `--cache-max-age`: older entries are not used.
    pub max_age: std::time::Duration,
}

/// Which elements, from where.
#[derive(Debug, Clone)]
pub struct ElementsPlan {
    /// Named on the command line, in order.
    pub named: Vec<String>,
    /// `-p`, in order.
    pub paths: Vec<String>,
    pub exclude_elements: Vec<String>,
    pub exclude_scripts: Vec<String>,
    pub skip_base: bool,
    /// `--ramdisk`, and its element.
    pub ramdisk: bool,
    pub ramdisk_element: String,
    /// `--install-type`.
    pub install_type: String,
    /// `--arch`, or the host's.
    pub arch: String,
}

/// The image's disk and root file system.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// `--name` as given (may hold a directory, which exists).
    pub name: String,
    /// `--size` in bytes.
    pub size: u64,
    pub fs_type: String,
    /// `--root-label`, or virt-dib's default for the file system.
    pub root_label: String,
    /// `--mkfs-options`, word-split by the guest shell as virt-dib did.
    pub mkfs_options: Option<String>,
}

/// The files written.
#[derive(Debug, Clone)]
pub struct OutputsPlan {
    pub formats: BTreeSet<Format>,
    pub checksum: bool,
    pub delete_on_failure: bool,
    pub qcow2: Qcow2Options,
    pub squashfs_compression: SquashfsCompression,
    /// `--docker-target` (required with the docker format).
    pub docker_target: Option<String>,
}

/// The build VM.
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub accel: Accel,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// The guest network; None with --no-network.
    pub network: Option<NetworkPlan>,
    /// `--drive`: the helper drive the user keeps, and `--drive-format` if given.
    pub drive: Option<HelperDrive>,
}

/// The guest network through passt.
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    pub passt: PathBuf,
    /// `--network-host-loopback`: the guest's gateway address is the host's loopback (local
    /// mirrors and proxies); otherwise the host's own services are out of the guest's reach.
    pub host_loopback: bool,
}

/// A `--drive` the user named; its format is decided when the build opens it (`helper_drive`).
#[derive(Debug, Clone)]
pub struct HelperDrive {
    pub path: PathBuf,
    pub format: Option<String>,
}
