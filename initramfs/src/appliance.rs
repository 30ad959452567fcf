//! The appliance: the guest userland element scripts run in, built from this host's own
//! installed files (as supermin does), so no network and no root are needed.
//!
//! It is built as the user who runs microdib, and the guest must not learn the host's secrets,
//! so two kinds of listed file stay out (with a note at `--debug`), and nothing else is needed:
//! - a file this user cannot read: Debian ships few (sudo's `/etc/sudoers` and
//!   `/etc/sudoers.d/README`, mode 0440), none that a build needs;
//! - a conffile edited on the host, whose content is not the md5 dpkg recorded for it
//!   (`Conffiles:` in dpkg's status): proxy credentials in `/etc/wgetrc`, local rules in
//!   `/etc/sudoers`, site settings in `/etc/lvm/lvm.conf` never reach the guest, whose tools
//!   then use their built-in defaults. The pristine text is in the package's `.deb` only,
//!   which apt's cache seldom keeps and which fetching would need the network for.
//!
//! Pristine, readable conffiles are copied (they hold nothing of the host's). With sudo in the
//! root but its sudoers left out, a root-only `/etc/sudoers` is written, so `/usr/bin/sudo` still
//! runs for root (element scripts get microdib's fake sudo first in PATH anyway).
//!
//! - The package list (`data/appliance-packages.txt`, plus the user's additions) is expanded
//!   with every installed dependency (dpkg's status database), and each package's files come
//!   from `dpkg -L`. Documentation is left out.
//! - ELF files pull in the shared libraries they need (DT_NEEDED, interpreter, RPATH/RUNPATH),
//!   resolved here with goblin, in case a package list misses one.
//! - The result is a read-only squashfs root (zstd) attached as a disk; a tiny initramfs holds
//!   only the agent, which mounts that root under a tmpfs overlay.
//! - Both are cached under `~/.cache/microdib/appliance/<hash>/`; the hash covers the package
//!   list, the installed version of every package in it, the listed files left out (and why)
//!   and the agent binary, so an upgrade on the host, an edited conffile, another user or a new
//!   agent rebuilds it (and says so).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::process::ExitStatus;

use backhand::compression::Compressor;
use backhand::{BackhandError, FilesystemCompressor, FilesystemWriter, NodeHeader};

use crate::Archive;

/// Serial number of the appliance disk; the agent looks for it in /sys/block/*/serial.
pub use microdib_proto::APPLIANCE_DISK_SERIAL;
/// The built-in package list.
pub const DEFAULT_PACKAGES: &str = include_str!("../data/appliance-packages.txt");

/// Why the appliance could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("cannot run {what}")]
    Command {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}){}", said(.stderr))]
    CommandFailed { what: String, status: ExitStatus, stderr: String },
    #[error("none of the appliance packages is installed on this host (is this a Debian system?)")]
    NothingInstalled,
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The squashfs writer could not read or write; `what` names the entry or the image.
    #[error("cannot build the squashfs root: {what}")]
    SquashfsIo {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The squashfs writer refused; `reason` is its own text.
    #[error("cannot build the squashfs root: {what}: {reason}")]
    Squashfs { what: String, reason: String },
    #[error(transparent)]
    Initramfs(#[from] crate::Error),
}

/// `: what a failed command said`, or nothing when it said nothing (its status says enough).
fn said(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Turns the squashfs writer's error about `what` into ours. Its I/O errors stay sources; the
/// rest keep their text (backhand's `error-strings` feature gives them one).
fn squashfs_error(what: impl std::fmt::Display) -> impl FnOnce(BackhandError) -> ApplianceError {
    move |e| match e {
        BackhandError::StdIo(source) => ApplianceError::SquashfsIo { what: what.to_string(), source },
        other => ApplianceError::Squashfs { what: what.to_string(), reason: other.to_string() },
    }
}

/// Why a file a package lists is not in the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// The user building the appliance cannot read it.
    Unreadable,
    /// A conffile changed on the host: its md5 is not the one dpkg recorded.
    EditedConffile,
}

impl Withheld {
    pub fn describe(self) -> &'static str {
        match self {
            Withheld::Unreadable => "this user cannot read it",
            Withheld::EditedConffile => "a conffile edited on this host",
        }
    }
}

/// One installed package, from dpkg's status database.
#[derive(Debug, Clone, Default)]
struct Package {
    version: String,
    /// Each entry is a set of alternatives (`a | b`).
    depends: Vec<Vec<String>>,
}

/// What the appliance is made of.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Package name to installed version, every package included.
    pub packages: BTreeMap<String, String>,
    /// Requested packages this host does not have.
    pub missing: Vec<String>,
}

