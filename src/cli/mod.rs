//! The `microdib` command line, compatible with virt-dib(1): the same options, defaults,
//! validation and messages. `options` is the table, `getopt` the parser; this module turns the
//! parsed options into a `Cmdline`, checking values in command-line order as virt-dib does.

pub mod cache_command;
pub mod docs;
pub mod getopt;
pub mod options;
pub mod outcome;
pub mod plan;

use std::collections::BTreeSet;

use crate::formats::Format;
use options::Opt;

/// Where `--machine-readable` output goes.
pub use crate::report::machine::MachineReadable;

/// How the build VM runs (microdib's own option).
pub use crate::vmbackend::Accel;

/// Everything the command line says, with virt-dib's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmdline {
    pub accel: Accel,
    pub arch: Option<String>,
    pub basepath: Option<String>,
    pub checksum: bool,
    pub color: bool,
    pub debug: i64,
    pub docker_target: Option<String>,
    /// microdib's own: how the squashfs output is compressed.
    pub squashfs_compression: crate::formats::squashfs::SquashfsCompression,
    pub drive: Option<String>,
    pub drive_format: Option<String>,
    pub element_paths: Vec<String>,
    /// `--envvar` values as given, in command-line order.
    pub envvars: Vec<String>,
    pub exclude_elements: Vec<String>,
    pub exclude_scripts: Vec<String>,
    pub extra_packages: Vec<String>,
    pub formats: BTreeSet<Format>,
    pub fs_type: String,
    pub image_cache: Option<String>,
    pub install_type: String,
    pub memsize: Option<i64>,
    pub machine_readable: Option<MachineReadable>,
    pub mkfs_options: Option<String>,
    pub name: String,
    pub network: bool,
    /// microdib's own: the guest's gateway is the host's loopback.
    pub network_host_loopback: bool,
    pub delete_on_failure: bool,
    pub python: Option<String>,
    pub quiet: bool,
    pub qemu_img_options: Option<String>,
    pub ramdisk: bool,
    pub ramdisk_element: String,
    pub root_label: Option<String>,
    pub size: u64,
    pub skip_base: bool,
    pub smp: Option<i64>,
    pub compress: bool,
    pub verbose: bool,
    pub wrap: bool,
    pub trace: bool,
    /// Element names, in command-line order.
    pub elements: Vec<String>,
    pub cache: CacheOptions,
}

/// The phase cache's options (microdib's own).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheOptions {
    /// False with `--no-cache`.
    pub enabled: bool,
    /// `--cache-dir`.
    pub dir: Option<String>,
    /// `--cache-max-age`.
    pub max_age: std::time::Duration,
    /// `--cache-max-size`, in bytes.
    pub max_bytes: u64,
    /// `--cache-list` or `--cache-clear`: no build.
    pub command: Option<CacheCommand>,
}

/// What `--cache-list` and `--cache-clear` do instead of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCommand {
    List,
    Clear,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            enabled: true,
            dir: None,
            max_age: std::time::Duration::from_secs(86_400),
            max_bytes: 20 << 30,
            command: None,
        }
    }
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            accel: Accel::Auto,
            arch: None,
            basepath: None,
            checksum: false,
            color: false,
            debug: 0,
            docker_target: None,
            squashfs_compression: crate::formats::squashfs::SquashfsCompression::Xz,
            drive: None,
            drive_format: None,
            element_paths: Vec::new(),
            envvars: Vec::new(),
            exclude_elements: Vec::new(),
            exclude_scripts: Vec::new(),
            extra_packages: Vec::new(),
            formats: BTreeSet::from([Format::Qcow2]),
            fs_type: "ext4".into(),
            image_cache: None,
            install_type: "source".into(),
            memsize: None,
            machine_readable: None,
            mkfs_options: None,
            name: "image".into(),
            network: true,
            network_host_loopback: false,
            delete_on_failure: true,
            python: None,
            quiet: false,
            qemu_img_options: None,
            ramdisk: false,
            ramdisk_element: "ramdisk".into(),
            root_label: None,
            size: 5 << 30,
            skip_base: false,
            smp: None,
            compress: true,
            verbose: false,
            wrap: false,
            trace: false,
            elements: Vec::new(),
            cache: CacheOptions::default(),
        }
    }
}

