//! The option table: every option of virt-dib(1) plus microdib's own, defined once. The parser,
//! `--help`, `--short-options`/`--long-options`, the man page and the shell completions are all
//! generated from it.

use super::getopt::{ArgKind, OptSpec};

/// Identity of each option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opt {
    Accel,
    CacheClear,
    CacheDir,
    CacheList,
    CacheMaxAge,
    CacheMaxSize,
    NoCache,
    SquashfsCompression,
    Arch,
    BasePath,
    Checksum,
    Color,
    Debug,
    DebugGc,
    DockerTarget,
    Drive,
    DriveFormat,
    ElementPath,
    Envvar,
    ExcludeElement,
    ExcludeScript,
    ExtraPackages,
    Formats,
    FsType,
    Help,
    ImageCache,
    InstallType,
    Memsize,
    MachineReadable,
    MkfsOptions,
    Name,
    Network,
    NetworkHostLoopback,
    NoDeleteOnFailure,
    NoNetwork,
    Python,
    Quiet,
    QemuImgOptions,
    Ramdisk,
    RamdiskElement,
    RootLabel,
    Size,
    SkipBase,
    Smp,
    NoCompression,
    Version,
    Verbose,
    Wrap,
    Trace,
    ShortOptions,
    LongOptions,
}

/// An option with its documentation.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    pub spec: OptSpec<Opt>,
    /// Argument name in `--help` (`<path>`), empty for flags.
    pub metavar: &'static str,
    pub help: &'static str,
    /// Left out of `--help` and the man page (virt-dib's hidden options).
    pub hidden: bool,
}

const fn opt(
    id: Opt,
    shorts: &'static [char],
    longs: &'static [&'static str],
    arg: ArgKind,
    metavar: &'static str,
    help: &'static str,
) -> OptionDoc {
    OptionDoc { spec: OptSpec { id, shorts, longs, arg }, metavar, help, hidden: false }
}

const fn hidden(id: Opt, longs: &'static [&'static str]) -> OptionDoc {
    OptionDoc { spec: OptSpec { id, shorts: &[], longs, arg: ArgKind::None }, metavar: "", help: "", hidden: true }
}

use ArgKind::{None as Flag, Optional, Required as Arg};