/// The built appliance.
#[derive(Debug, Clone)]
pub struct ApplianceFiles {
    /// Read-only squashfs root, to attach as a disk with serial `APPLIANCE_DISK_SERIAL`.
    pub root: PathBuf,
    /// The initramfs (the agent as /init).
    pub initrd: PathBuf,
    /// Whether this call built it (false: it came from the cache).
    pub built: bool,
    /// Listed packages not installed on this host, so left out of the appliance.
    pub missing: Vec<String>,
    /// Files the packages list that were left out, and why.
    pub withheld: Vec<(PathBuf, Withheld)>,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, ApplianceError> {
    let out = cmd.output().map_err(|source| ApplianceError::Command { what: what.into(), source })?;
    if !out.status.success() {
        return Err(ApplianceError::CommandFailed {
            what: what.into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Package names from a list: one per line (or space separated), `#` comments.
pub fn parse_package_list(text: &str) -> Vec<String> {
    text.lines().map(|l| l.split('#').next().unwrap_or("")).flat_map(str::split_whitespace).map(str::to_owned).collect()
}

/// Parses a Depends field: `a (>= 1), b:any | c, d`.
fn parse_depends(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|alts| {
            alts.split('|')
                .filter_map(|a| a.split_whitespace().next())
                .map(|name| name.split(':').next().unwrap_or(name).to_owned())
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|alts| !alts.is_empty())
        .collect()
}

/// Installed packages, and which installed package provides each virtual name.
struct Installed {
    pkgs: HashMap<String, Package>,
    provides: HashMap<String, String>,
}

fn installed_packages() -> Result<Installed, ApplianceError> {
    let out = run(
        Command::new("dpkg-query").args([
            "-W",
            "-f",
            "${Package}\t${Version}\t${Status}\t${Pre-Depends}, ${Depends}\t${Provides}\n",
        ]),
        "dpkg-query",
    )?;
    let mut pkgs = HashMap::new();
    let mut provides = HashMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 5
            || !f[2].ends_with("installed")
            || f[2].contains("not-installed")
            || f[2].contains("config-files")
        {
            continue;
        }
        let name = f[0].to_owned();
        for p in parse_depends(f[4]).into_iter().flatten() {
            provides.entry(p).or_insert_with(|| name.clone());
        }
        pkgs.insert(name, Package { version: f[1].to_owned(), depends: parse_depends(f[3]) });
    }
    Ok(Installed { pkgs, provides })
}

/// Expands `wanted` with every installed dependency.
pub fn resolve(wanted: &[String]) -> Result<Resolved, ApplianceError> {
    let Installed { pkgs, provides } = installed_packages()?;
    let lookup = |n: &str| -> Option<String> {
        if pkgs.contains_key(n) {
            Some(n.to_owned())
        } else {
            provides.get(n).cloned()
        }
    };
    let mut out = Resolved::default();
    let mut queue: VecDeque<String> = VecDeque::new();
    for w in wanted {
        match lookup(w) {
            Some(p) => queue.push_back(p),
            None => out.missing.push(w.clone()),
        }
    }
    while let Some(name) = queue.pop_front() {
        if out.packages.contains_key(&name) {
            continue;
        }
        let Some(p) = pkgs.get(&name) else { continue };
        out.packages.insert(name.clone(), p.version.clone());
        for alts in &p.depends {
            // The first alternative this host has.
            if let Some(dep) = alts.iter().find_map(|a| lookup(a)) {
                queue.push_back(dep);
            }
        }
    }
    if out.packages.is_empty() {
        return Err(ApplianceError::NothingInstalled);
    }
    Ok(out)
}

/// Paths left out of the appliance: documentation and translations nobody reads in a build VM.
fn skipped(path: &Path) -> bool {
    ["/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/locale", "/usr/share/lintian"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// The files of `packages` (absolute host paths), from `dpkg -L`.
fn package_files(packages: &BTreeMap<String, String>) -> Result<BTreeSet<PathBuf>, ApplianceError> {
    let names: Vec<&String> = packages.keys().collect();
    let mut files = BTreeSet::new();
    for chunk in names.chunks(64) {
        let out = Command::new("dpkg").arg("-L").args(chunk.iter().map(|s| s.as_str())).output();
        let out = out.map_err(|source| ApplianceError::Command { what: "dpkg -L".into(), source })?;
        // dpkg -L exits non-zero if one package lists nothing (e.g. virtual); keep what it gave.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let p = PathBuf::from(line);
            if p.is_absolute() && line != "/." && !skipped(&p) {
                files.insert(p);
            }
        }
    }
    Ok(files)
}

/// Debian's alternatives (`awk` -> /etc/alternatives/awk -> gawk) are made by maintainer
/// scripts, not listed by dpkg: keep every link group whose chosen target is in the appliance.
fn add_alternatives(files: &mut BTreeSet<PathBuf>) {
    let Ok(dir) = std::fs::read_dir("/var/lib/dpkg/alternatives") else { return };
    let present: BTreeSet<PathBuf> = files.iter().filter_map(|p| host_location(p)).collect();
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let lines: Vec<&str> = text.lines().collect();
        let mut groups = vec![(entry.file_name().to_string_lossy().into_owned(), lines.get(1).copied().unwrap_or(""))];
        let mut i = 2;
        while i + 1 < lines.len() && !lines[i].is_empty() {
            groups.push((lines[i].to_owned(), lines[i + 1]));
            i += 2;
        }
        for (name, link) in groups {
            let alt = PathBuf::from("/etc/alternatives").join(&name);
            let chosen = std::fs::canonicalize(&alt).ok().and_then(|t| host_location(&t));
            if chosen.is_some_and(|t| present.contains(&t)) && !link.is_empty() {
                files.insert(alt);
                files.insert(PathBuf::from(link));
            }
        }
    }
}

/// Where a path really is on this host: its parent directories resolved (usr-merge turns
/// /bin/bash into /usr/bin/bash), the last component kept as is (it may be a symlink).
fn host_location(p: &Path) -> Option<PathBuf> {
    let parent = p.parent()?;
    let name = p.file_name()?;
    Some(std::fs::canonicalize(parent).ok()?.join(name))
}

const LIB_DIRS: &[&str] =
    &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];

/// Libraries an ELF file needs, as host paths (unresolvable names are skipped).
fn elf_needs(path: &Path) -> Vec<PathBuf> {
    let mut head = [0u8; 4];
    let Ok(mut f) = File::open(path) else { return vec![] };
    if f.read_exact(&mut head).is_err() || &head != b"\x7fELF" {
        return vec![];
    }
    let Ok(bytes) = std::fs::read(path) else { return vec![] };
    let Ok(elf) = goblin::elf::Elf::parse(&bytes) else { return vec![] };
    let origin = path.parent().unwrap_or(Path::new("/"));
    let mut dirs: Vec<PathBuf> = elf
        .rpaths
        .iter()
        .chain(elf.runpaths.iter())
        .flat_map(|r| r.split(':'))
        .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())))
        .collect();
    dirs.extend(LIB_DIRS.iter().map(PathBuf::from));
    let mut needs: Vec<PathBuf> = elf.interpreter.map(PathBuf::from).into_iter().collect();
    for lib in &elf.libraries {
        if let Some(found) = dirs.iter().map(|d| d.join(lib)).find(|p| p.exists()) {
            needs.push(found);
        }
    }
    needs
}