impl Cmdline {
    /// `--root-label`, or virt-dib's default for the file system type.
    pub fn root_label(&self) -> String {
        self.root_label
            .clone()
            .unwrap_or_else(|| if self.fs_type == "xfs" { "img-rootfs" } else { "cloudimg-rootfs" }.to_owned())
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Help,
    Version,
    ShortOptions,
    LongOptions,
    Run(Box<Cmdline>),
}

/// A command-line problem, reported the way virt-dib reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// Parser-level (glibc getopt, integer syntax): the text plus the "Try ... --help" line.
    Usage(String),
    /// A bad value: `prog: error: <text>` with the bug-report hint.
    Error(String),
    /// The same without the hint (-v and -x were given).
    ErrorNoHint(String),
}

/// Parses `args` (without argv[0]).
pub fn parse(args: &[String]) -> Result<Action, CliError> {
    let parsed = getopt::parse(&options::specs(), args).map_err(CliError::Usage)?;
    let mut c = Cmdline::default();
    for (id, value) in parsed.options {
        if let Some(done) = apply(&mut c, id, value).map_err(|e| match e {
            // virt-dib leaves the bug-report hint out when -v and -x came before the error.
            CliError::Error(m) if c.verbose && c.trace => CliError::ErrorNoHint(m),
            other => other,
        })? {
            return Ok(done);
        }
    }
    c.elements = parsed.operands;
    Ok(Action::Run(Box::new(c)))
}

/// Applies one option; `Some(action)` for the options that end parsing (--help, ...).
fn apply(c: &mut Cmdline, id: Opt, value: Option<String>) -> Result<Option<Action>, CliError> {
    let int = |v: &str| getopt::parse_int(v).map_err(CliError::Usage);
    let value_given = value.is_some();
    {
        let v = value.unwrap_or_default();
        match id {
            Opt::Help => return Ok(Some(Action::Help)),
            Opt::Version => return Ok(Some(Action::Version)),
            Opt::ShortOptions => return Ok(Some(Action::ShortOptions)),
            Opt::LongOptions => return Ok(Some(Action::LongOptions)),
            Opt::Accel => {
                c.accel = match v.as_str() {
                    "auto" => Accel::Auto,
                    "kvm" => Accel::Kvm,
                    "tcg" => Accel::Tcg,
                    _ => return Err(CliError::Error(format!("--accel: unknown value ‘{v}’ (auto, kvm or tcg)"))),
                }
            }
            Opt::Arch => c.arch = Some(v),
            Opt::BasePath => c.basepath = Some(v),
            Opt::CacheClear => c.cache.command = Some(CacheCommand::Clear),
            Opt::CacheList => c.cache.command = Some(CacheCommand::List),
            Opt::CacheDir => c.cache.dir = Some(v),
            Opt::CacheMaxAge => c.cache.max_age = parse_age(&v)?,
            Opt::CacheMaxSize => {
                c.cache.max_bytes = parse_size(&v)
                    .map_err(|_| CliError::Error(format!("--cache-max-size: cannot parse ‘{v}’ (e.g. 20G)")))?
            }
            Opt::NoCache => c.cache.enabled = false,
            Opt::Checksum => c.checksum = true,
            Opt::Color => c.color = true,
            Opt::Debug => {
                c.debug = int(&v)?;
                if c.debug < 0 {
                    return Err(CliError::Error("--debug parameter must be >= 0".into()));
                }
            }
            Opt::DebugGc => {}
            Opt::DockerTarget => c.docker_target = Some(v),
            Opt::SquashfsCompression => {
                c.squashfs_compression = crate::formats::squashfs::SquashfsCompression::parse(&v)
                    .map_err(|e| CliError::Error(format!("--squashfs-compression: {e}")))?
            }
            Opt::Drive => c.drive = Some(v),
            Opt::DriveFormat => c.drive_format = Some(v),
            Opt::ElementPath => c.element_paths.push(v),
            Opt::Envvar => c.envvars.push(v),
            Opt::ExcludeElement => c.exclude_elements.push(v),
            Opt::ExcludeScript => c.exclude_scripts.push(v),
            Opt::ExtraPackages => c.extra_packages.extend(v.split(',').map(String::from)),
            Opt::Formats => c.formats = parse_formats(&v)?,
            Opt::FsType => c.fs_type = v,
            Opt::ImageCache => c.image_cache = Some(v),
            Opt::InstallType => c.install_type = v,
            Opt::Memsize => c.memsize = Some(int(&v)?),
            Opt::MachineReadable => {
                c.machine_readable = Some(match value_given {
                    false => MachineReadable::Stdout,
                    true => parse_machine_readable(&v)?,
                })
            }
            Opt::MkfsOptions => c.mkfs_options = Some(v),
            Opt::Name => c.name = v,
            Opt::Network => c.network = true,
            Opt::NetworkHostLoopback => c.network_host_loopback = true,
            Opt::NoNetwork => c.network = false,
            Opt::NoDeleteOnFailure => c.delete_on_failure = false,
            Opt::Python => c.python = Some(v),
            Opt::Quiet => c.quiet = true,
            Opt::QemuImgOptions => c.qemu_img_options = Some(v),
            Opt::Ramdisk => c.ramdisk = true,
            Opt::RamdiskElement => c.ramdisk_element = v,
            Opt::RootLabel => c.root_label = Some(v),
            Opt::Size => c.size = parse_size(&v)?,
            Opt::SkipBase => c.skip_base = true,
            Opt::Smp => c.smp = Some(int(&v)?),
            Opt::NoCompression => c.compress = false,
            Opt::Verbose => c.verbose = true,
            Opt::Wrap => c.wrap = true,
            Opt::Trace => c.trace = true,
        }
    }
    Ok(None)
}