/// Every option, in no particular order (`--help` sorts them).
pub const OPTIONS: &[OptionDoc] = &[
    opt(Opt::Accel, &[], &["accel"], Arg, "<auto|kvm|tcg>", "How to run the build VM (default: auto)"),
    opt(Opt::Arch, &[], &["arch"], Arg, "<arch>", "Output architecture"),
    opt(Opt::BasePath, &['B'], &[], Arg, "<path>", "Base path of diskimage-builder library"),
    opt(Opt::CacheClear, &[], &["cache-clear"], Flag, "", "Remove the phase cache’s entries and exit"),
    opt(Opt::CacheDir, &[], &["cache-dir"], Arg, "<directory>", "Location of the phase cache"),
    opt(Opt::CacheList, &[], &["cache-list"], Flag, "", "List the phase cache’s entries and exit"),
    opt(Opt::CacheMaxAge, &[], &["cache-max-age"], Arg, "<age>", "Reuse phases built less long ago (default: 1d)"),
    opt(Opt::CacheMaxSize, &[], &["cache-max-size"], Arg, "<size>", "Bound of the phase cache (default: 20G)"),
    opt(Opt::Checksum, &[], &["checksum"], Flag, "", "Generate MD5 and SHA256 checksum files"),
    opt(
        Opt::Color,
        &[],
        &["color", "colors", "colour", "colours"],
        Flag,
        "",
        "Use ANSI colour sequences even if not tty",
    ),
    opt(Opt::Debug, &[], &["debug"], Arg, "<level>", "Set debug level"),
    hidden(Opt::DebugGc, &["debug-gc"]),
    opt(Opt::DockerTarget, &[], &["docker-target"], Arg, "<target>", "Repo and tag for docker"),
    opt(Opt::Drive, &[], &["drive"], Arg, "<path>", "Optional drive for caches"),
    opt(Opt::DriveFormat, &[], &["drive-format"], Arg, "<format>", "Format of optional drive"),
    opt(Opt::ElementPath, &['p'], &["element-path"], Arg, "<path>", "Add a new elements location"),
    opt(Opt::Envvar, &[], &["envvar"], Arg, "<envvar[=value]>", "Carry/set this environment variable"),
    opt(Opt::ExcludeElement, &[], &["exclude-element"], Arg, "<element>", "Exclude the specified element"),
    opt(Opt::ExcludeScript, &[], &["exclude-script"], Arg, "<script>", "Exclude the specified script"),
    opt(Opt::ExtraPackages, &[], &["extra-packages"], Arg, "<pkg,...>", "Add extra packages to install"),
    opt(Opt::Formats, &[], &["formats"], Arg, "<qcow2,tgz,...>", "Output formats"),
    opt(Opt::FsType, &[], &["fs-type"], Arg, "<fs>", "Filesystem for the image"),
    opt(Opt::Help, &[], &["help"], Flag, "", "Display brief help"),
    opt(Opt::ImageCache, &[], &["image-cache"], Arg, "<directory>", "Location for cached images"),
    opt(Opt::InstallType, &[], &["install-type"], Arg, "<type>", "Installation type"),
    opt(Opt::Memsize, &['m'], &["memsize"], Arg, "<mb>", "Set memory size"),
    opt(Opt::MachineReadable, &[], &["machine-readable"], Optional, "[=format]", "Make output machine readable"),
    opt(Opt::MkfsOptions, &[], &["mkfs-options"], Arg, "<option>", "Add mkfs options"),
    opt(Opt::Name, &[], &["name"], Arg, "<name>", "Name of the image"),
    opt(Opt::Network, &[], &["network"], Flag, "", "Enable appliance network (default)"),
    opt(
        Opt::NetworkHostLoopback,
        &[],
        &["network-host-loopback"],
        Flag,
        "",
        "Let the build VM reach this host’s local services",
    ),
    opt(Opt::NoCache, &[], &["no-cache"], Flag, "", "Build every phase, keep no checkpoint"),
    opt(Opt::NoDeleteOnFailure, &[], &["no-delete-on-failure"], Flag, "", "Don’t delete output file on failure"),
    opt(Opt::NoNetwork, &[], &["no-network"], Flag, "", "Disable appliance network"),
    opt(Opt::Python, &[], &["python"], Arg, "<python>", "Set Python interpreter"),
    opt(Opt::Quiet, &['q'], &["quiet"], Flag, "", "Don’t print progress messages"),
    opt(Opt::QemuImgOptions, &[], &["qemu-img-options"], Arg, "<option>", "Add qemu-img options"),
    opt(Opt::Ramdisk, &[], &["ramdisk"], Flag, "", "Switch to a ramdisk build"),
    opt(Opt::RamdiskElement, &[], &["ramdisk-element"], Arg, "<name>", "Main element for building ramdisks"),
    opt(Opt::RootLabel, &[], &["root-label"], Arg, "<label>", "Label for the root fs"),
    opt(Opt::Size, &[], &["size"], Arg, "<size>", "Set output disk size"),
    opt(Opt::SkipBase, &[], &["skip-base"], Flag, "", "Skip the inclusion of the ‘base’ element"),
    opt(Opt::Smp, &[], &["smp"], Arg, "<vcpus>", "Set number of vCPUs"),
    opt(
        Opt::SquashfsCompression,
        &[],
        &["squashfs-compression"],
        Arg,
        "<xz|zstd[:N]|gzip[:N]>",
        "Compression of the squashfs output (default: xz)",
    ),
    opt(Opt::NoCompression, &['u'], &[], Flag, "", "Do not compress the qcow2 image"),
    opt(Opt::Version, &['V'], &["version"], Flag, "", "Display version and exit"),
    opt(Opt::Verbose, &['v'], &["verbose"], Flag, "", "Enable debugging messages"),
    opt(Opt::Wrap, &[], &["wrap"], Flag, "", "Wrap log messages even if not tty"),
    opt(Opt::Trace, &['x'], &[], Flag, "", "Enable tracing of appliance commands"),
    hidden(Opt::ShortOptions, &["short-options"]),
    hidden(Opt::LongOptions, &["long-options"]),
];

/// The parser's view of the table.
pub fn specs() -> Vec<OptSpec<Opt>> {
    OPTIONS.iter().map(|o| o.spec).collect()
}

/// How an option is written in `--help`: `-p, --element-path <path>`.
pub fn keys_text(o: &OptionDoc) -> String {
    let keys: Vec<String> =
        o.spec.shorts.iter().map(|c| format!("-{c}")).chain(o.spec.longs.iter().map(|l| format!("--{l}"))).collect();
    let mut s = keys.join(", ");
    match o.spec.arg {
        ArgKind::None => {}
        ArgKind::Optional => s.push_str(o.metavar),
        ArgKind::Required => {
            s.push(' ');
            s.push_str(o.metavar);
        }
    }
    s
}