/// Adds every library the ELF files in `files` need, until nothing more is missing.
fn close_over_elf(files: &mut BTreeSet<PathBuf>) {
    let mut todo: Vec<PathBuf> = files.iter().cloned().collect();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    while let Some(p) = todo.pop() {
        let Some(real) = host_location(&p) else { continue };
        if !seen.insert(real.clone()) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&real) else { continue };
        if meta.file_type().is_symlink() {
            // Keep the link and follow it.
            if let Ok(target) = std::fs::canonicalize(&real) {
                if files.insert(target.clone()) {
                    todo.push(target);
                }
            }
            continue;
        }
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 && !real.to_string_lossy().contains(".so") {
            continue;
        }
        for need in elf_needs(&real) {
            if files.insert(need.clone()) {
                todo.push(need);
            }
        }
    }
}

fn header_of(meta: &std::fs::Metadata) -> NodeHeader {
    NodeHeader {
        permissions: (meta.mode() & 0o7777) as u16,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: u32::try_from(meta.mtime()).unwrap_or(0),
    }
}

/// The conffiles of `packages`, each with the md5 dpkg recorded for it.
fn conffiles(packages: &BTreeMap<String, String>) -> Result<HashMap<PathBuf, String>, ApplianceError> {
    let names: Vec<&String> = packages.keys().collect();
    let mut out = HashMap::new();
    for chunk in names.chunks(64) {
        let text = run(
            Command::new("dpkg-query").args(["-W", "-f", "${Conffiles}\n"]).args(chunk.iter().map(|s| s.as_str())),
            "dpkg-query -W -f '${Conffiles}'",
        )?;
        out.extend(parse_conffiles(&text));
    }
    Ok(out)
}

/// dpkg's conffile lines: ` /etc/wgetrc <md5>`, maybe followed by `obsolete` or
/// `remove-on-upgrade`; the path may hold spaces.
fn parse_conffiles(text: &str) -> impl Iterator<Item = (PathBuf, String)> + '_ {
    text.lines().filter_map(|line| {
        let mut rest = line.trim();
        while let Some(r) = rest.strip_suffix(" obsolete").or_else(|| rest.strip_suffix(" remove-on-upgrade")) {
            rest = r;
        }
        let (path, md5) = rest.rsplit_once(' ')?;
        path.starts_with('/').then(|| (PathBuf::from(path), md5.to_ascii_lowercase()))
    })
}