/// `--size`: `^[.0-9]+[bKMG]$`, binary multiples, truncated to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, CliError> {
    let bad = || CliError::Error(format!("{s}: cannot parse size field"));
    let unit = s.chars().last().ok_or_else(bad)?;
    let number = &s[..s.len() - unit.len_utf8()];
    let scale: f64 = match unit {
        'b' => 1.0,
        'K' => 1024.0,
        'M' => 1024.0 * 1024.0,
        'G' => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let n: f64 = number.parse().map_err(|_| bad())?;
    let bytes = n * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `--cache-max-age`: a whole number with its unit, `s`, `m`, `h` or `d` (`0` alone: reuse
/// nothing).
pub fn parse_age(s: &str) -> Result<std::time::Duration, CliError> {
    let bad = || CliError::Error(format!("--cache-max-age: cannot parse ‘{s}’ (a number and s, m, h or d: 12h)"));
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let unit = s.chars().last().ok_or_else(bad)?;
    let number = &s[..s.len() - unit.len_utf8()];
    let scale: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    n.checked_mul(scale).map(std::time::Duration::from_secs).ok_or_else(bad)
}

/// `--formats`: a comma list of known names; the whole set is replaced.
pub fn parse_formats(s: &str) -> Result<BTreeSet<Format>, CliError> {
    s.split(',')
        .map(|f| Format::from_name(f).ok_or_else(|| CliError::Error(format!("invalid format ‘{f}’ in --formats"))))
        .collect()
}

/// `--machine-readable[=file:PATH|stream:stdout|stream:stderr|fd:N]`.
pub fn parse_machine_readable(s: &str) -> Result<MachineReadable, CliError> {
    let err = |what: &str| CliError::Error(format!("invalid {what} for --machine-readable: {s}"));
    let Some((kind, rest)) = s.split_once(':').filter(|(_, r)| !r.is_empty()) else {
        return Err(err("format string"));
    };
    match kind {
        "file" => Ok(MachineReadable::File(rest.to_owned())),
        "stream" => match rest {
            "stdout" => Ok(MachineReadable::Stdout),
            "stderr" => Ok(MachineReadable::Stderr),
            _ => Err(err("output stream")),
        },
        "fd" => rest.parse::<i32>().ok().filter(|fd| *fd >= 0).map(MachineReadable::Fd).ok_or_else(|| err("output fd")),
        _ => Err(err("output")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Cmdline, CliError> {
        match parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())? {
            Action::Run(c) => Ok(*c),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_virt_dibs() {
        let c = run(&["myos"]).unwrap();
        assert_eq!(c.size, 5 << 30);
        assert_eq!(c.formats, BTreeSet::from([Format::Qcow2]));
        assert_eq!((c.name.as_str(), c.fs_type.as_str(), c.install_type.as_str()), ("image", "ext4", "source"));
        assert_eq!(c.root_label(), "cloudimg-rootfs");
        assert_eq!(run(&["--fs-type", "xfs"]).unwrap().root_label(), "img-rootfs");
        assert!(c.network && c.delete_on_failure && c.compress && !c.skip_base);
        assert_eq!(c.ramdisk_element, "ramdisk");
        assert_eq!(c.elements, vec!["myos"]);
    }

    #[test]
    fn repeated_options_last_wins_or_accumulate() {
        let c = run(&[
            "--name",
            "a",
            "--name",
            "b",
            "-p",
            "x",
            "-p",
            "y",
            "--envvar",
            "A=1",
            "--envvar",
            "B",
            "--extra-packages",
            "p1,,p2",
            "--extra-packages",
            "p3",
            "--formats",
            "raw",
            "--formats",
            "tar,raw",
            "-m",
            "0x100",
            "--smp",
            "010",
            "-u",
            "--no-network",
            "--network",
            "-B",
            "lib",
            "e1",
            "e2",
        ])
        .unwrap();
        assert_eq!(c.name, "b");
        assert_eq!(c.element_paths, vec!["x", "y"]);
        assert_eq!(c.envvars, vec!["A=1", "B"]);
        assert_eq!(c.extra_packages, vec!["p1", "", "p2", "p3"]);
        assert_eq!(c.formats, BTreeSet::from([Format::Raw, Format::Tar]));
        assert_eq!((c.memsize, c.smp), (Some(256), Some(8)));
        assert!(!c.compress && c.network);
        assert_eq!(c.elements, vec!["e1", "e2"]);
    }

    #[test]
    fn value_errors_have_virt_dibs_texts() {
        let e = |args: &[&str]| run(args).unwrap_err();
        for bad in ["5", "1.5T", ".", "5g", "G", "-1G"] {
            assert_eq!(e(&["--size", bad]), CliError::Error(format!("{bad}: cannot parse size field")));
        }
        assert_eq!(parse_size("1.5G").unwrap(), 1610612736);
        assert_eq!(parse_size("100b").unwrap(), 100);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        assert_eq!(e(&["--formats", "qcow2,,raw"]), CliError::Error("invalid format ‘’ in --formats".into()));
        assert_eq!(e(&["--formats", "img"]), CliError::Error("invalid format ‘img’ in --formats".into()));
        assert_eq!(e(&["--debug", "-1"]), CliError::Error("--debug parameter must be >= 0".into()));
        assert_eq!(e(&["--smp", "abc"]), CliError::Usage("‘abc’ is not a numeric value.".into()));
        assert_eq!(e(&["-m", "9999999999"]), CliError::Usage("9999999999: integer out of range".into()));
        // The first bad value on the command line is the one reported.
        assert_eq!(e(&["--formats", "x", "--size", "y"]), CliError::Error("invalid format ‘x’ in --formats".into()));
    }

    #[test]
    fn machine_readable_specs() {
        assert!(parse_machine_readable("").is_err());
        assert_eq!(parse_machine_readable("stream:stderr").unwrap(), MachineReadable::Stderr);
        assert_eq!(parse_machine_readable("file:/x/y").unwrap(), MachineReadable::File("/x/y".into()));
        assert_eq!(parse_machine_readable("fd:3").unwrap(), MachineReadable::Fd(3));
        let msg = |s| match parse_machine_readable(s) {
            Err(CliError::Error(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(msg("bogus"), "invalid format string for --machine-readable: bogus");
        assert_eq!(msg("file:"), "invalid format string for --machine-readable: file:");
        assert_eq!(msg("stream:x"), "invalid output stream for --machine-readable: stream:x");
        assert_eq!(msg("fd:x"), "invalid output fd for --machine-readable: fd:x");
        assert_eq!(msg("bogus:x"), "invalid output for --machine-readable: bogus:x");
        assert_eq!(msg(":x"), "invalid output for --machine-readable: :x");
    }

    #[test]
    fn help_and_version_stop_parsing_where_they_stand() {
        let p = |a: &[&str]| parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["--help", "--size", "bad"]), Ok(Action::Help));
        assert!(matches!(p(&["--size", "bad", "--help"]), Err(CliError::Error(_))));
        assert_eq!(p(&["-V"]), Ok(Action::Version));
        assert_eq!(p(&["--long-options"]), Ok(Action::LongOptions));
    }
}