/// Sort key of `--help`: the lowest key, lower-cased, without dashes.
fn sort_key(o: &OptionDoc) -> String {
    o.spec
        .shorts
        .iter()
        .map(|c| c.to_string())
        .chain(o.spec.longs.iter().map(|l| l.to_string()))
        .map(|k| k.to_lowercase())
        .min()
        .unwrap_or_default()
}

/// The visible options in `--help` order.
pub fn visible_sorted() -> Vec<&'static OptionDoc> {
    let mut v: Vec<&OptionDoc> = OPTIONS.iter().filter(|o| !o.hidden).collect();
    v.sort_by_key(|o| sort_key(o));
    v
}

/// The `--help` text for a program invoked as `prog`.
pub fn help_text(prog: &str) -> String {
    let mut s = format!(
        "{prog}: run diskimage-builder elements to generate images\n\n {prog} -B DIB-LIB -p ELEMENTS-PATH elements...\n\n\
         A short summary of the options is given below.  For detailed help please\n\
         read the man page {prog}(1).\n\nOptions:\n"
    );
    const COLUMN: usize = 38;
    for o in visible_sorted() {
        let keys = format!("  {}", keys_text(o));
        if keys.chars().count() < COLUMN - 1 {
            s.push_str(&format!("{keys:<width$}{}\n", o.help, width = COLUMN));
        } else {
            s.push_str(&format!("{keys}\n{:COLUMN$}{}\n", "", o.help));
        }
    }
    s
}

/// `--short-options` / `--long-options`: every spelling, one per line, hidden ones included.
pub fn option_names(long: bool) -> String {
    let mut names: Vec<String> = if long {
        OPTIONS.iter().flat_map(|o| o.spec.longs.iter().map(|l| format!("--{l}"))).collect()
    } else {
        OPTIONS.iter().flat_map(|o| o.spec.shorts.iter().map(|c| format!("-{c}"))).collect()
    };
    names.sort();
    names.into_iter().map(|n| n + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of virt-dib 1.48.2's observed `--help` whose option and text microdib keeps as is.
    const VIRT_DIB_LINES: &[&str] = &[
        "  --arch <arch>                       Output architecture",
        "  -B <path>                           Base path of diskimage-builder library",
        "  --color, --colors, --colour, --colours",
        "                                      Use ANSI colour sequences even if not tty",
        "  --envvar <envvar[=value]>           Carry/set this environment variable",
        "  -m, --memsize <mb>                  Set memory size",
        "  --machine-readable[=format]         Make output machine readable",
        "  --no-delete-on-failure              Don’t delete output file on failure",
        "  -u                                  Do not compress the qcow2 image",
        "  -V, --version                       Display version and exit",
    ];

    #[test]
    fn help_layout_matches_virt_dib() {
        let help = help_text("virt-dib");
        for l in VIRT_DIB_LINES {
            assert!(help.lines().any(|h| h == *l), "missing line {l:?} in\n{help}");
        }
        assert!(help.starts_with("virt-dib: run diskimage-builder elements to generate images\n\n virt-dib -B"));
        // virt-dib's order: -m before --machine-readable, -q before --qemu-img-options, -x last.
        let pos = |k: &str| help.find(k).unwrap();
        assert!(pos("-m, --memsize") < pos("--machine-readable"));
        assert!(pos("-q, --quiet") < pos("--qemu-img-options"));
        assert!(pos("--smp") < pos("  -u ") && pos("--wrap") < pos("  -x "));
        assert!(!help.contains("--debug-gc") && !help.contains("--long-options"));
    }

    #[test]
    fn option_name_listings() {
        assert_eq!(option_names(false), "-B\n-V\n-m\n-p\n-q\n-u\n-v\n-x\n");
        let long = option_names(true);
        for n in ["--arch", "--colours", "--debug-gc", "--machine-readable", "--short-options", "--wrap"] {
            assert!(long.lines().any(|l| l == n), "{n}");
        }
    }

    #[test]
    fn no_spelling_is_defined_twice() {
        let mut all: Vec<String> =
            option_names(true).lines().chain(option_names(false).lines()).map(String::from).collect();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