/// Why the listed host path `path` must stay out, if it must; `recorded` is the md5 dpkg
/// recorded when it is a conffile. Files that are gone, or fail otherwise, are the writer's
/// to skip or to report.
fn withheld_reason(path: &Path, recorded: Option<&str>) -> Option<Withheld> {
    use std::io::ErrorKind::PermissionDenied;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        // In a directory this user may not enter.
        Err(e) if e.kind() == PermissionDenied => return Some(Withheld::Unreadable),
        Err(_) => return None,
    };
    if !meta.is_file() {
        return None;
    }
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == PermissionDenied => return Some(Withheld::Unreadable),
        Err(_) => return None,
    };
    let recorded = recorded?;
    use md5::Digest;
    let mut h = md5::Md5::new();
    if std::io::copy(&mut f, &mut h).is_err() {
        return Some(Withheld::Unreadable);
    }
    let md5: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (md5 != recorded).then_some(Withheld::EditedConffile)
}

/// What goes into the root: host paths, and the listed ones left out (and why).
#[derive(Debug, Default)]
struct Selection {
    files: BTreeSet<PathBuf>,
    withheld: BTreeMap<PathBuf, Withheld>,
    /// Conffile to the md5 dpkg recorded for it.
    conffiles: HashMap<PathBuf, String>,
}

impl Selection {
    fn new(conffiles: HashMap<PathBuf, String>) -> Self {
        Selection { conffiles, ..Default::default() }
    }

    /// Takes `path` in, unless it must stay out.
    fn add(&mut self, path: PathBuf) {
        if self.files.contains(&path) || self.withheld.contains_key(&path) {
            return;
        }
        match withheld_reason(&path, self.conffiles.get(&path).map(String::as_str)) {
            Some(why) => {
                self.withheld.insert(path, why);
            }
            None => {
                self.files.insert(path);
            }
        }
    }

    /// Adds the alternatives links and the libraries the selected ELF files need.
    fn complete(&mut self) {
        let mut more = self.files.clone();
        add_alternatives(&mut more);
        close_over_elf(&mut more);
        for p in more {
            self.add(p);
        }
    }
}

/// The files of `resolved` and the host files every root has, less what must stay out. Cheap
/// enough to run before the cache is looked at: its hash covers what is left out.
fn select(resolved: &Resolved) -> Result<Selection, ApplianceError> {
    let mut sel = Selection::new(conffiles(&resolved.packages)?);
    for p in package_files(&resolved.packages)? {
        sel.add(p);
    }
    for extra in ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/nsswitch.conf"] {
        if Path::new(extra).exists() {
            sel.add(PathBuf::from(extra));
        }
    }
    Ok(sel)
}

/// A file the appliance needs that no package ships (made at install time on a real system).
struct Generated {
    path: &'static str,
    mode: u16,
    body: &'static str,
    /// Written only when the root holds this (the program the file configures).
    only_with: Option<&'static str>,
}

/// Each is written unless the root has the file already.
const GENERATED: &[Generated] = &[
    Generated {
        path: "/etc/passwd",
        mode: 0o644,
        body: "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        only_with: None,
    },
    Generated {
        path: "/etc/group",
        mode: 0o644,
        body: "root:x:0:\ntty:x:5:\ndisk:x:6:\nnogroup:x:65534:\n",
        only_with: None,
    },
    Generated { path: "/etc/hosts", mode: 0o644, body: "127.0.0.1 localhost\n::1 localhost\n", only_with: None },
    Generated { path: "/etc/hostname", mode: 0o644, body: "microdib\n", only_with: None },
    Generated { path: "/etc/resolv.conf", mode: 0o644, body: "", only_with: None },
    Generated { path: "/etc/mtab", mode: 0o644, body: "", only_with: None },
    // The host's is unreadable or edited (see the module's notes): root alone may use sudo.
    Generated {
        path: "/etc/sudoers",
        mode: 0o440,
        body: "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n",
        only_with: Some("/usr/bin/sudo"),
    },
];

/// A host file opened only when the image is written and closed at its end (the writer keeps
/// every reader until it is done); its errors name it.
struct HostFile {
    path: PathBuf,
    file: Option<File>,
    done: bool,
}

impl HostFile {
    fn new(path: &Path) -> Self {
        HostFile { path: path.to_owned(), file: None, done: false }
    }
}

impl Read for HostFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let named = |path: &Path, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        };
        if self.done {
            return Ok(0);
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(File::open(&self.path).map_err(|e| named(&self.path, e))?),
        };
        let n = file.read(buf).map_err(|e| named(&self.path, e))?;
        if n == 0 && !buf.is_empty() {
            self.file = None;
            self.done = true;
        }
        Ok(n)
    }
}

