//! The appliance: the guest userland element scripts run in, built from this host's own
//! installed files (as supermin does), so no network and no root are needed.
//!
//! - The package list (`data/appliance-packages.txt`, plus the user's additions) is expanded
//!   with every installed dependency (dpkg's status database), and each package's files come
//!   from `dpkg -L`. Documentation is left out.
//! - ELF files pull in the shared libraries they need (DT_NEEDED, interpreter, RPATH/RUNPATH),
//!   resolved here with goblin, in case a package list misses one.
//! - The result is a read-only squashfs root (zstd) attached as a disk; a tiny initramfs holds
//!   only the agent, which mounts that root under a tmpfs overlay.
//! - Both are cached under `~/.cache/microdib/appliance/<hash>/`; the hash covers the package
//!   list, the installed version of every package in it and the agent binary, so an upgrade on
//!   the host or a new agent rebuilds it (and says so).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};

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
    #[error("{what} failed: {stderr}")]
    CommandFailed { what: String, stderr: String },
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
    #[error("cannot build the squashfs root: {0}")]
    Squashfs(String),
    #[error(transparent)]
    Initramfs(#[from] crate::Error),
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
}

fn run(cmd: &mut Command, what: &str) -> Result<String, ApplianceError> {
    let out = cmd.output().map_err(|source| ApplianceError::Command { what: what.into(), source })?;
    if !out.status.success() {
        return Err(ApplianceError::CommandFailed {
            what: what.into(),
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

/// Files the appliance needs that no package ships (generated at install time on a real system).
const GENERATED: &[(&str, &str)] = &[
    ("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
    ("/etc/group", "root:x:0:\ntty:x:5:\ndisk:x:6:\nnogroup:x:65534:\n"),
    ("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    ("/etc/hostname", "microdib\n"),
    ("/etc/resolv.conf", ""),
    ("/etc/mtab", ""),
];

/// Writes the squashfs root at `out` from the host files of `resolved`; returns the file count.
fn write_root(resolved: &Resolved, out: &Path) -> Result<usize, ApplianceError> {
    let mut files = package_files(&resolved.packages)?;
    for extra in ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/nsswitch.conf"] {
        if Path::new(extra).exists() {
            files.insert(PathBuf::from(extra));
        }
    }
    add_alternatives(&mut files);
    close_over_elf(&mut files);
    write_files(&files, out)
}

/// Writes the squashfs root at `out` from the host paths `files`; returns the file count.
fn write_files(files: &BTreeSet<PathBuf>, out: &Path) -> Result<usize, ApplianceError> {
    let mut fs = FilesystemWriter::default();
    let comp =
        FilesystemCompressor::new(Compressor::Zstd, None).map_err(|e| ApplianceError::Squashfs(e.to_string()))?;
    fs.set_compressor(comp);
    fs.set_root_mode(0o755);
    let sq = |e: backhand::BackhandError| ApplianceError::Squashfs(e.to_string());
    let dir_header = NodeHeader { permissions: 0o755, uid: 0, gid: 0, mtime: 0 };

    // Top-level usr-merge links (/bin -> usr/bin, ...) exactly as on the host.
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        if let Ok(target) = std::fs::read_link(top) {
            fs.push_symlink(&target, top, dir_header).map_err(sq)?;
            made.insert(PathBuf::from(top));
        }
    }
    let mut count = 0;
    // Every path by its real location, parents before children.
    let real: BTreeSet<PathBuf> = files.iter().filter_map(|p| host_location(p)).collect();
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
            fs.push_dir(&dir, h).map_err(sq)?;
            made.insert(dir);
        }
        let header = header_of(&meta);
        let ft = meta.file_type();
        if ft.is_dir() {
            fs.push_dir(path, header).map_err(sq)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(path).map_err(|source| ApplianceError::Read { path: path.clone(), source })?;
            fs.push_symlink(&target, path, header).map_err(sq)?;
        } else if ft.is_file() {
            fs.push_file_from_path(path, path, header).map_err(sq)?;
            count += 1;
        } else {
            continue;
        }
        made.insert(path.clone());
    }
    for (path, body) in GENERATED {
        let p = Path::new(path);
        if made.contains(p) {
            continue;
        }
        if !made.contains(Path::new("/etc")) {
            fs.push_dir("/etc", dir_header).map_err(sq)?;
            made.insert(PathBuf::from("/etc"));
        }
        let h = NodeHeader { permissions: 0o644, uid: 0, gid: 0, mtime: 0 };
        fs.push_file(std::io::Cursor::new(body.as_bytes().to_vec()), p, h).map_err(sq)?;
        made.insert(p.to_path_buf());
    }
    // Mount points the agent fills in.
    for d in ["/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/mnt", "/var", "/var/tmp"] {
        if !made.contains(Path::new(d)) {
            let perm = if d.ends_with("tmp") { 0o1777 } else { 0o755 };
            fs.push_dir(d, NodeHeader { permissions: perm, ..dir_header }).map_err(sq)?;
            made.insert(PathBuf::from(d));
        }
    }
    let f = File::create(out).map_err(|source| ApplianceError::Write { path: out.to_owned(), source })?;
    fs.write(BufWriter::new(f)).map_err(sq)?;
    Ok(count)
}

/// The hash of everything the appliance is made of.
fn input_hash(resolved: &Resolved, agent: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Bumped whenever the way the root is assembled changes.
    h.update(b"microdib-appliance-builder-2\n");
    for (name, version) in &resolved.packages {
        h.update(format!("{name} {version}\n").as_bytes());
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
    let dir = cache.join(input_hash(&resolved, &agent_bytes));
    let files = ApplianceFiles {
        root: dir.join("root.sqfs"),
        initrd: dir.join("initrd.cpio"),
        built: false,
        missing: resolved.missing.clone(),
    };
    if files.root.exists() && files.initrd.exists() {
        return Ok(files);
    }
    let why = if cache.exists() { "its inputs changed (host packages or agent)" } else { "none is cached yet" };
    say(&format!("appliance: building from {} host packages because {why}", resolved.packages.len()));
    std::fs::create_dir_all(cache).map_err(|source| ApplianceError::Write { path: cache.to_owned(), source })?;
    let tmp = tempdir_in(cache)?;
    let count = write_root(&resolved, &tmp.join("root.sqfs"))?;
    let mut a = Archive::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "sysroot"] {
        a.dir(d, 0o755)?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, agent_bytes)?;
    let initrd = tmp.join("initrd.cpio");
    a.write_to(BufWriter::new(
        File::create(&initrd).map_err(|source| ApplianceError::Write { path: initrd.clone(), source })?,
    ))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|source| ApplianceError::Write { path: dir.clone(), source })?;
    say(&format!("appliance: {count} files in {}", files.root.display()));
    Ok(ApplianceFiles { built: true, ..files })
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

    #[test]
    fn usr_merge_paths_resolve_to_their_real_place() {
        let p = host_location(Path::new("/bin/sh")).unwrap();
        assert!(p == Path::new("/usr/bin/sh") || p == Path::new("/bin/sh"));
        assert!(host_location(Path::new("/")).is_none());
        assert!(skipped(Path::new("/usr/share/doc/bash/README")));
        assert!(!skipped(Path::new("/usr/share/zoneinfo/UTC")));
    }
}