/// Writes the squashfs root at `out` from the host paths `sel` selected; returns the file count.
fn write_root(sel: &Selection, out: &Path) -> Result<usize, ApplianceError> {
    let mut fs = FilesystemWriter::default();
    let comp = FilesystemCompressor::new(Compressor::Zstd, None).map_err(squashfs_error("choosing zstd"))?;
    fs.set_compressor(comp);
    fs.set_root_mode(0o755);
    let adding = |p: &Path| squashfs_error(format!("adding {}", p.display()));
    let dir_header = NodeHeader { permissions: 0o755, uid: 0, gid: 0, mtime: 0 };

    // Top-level usr-merge links (/bin -> usr/bin, ...) exactly as on the host.
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        if let Ok(target) = std::fs::read_link(top) {
            fs.push_symlink(&target, top, dir_header).map_err(adding(Path::new(top)))?;
            made.insert(PathBuf::from(top));
        }
    }
    let mut count = 0;
    // Every path by its real location, parents before children.
    let real: BTreeSet<PathBuf> = sel.files.iter().filter_map(|p| host_location(p)).collect();
    for path in &real {
        if made.contains(path) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
        // Parents the package lists did not name (or that are links on the host) get created.
        let mut missing_parents = Vec::new();
        let mut a = path.parent();
        while let Some(dir) = a {
            if dir == Path::new("/") || made.contains(dir) {
                break;
            }
            missing_parents.push(dir.to_path_buf());
            a = dir.parent();
        }
        for dir in missing_parents.into_iter().rev() {
            let h = std::fs::metadata(&dir).map(|m| header_of(&m)).unwrap_or(dir_header);
            fs.push_dir(&dir, h).map_err(adding(&dir))?;
            made.insert(dir);
        }
        let header = header_of(&meta);
        let ft = meta.file_type();
        if ft.is_dir() {
            fs.push_dir(path, header).map_err(adding(path))?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(path).map_err(|source| ApplianceError::Read { path: path.clone(), source })?;
            fs.push_symlink(&target, path, header).map_err(adding(path))?;
        } else if ft.is_file() {
            fs.push_file(HostFile::new(path), path, header).map_err(adding(path))?;
            count += 1;
        } else {
            continue;
        }
        made.insert(path.clone());
    }
    for g in GENERATED {
        let p = Path::new(g.path);
        if made.contains(p) || g.only_with.is_some_and(|w| !made.contains(Path::new(w))) {
            continue;
        }
        if !made.contains(Path::new("/etc")) {
            fs.push_dir("/etc", dir_header).map_err(adding(Path::new("/etc")))?;
            made.insert(PathBuf::from("/etc"));
        }
        let h = NodeHeader { permissions: g.mode, uid: 0, gid: 0, mtime: 0 };
        fs.push_file(std::io::Cursor::new(g.body.as_bytes().to_vec()), p, h).map_err(adding(p))?;
        made.insert(p.to_path_buf());
    }
    // Mount points the agent fills in.
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/mnt", "/var", "/var/tmp"] {
        if !made.contains(Path::new(d)) {
            let perm = if d.ends_with("tmp") { 0o1777 } else { 0o755 };
            fs.push_dir(d, NodeHeader { permissions: perm, ..dir_header }).map_err(adding(Path::new(d)))?;
            made.insert(PathBuf::from(d));
        }
    }
    let f = File::create(out).map_err(|source| ApplianceError::Write { path: out.to_owned(), source })?;
    fs.write(BufWriter::new(f)).map_err(squashfs_error(format!("writing {}", out.display())))?;
    Ok(count)
}

/// The hash of everything the appliance is made of.
fn input_hash(resolved: &Resolved, withheld: &BTreeMap<PathBuf, Withheld>, agent: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Bumped whenever the way the root is assembled changes.
    h.update(b"microdib-appliance-builder-3\n");
    for (name, version) in &resolved.packages {
        h.update(format!("{name} {version}\n").as_bytes());
    }
    for (path, why) in withheld {
        h.update(format!("withheld {} {why:?}\n", path.display()).as_bytes());
    }
    h.update(Sha256::digest(agent));
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The package list: the built-in one, `~/.config/microdib/appliance-packages.txt`, and
/// `$MICRODIB_APPLIANCE_PACKAGES`.
pub fn package_list() -> Vec<String> {
    let mut list = parse_package_list(DEFAULT_PACKAGES);
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(c) = config {
        if let Ok(text) = std::fs::read_to_string(c.join("microdib/appliance-packages.txt")) {
            list.extend(parse_package_list(&text));
        }
    }
    if let Ok(extra) = std::env::var("MICRODIB_APPLIANCE_PACKAGES") {
        list.extend(parse_package_list(&extra));
    }
    list.sort();
    list.dedup();
    list
}

/// Default cache directory: `${XDG_CACHE_HOME:-~/.cache}/microdib/appliance`.
pub fn default_cache_dir() -> PathBuf {
    crate::cache_root().join("appliance")
}

/// Builds the appliance for `agent` into `cache`, or returns the cached one. `say` receives
/// progress lines (what is being built and why).
pub fn build_or_cached(
    agent: &Path,
    cache: &Path,
    mut say: impl FnMut(&str),
) -> Result<ApplianceFiles, ApplianceError> {
    let agent_bytes = std::fs::read(agent).map_err(|source| ApplianceError::Read { path: agent.to_owned(), source })?;
    let resolved = resolve(&package_list())?;
    let mut sel = select(&resolved)?;
    let dir = cache.join(input_hash(&resolved, &sel.withheld, &agent_bytes));
    let files = ApplianceFiles {
        root: dir.join("root.sqfs"),
        initrd: dir.join("initrd.cpio"),
        built: false,
        missing: resolved.missing.clone(),
        withheld: sel.withheld.iter().map(|(p, w)| (p.clone(), *w)).collect(),
    };
    if files.root.exists() && files.initrd.exists() {
        return Ok(files);
    }
    let why = if cache.exists() { "its inputs changed (host packages or agent)" } else { "none is cached yet" };
    say(&format!("appliance: building from {} host packages because {why}", resolved.packages.len()));
    std::fs::create_dir_all(cache).map_err(|source| ApplianceError::Write { path: cache.to_owned(), source })?;
    let tmp = tempdir_in(cache)?;
    sel.complete();
    let count = write_root(&sel, &tmp.join("root.sqfs"))?;
    let mut a = Archive::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "sysroot"] {
        a.dir(d, 0o755)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, agent_bytes)?;
    let initrd = tmp.join("initrd.cpio");
    let f = File::create(&initrd).map_err(|source| ApplianceError::Write { path: initrd.clone(), source })?;
    a.write_to(BufWriter::new(f)).map_err(|e| match e {
        crate::Error::Write(source) => ApplianceError::Write { path: initrd.clone(), source },
        other => other.into(),
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|source| ApplianceError::Write { path: dir.clone(), source })?;
    say(&format!("appliance: {count} files in {}", files.root.display()));
    let withheld = sel.withheld.into_iter().collect();
    Ok(ApplianceFiles { built: true, withheld, ..files })
}

fn tempdir_in(parent: &Path) -> Result<PathBuf, ApplianceError> {
    for i in 0..1000u32 {
        let p = parent.join(format!(".build-{}-{i}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(ApplianceError::Write { path: p, source }),
        }
    }
    Err(ApplianceError::Write { path: parent.to_owned(), source: std::io::ErrorKind::AlreadyExists.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_lists_and_depends() {
        assert_eq!(parse_package_list("a\n# c\nb c # d\n\n"), vec!["a", "b", "c"]);
        assert_eq!(
            parse_depends("libc6 (>= 2.34), python3:any | python3-minimal, , dpkg"),
            vec![vec!["libc6".to_string()], vec!["python3".into(), "python3-minimal".into()], vec!["dpkg".into()]]
        );
        assert!(parse_package_list(DEFAULT_PACKAGES).contains(&"e2fsprogs".to_string()));
    }

    #[test]
    fn resolves_host_packages_with_dependencies() {
        // Every Debian host has bash, and bash depends on libc6 (directly or through base-files).
        let r = resolve(&["bash".into(), "surely-not-a-package-xyz".into()]).unwrap();
        assert!(r.packages.contains_key("bash"));
        assert!(r.packages.contains_key("libc6"), "dependencies are followed");
        assert_eq!(r.missing, vec!["surely-not-a-package-xyz"]);
    }

    #[test]
    fn elf_closure_finds_the_loader_and_libc() {
        let mut files: BTreeSet<PathBuf> = [PathBuf::from("/usr/bin/ls")].into();
        add_alternatives(&mut files);
        close_over_elf(&mut files);
        assert!(files.iter().any(|f| f.to_string_lossy().contains("libc.so")), "{files:?}");
        assert!(files.iter().any(|f| f.to_string_lossy().contains("ld-linux-x86-64")), "{files:?}");
    }

    /// Set in the copy of this test binary that `as_unprivileged` runs as `nobody`.
    const UNPRIVILEGED_RUN: &str = "MICRODIB_TEST_UNPRIVILEGED_RUN";

    fn euid() -> u32 {
        // /proc/self belongs to the process's effective user.
        std::fs::metadata("/proc/self").expect("/proc is mounted").uid()
    }

    /// Runs `body` as a user that cannot read what only root may: directly when the tests run as
    /// one already, else (root, as in CI) by running the test `name` again as `nobody` from a
    /// copy of this test binary that user can execute.
    fn as_unprivileged(name: &str, body: fn()) {
        if std::env::var_os(UNPRIVILEGED_RUN).is_some() || euid() != 0 {
            assert_ne!(euid(), 0, "{UNPRIVILEGED_RUN} is set but this runs as root");
            return body();
        }
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("microdib-unpriv-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("test-binary");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        let test = format!("{}::{name}", module_path!().split_once("::").unwrap().1);
        let out = Command::new(&exe)
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(UNPRIVILEGED_RUN, "1")
            .env("HOME", "/nonexistent")
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{test} as nobody: {}\n{said}", out.status);
        assert!(said.contains("1 passed"), "{test} did not run as nobody:\n{said}");
    }

    /// A scratch directory of the running user's own.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("microdib-{name}-{}-{}", euid(), std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(&format!(": {c}"));
            cur = c.source();
        }
        s
    }

    /// Paths in a squashfs image.
    fn squashfs_paths(image: &Path) -> BTreeSet<PathBuf> {
        let r = backhand::FilesystemReader::from_reader(std::io::BufReader::new(File::open(image).unwrap())).unwrap();
        r.files().map(|n| n.fullpath.clone()).collect()
    }

    fn md5_hex(data: &[u8]) -> String {
        use md5::Digest;
        md5::Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `/etc/sudoers` (mode 0440) is in sudo's file list: a user who cannot read a listed file
    /// still gets an appliance, without that file; and a conffile edited on the host stays out
    /// while a pristine one goes in.
    #[test]
    fn unreadable_files_and_edited_conffiles_are_left_out() {
        as_unprivileged("unreadable_files_and_edited_conffiles_are_left_out", || {
            let dir = scratch("unreadable");
            let path = |n: &str| dir.join(n);
            std::fs::write(path("readable"), "hello\n").unwrap();
            std::fs::write(path("secret"), "password\n").unwrap();
            std::fs::set_permissions(path("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
            assert!(File::open(path("secret")).is_err(), "this user reads a mode 000 file");
            std::fs::create_dir(path("locked")).unwrap();
            std::fs::write(path("locked/inside"), "x\n").unwrap();
            std::fs::set_permissions(path("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
            std::fs::write(path("wgetrc"), "use_proxy = on\nhttp_proxy = http://me:pw@proxy:3128/\n").unwrap();
            std::fs::write(path("pristine.conf"), "# as shipped\n").unwrap();
            let conffiles = HashMap::from([
                (path("wgetrc"), md5_hex(b"# as shipped\n")),
                (path("pristine.conf"), md5_hex(b"# as shipped\n")),
            ]);
            let mut sel = Selection::new(conffiles);
            for n in ["", "readable", "secret", "locked", "locked/inside", "wgetrc", "pristine.conf"] {
                sel.add(path(n).components().collect());
            }
            let out = path("root.sqfs");
            let written = write_root(&sel, &out);
            let paths = written.as_ref().map(|_| squashfs_paths(&out));
            std::fs::set_permissions(path("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            let paths = paths.unwrap_or_else(|e| panic!("the root was not written: {:?}", chain(e)));
            for n in ["readable", "pristine.conf", "locked"] {
                assert!(paths.contains(&path(n)), "{n} is missing: {paths:?}");
            }
            for n in ["secret", "locked/inside", "wgetrc"] {
                assert!(!paths.contains(&path(n)), "{n} is in: {paths:?}");
            }
            let withheld: Vec<_> = sel.withheld.iter().map(|(p, w)| (p.strip_prefix(&dir).unwrap(), *w)).collect();
            assert_eq!(
                withheld,
                [
                    (Path::new("locked/inside"), Withheld::Unreadable),
                    (Path::new("secret"), Withheld::Unreadable),
                    (Path::new("wgetrc"), Withheld::EditedConffile)
                ]
            );
        });
    }

    /// With sudo in the root but no sudoers, a root-only one is written.
    #[test]
    fn sudo_gets_a_root_only_sudoers_when_the_hosts_stays_out() {
        let dir = scratch("sudoers");
        let out = dir.join("root.sqfs");
        let mut sel = Selection::default();
        sel.add(PathBuf::from("/usr/bin/true"));
        write_root(&sel, &out).unwrap();
        assert!(!squashfs_paths(&out).contains(Path::new("/etc/sudoers")), "no sudo, no sudoers");
        if let Some(sudo) = host_location(Path::new("/usr/bin/sudo")).filter(|p| p.exists()) {
            sel.add(sudo);
            write_root(&sel, &out).unwrap();
            let r =
                backhand::FilesystemReader::from_reader(std::io::BufReader::new(File::open(&out).unwrap())).unwrap();
            let node = r.files().find(|n| n.fullpath == Path::new("/etc/sudoers")).expect("a sudoers");
            assert_eq!((node.header.permissions, node.header.uid), (0o440, 0));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conffile_lines_parse() {
        let text = " /etc/wgetrc 0123456789ABCDEF0123456789abcdef\n /etc/a b.conf ffffffffffffffffffffffffffffffff obsolete\n \
                    /etc/c newconffile remove-on-upgrade\n\nnot a line\n";
        let got: Vec<_> = parse_conffiles(text).collect();
        assert_eq!(
            got,
            [
                (PathBuf::from("/etc/wgetrc"), "0123456789abcdef0123456789abcdef".to_owned()),
                (PathBuf::from("/etc/a b.conf"), "ffffffffffffffffffffffffffffffff".into()),
                (PathBuf::from("/etc/c"), "newconffile".into()),
            ]
        );
    }

    #[test]
    fn what_is_left_out_is_part_of_the_cache_key() {
        let r = Resolved { packages: [("wget".to_owned(), "1".to_owned())].into(), missing: vec![] };
        let none = input_hash(&r, &BTreeMap::new(), b"agent");
        let edited = input_hash(&r, &[(PathBuf::from("/etc/wgetrc"), Withheld::EditedConffile)].into(), b"agent");
        let unreadable = input_hash(&r, &[(PathBuf::from("/etc/wgetrc"), Withheld::Unreadable)].into(), b"agent");
        assert!(none != edited && edited != unreadable && none != unreadable);
    }

    /// The host's own conffiles: the ones in this host's appliance, checked against dpkg.
    #[test]
    fn this_hosts_conffiles_are_known() {
        let r = resolve(&["wget".into(), "base-files".into()]).unwrap();
        let c = conffiles(&r.packages).unwrap();
        assert!(c.keys().any(|p| p.starts_with("/etc")), "{c:?}");
        assert!(c.values().all(|m| m.len() == 32 || m == "newconffile"), "{c:?}");
    }

    /// What a test expects each error's text (sources chained, as microdib prints it) to name.
    fn names(e: &ApplianceError) -> Vec<&str> {
        match e {
            ApplianceError::Command { what, .. } => vec![what, "No such file"],
            ApplianceError::CommandFailed { what, .. } => vec![what, "exit status: 2"],
            ApplianceError::NothingInstalled => vec!["none of the appliance packages"],
            ApplianceError::Read { .. } => vec!["/etc/sudoers", "Permission denied"],
            ApplianceError::Write { .. } => vec!["/cache/root.sqfs", "No space left"],
            ApplianceError::SquashfsIo { .. } => {
                vec!["/cache/root.sqfs", "cannot read /etc/sudoers", "Permission denied"]
            }
            ApplianceError::Squashfs { .. } => vec!["/etc/x", "duplicated"],
            ApplianceError::Initramfs(_) => vec!["/agent", "Permission denied"],
        }
    }

    #[test]
    fn every_error_says_what_and_why() {
        use std::io::{Error as IoError, ErrorKind};
        use std::os::unix::process::ExitStatusExt;
        // EACCES, ENOENT, ENOSPC.
        let denied = || IoError::from_raw_os_error(13);
        // A failed read of a host file while the image is written, as `HostFile` reports it.
        let mut host = HostFile::new(Path::new("/nonexistent-dir/sudoers"));
        let read_failed = host.read(&mut [0; 8]).unwrap_err();
        assert!(read_failed.to_string().contains("cannot read /nonexistent-dir/sudoers"), "{read_failed}");
        let read_failed = IoError::new(ErrorKind::PermissionDenied, format!("cannot read /etc/sudoers: {}", denied()));
        let errors = [
            ApplianceError::Command { what: "dpkg-query".into(), source: IoError::from_raw_os_error(2) },
            ApplianceError::CommandFailed {
                what: "dpkg-query".into(),
                status: ExitStatus::from_raw(2 << 8),
                stderr: String::new(),
            },
            ApplianceError::NothingInstalled,
            ApplianceError::Read { path: "/etc/sudoers".into(), source: denied() },
            ApplianceError::Write { path: "/cache/root.sqfs".into(), source: IoError::from_raw_os_error(28) },
            squashfs_error("writing /cache/root.sqfs")(BackhandError::StdIo(read_failed)),
            squashfs_error("adding /etc/x")(BackhandError::DuplicatedFileName),
            crate::Error::Read { path: "/agent".into(), source: denied() }.into(),
        ];
        for e in &errors {
            let text = chain(e);
            for n in names(e) {
                assert!(text.contains(n), "{e:?} says {text:?}, without {n:?}");
            }
        }
        assert_eq!(
            chain(&errors[5]),
            "cannot build the squashfs root: writing /cache/root.sqfs: cannot read /etc/sudoers: Permission denied (os error 13)"
        );
    }

    #[test]
    fn usr_merge_paths_resolve_to_their_real_place() {
        let p = host_location(Path::new("/bin/sh")).unwrap();
        assert!(p == Path::new("/usr/bin/sh") || p == Path::new("/bin/sh"));
        assert!(host_location(Path::new("/")).is_none());
        assert!(skipped(Path::new("/usr/share/doc/bash/README")));
        assert!(!skipped(Path::new("/usr/share/zoneinfo/UTC")));
    }
}
