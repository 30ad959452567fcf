//! The image as a host directory, for extra-data.d: the target root is unpacked from the guest
//! into the build's workspace, the scripts work on it as the invoking user, and what they
//! changed is written back into the image. Works the same for every `--fs-type`, and each build
//! has its own copy, so concurrent builds cannot meet.
//!
//! The tar stream comes from the guest and is hostile: no entry may land outside the directory,
//! hard links may only point inside it, and special files are left in the image untouched.
//! Changes are found by inode and ctime (which no unprivileged script can set back).

use crate::formats::tar_guard::Budget;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why the host view could not be made or written back.
#[derive(Debug, thiserror::Error)]
pub enum HostViewError {
    #[error("the image's file list holds an unacceptable path {0:?}")]
    BadPath(PathBuf),
    #[error("the image's file list names {0:?} twice")]
    Duplicate(PathBuf),
    #[error("the image's file list links {0:?} to something outside the image")]
    LinkOutside(PathBuf),
    #[error("the image's file list holds {0:?}, which only the host may provide")]
    HostOnly(PathBuf),
    #[error("{0:?} in the image is not a directory")]
    NotADirectory(PathBuf),
    #[error("the image's files hold more than {0} bytes of data, more than its disk")]
    TooBig(u64),
    #[error("cannot unpack {path:?} from the image: {source}")]
    Unpack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the image's file list: {0}")]
    Stream(#[source] std::io::Error),
    #[error("cannot read {path:?} back from the host view: {source}")]
    Walk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// What the image had at a path, and what the host view made of it.
#[derive(Debug, Clone)]
struct Recorded {
    kind: Kind,
    uid: u64,
    gid: u64,
    /// The mode in the image.
    image_mode: u32,
    /// The mode given on the host (owner-writable, no set-id bits); a script that changed it
    /// decides the image's mode.
    host_mode: u32,
    ino: u64,
    ctime: (i64, i64),
}

/// What the extra-data.d scripts changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Paths (relative) to remove from the image first: deleted ones and ones whose type
    /// changed; only the topmost of a removed subtree.
    pub removed: Vec<PathBuf>,
    /// Paths (relative, parents first) to write into the image; a directory stands for itself
    /// only, not its contents.
    pub written: Vec<PathBuf>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.written.is_empty()
    }
}

/// The unpacked image.
pub struct HostView {
    root: PathBuf,
    recorded: HashMap<PathBuf, Recorded>,
}

/// The hooks in the aux tree (`guest::paths::IN_TARGET_AUX`, relative): the guest's are left out of the view, and
/// the host puts its own trusted copy there (`add_host_hooks`).
pub fn host_only() -> PathBuf {
    Path::new(crate::guest::paths::IN_TARGET_AUX.trim_start_matches('/')).join("hooks")
}

/// A relative path from the stream, or None if it is absolute or climbs out.
fn clean_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Points every link of the image that could lead out of the view (absolute, or climbing with
/// `..`) at the place it names in the image, as an absolute host path inside the view: a host
/// script writing through `opt -> /home/u` writes the image's /home/u, never the user's.
/// Relative links without `..` stay as they are: with the others contained, they cannot leave.
fn contain_links(root: &Path, links: &HashMap<PathBuf, PathBuf>) -> Result<(), HostViewError> {
    for (link, target) in links {
        let climbs = target.components().any(|c| matches!(c, Component::ParentDir));
        if !target.is_absolute() && !climbs {
            continue;
        }
        let inside = root.join(resolve_in_image(links, link, target));
        let path = root.join(link);
        let err = |e: std::io::Error| HostViewError::Unpack { path: link.clone(), source: e };
        std::fs::remove_file(&path).map_err(err)?;
        std::os::unix::fs::symlink(&inside, &path).map_err(err)?;
    }
    Ok(())
}

/// Where the link `link` (relative to the root) to `target` leads in the image, resolved as the
/// guest's kernel would with the image as its root (`..` stops at the root, links are followed
/// with the image's own targets): a path relative to the root, without links in its directories.
fn resolve_in_image(links: &HashMap<PathBuf, PathBuf>, link: &Path, target: &Path) -> PathBuf {
    let mut at: Vec<std::ffi::OsString> = match target.is_absolute() {
        true => Vec::new(),
        false => link.parent().map(|p| p.iter().map(|c| c.to_owned()).collect()).unwrap_or_default(),
    };
    let mut pending: std::collections::VecDeque<Option<std::ffi::OsString>> = target_parts(target).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        let Some(name) = part else {
            at.pop();
            continue;
        };
        at.push(name);
        let here: PathBuf = at.iter().collect();
        if let Some(next) = links.get(&here) {
            hops += 1;
            if hops > 40 {
                break; // a loop (ELOOP in the guest): where we got to is inside, which is enough
            }
            at.pop();
            if next.is_absolute() {
                at.clear();
            }
            for p in target_parts(next).collect::<Vec<_>>().into_iter().rev() {
                pending.push_front(p);
            }
        }
    }
    at.iter().collect()
}

/// A link target's parts: Some(name), or None for `..`.
fn target_parts(target: &Path) -> impl Iterator<Item = Option<std::ffi::OsString>> + '_ {
    target.components().filter_map(|c| match c {
        Component::Normal(n) => Some(Some(n.to_owned())),
        Component::ParentDir => Some(None),
        _ => None,
    })
}

/// Whether `path`'s parent directory, with every symlink resolved, is inside `root` (canonical).
fn parent_inside(root: &Path, path: &Path) -> bool {
    path.parent().and_then(|p| p.canonicalize().ok()).is_some_and(|p| p.starts_with(root))
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    // Never through a symlink: only what we just created is changed.
    if std::fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl HostView {
    /// Unpacks the guest's tar stream of the target root into `root` (an empty directory);
    /// sparse files stay sparse, and at most `max_bytes` of file data are taken.
    pub fn unpack(root: &Path, stream: impl Read, max_bytes: u64) -> Result<HostView, HostViewError> {
        let canon_root = root.canonicalize().map_err(|e| HostViewError::Walk { path: root.into(), source: e })?;
        let budget = Budget::new(max_bytes);
        let result = Self::unpack_counted(&canon_root, budget.reader(stream), &budget);
        // A stream stopped at the budget reads as a broken stream to the tar parser.
        match result {
            Err(_) if budget.spent() => Err(HostViewError::TooBig(max_bytes)),
            other => other,
        }
    }

    fn unpack_counted(canon_root: &Path, stream: impl Read, budget: &Budget) -> Result<HostView, HostViewError> {
        let canon_root = canon_root.to_owned();
        let mut archive = tar::Archive::new(crate::formats::tar_guard::TarGuard::new(stream));
        archive.set_preserve_permissions(false);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(false);
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut meta: HashMap<PathBuf, (Kind, u64, u64, u32, u32)> = HashMap::new();
        for entry in archive.entries().map_err(HostViewError::Stream)? {
            let mut entry = entry.map_err(HostViewError::Stream)?;
            let raw = entry.path().map_err(HostViewError::Stream)?.into_owned();
            let rel = clean_relative(&raw).ok_or_else(|| HostViewError::BadPath(raw.clone()))?;
            if rel.as_os_str().is_empty() {
                continue; // the root itself
            }
            if !seen.insert(rel.clone()) {
                return Err(HostViewError::Duplicate(rel));
            }
            if rel.starts_with(host_only()) {
                return Err(HostViewError::HostOnly(rel));
            }
            // The data stored in the stream (for a sparse file, its chunks only; a PAX size
            // record decides it), and what the entry itself takes in the image.
            // The stream's bytes are counted as read; each entry costs a block besides.
            if !budget.charge_entry() {
                return Err(HostViewError::TooBig(budget.limit()));
            }
            let h = entry.header();
            let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
            let image_mode = h.mode().unwrap_or(0o644) & 0o7777;
            let kind = h.entry_type();
            let dst = canon_root.join(&rel);
            let unpack_err = |e: std::io::Error| HostViewError::Unpack { path: rel.clone(), source: e };
            let (kind, host_mode) = if kind.is_dir() {
                (Kind::Dir, (image_mode & 0o777) | 0o700)
            } else if kind.is_file() || kind.is_gnu_sparse() || kind == tar::EntryType::Continuous {
                (Kind::File, (image_mode & 0o777) | 0o600)
            } else if kind.is_symlink() {
                let target = entry.link_name().map_err(HostViewError::Stream)?.unwrap_or_default().into_owned();
                links.insert(rel.clone(), target);
                (Kind::Symlink, 0o777)
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(HostViewError::Stream)?
                    .and_then(|t| clean_relative(&t))
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| HostViewError::LinkOutside(rel.clone()))?;
                let src = canon_root.join(&target);
                let src_is_file = std::fs::symlink_metadata(&src).is_ok_and(|m| m.file_type().is_file());
                if !src_is_file || !parent_inside(&canon_root, &src) || !parent_inside(&canon_root, &dst) {
                    return Err(HostViewError::LinkOutside(rel));
                }
                std::fs::hard_link(&src, &dst).map_err(unpack_err)?;
                let (k, u, g, m, hm) = meta.get(&target).copied().unwrap_or((Kind::File, uid, gid, image_mode, 0));
                meta.insert(rel, (k, u, g, m, hm));
                continue;
            } else {
                // Devices, FIFOs and the like stay in the image as they are.
                continue;
            };
            if !entry.unpack_in(&canon_root).map_err(unpack_err)? {
                return Err(HostViewError::BadPath(raw));
            }
            set_mode(&dst, host_mode).map_err(unpack_err)?;
            meta.insert(rel, (kind, uid, gid, image_mode, host_mode));
        }
        contain_links(&canon_root, &links)?;
        // Inode and ctime once everything is in place (unpacking a child changes its parent).
        let mut recorded = HashMap::with_capacity(meta.len());
        for (rel, (kind, uid, gid, image_mode, host_mode)) in meta {
            let path = canon_root.join(&rel);
            let m =
                std::fs::symlink_metadata(&path).map_err(|e| HostViewError::Walk { path: rel.clone(), source: e })?;
            let ino = m.ino();
            let ctime = (m.ctime(), m.ctime_nsec());
            recorded.insert(rel, Recorded { kind, uid, gid, image_mode, host_mode, ino, ctime });
        }
        Ok(HostView { root: canon_root, recorded })
    }

    /// Puts a copy of the host's hooks (`src`) at `host_only()` (extra-data.d runs its scripts and
    /// sources environment.d from there) and takes it as the image's, so only what scripts change
    /// in it is written back. The guest's own hooks never reach the host: they could plant code.
    pub fn add_host_hooks(&mut self, src: &Path) -> Result<(), HostViewError> {
        let top = host_only();
        let err = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| HostViewError::Walk { path, source: e }
        };
        // Its parents must be the image's own directories, not links leading elsewhere.
        let parents: Vec<PathBuf> =
            top.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).map(Path::to_owned).collect();
        for parent in &parents {
            let m = std::fs::symlink_metadata(self.root.join(parent)).map_err(err(parent))?;
            if !m.file_type().is_dir() {
                return Err(HostViewError::NotADirectory(parent.clone()));
            }
        }
        // create_dir, not create_dir_all: it fails on anything already there.
        std::fs::create_dir(self.root.join(&top)).map_err(err(&top))?;
        for child in std::fs::read_dir(src).map_err(err(src))? {
            let name = child.map_err(err(src))?.file_name();
            crate::elements::hooks::copy_tree(&src.join(&name), &self.root.join(&top).join(&name)).map_err(|e| {
                HostViewError::Walk { path: top.join(&name), source: std::io::Error::other(e.to_string()) }
            })?;
        }
        self.record_tree(&top)?;
        // Making the tree changed its parent's ctime: it is as unpacked still.
        for parent in &parents {
            self.record(parent, None)?;
        }
        Ok(())
    }

    /// Records `rel` and everything below it as the image's, owned by root, modes as on the host.
    fn record_tree(&mut self, rel: &Path) -> Result<(), HostViewError> {
        let kind = self.record(rel, Some((0, 0)))?;
        if kind == Kind::Dir {
            let path = self.root.join(rel);
            let walk_err = |e: std::io::Error| HostViewError::Walk { path: rel.to_owned(), source: e };
            for e in std::fs::read_dir(path).map_err(walk_err)? {
                self.record_tree(&rel.join(e.map_err(walk_err)?.file_name()))?;
            }
        }
        Ok(())
    }

    /// Takes `rel`'s inode and ctime as they are now; `owner` makes a new record with the host's
    /// mode as the image's, None keeps the rest of the existing one.
    fn record(&mut self, rel: &Path, owner: Option<(u64, u64)>) -> Result<Kind, HostViewError> {
        let m = std::fs::symlink_metadata(self.root.join(rel))
            .map_err(|e| HostViewError::Walk { path: rel.to_owned(), source: e })?;
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
        let (ino, ctime) = (m.ino(), (m.ctime(), m.ctime_nsec()));
        match (owner, self.recorded.get_mut(rel)) {
            (None, Some(r)) => {
                r.ino = ino;
                r.ctime = ctime;
            }
            (None, None) => return Err(HostViewError::NotADirectory(rel.to_owned())),
            (Some((uid, gid)), _) => {
                let mode = m.mode() & 0o7777;
                let r = Recorded { kind, uid, gid, image_mode: mode, host_mode: mode, ino, ctime };
                self.recorded.insert(rel.to_owned(), r);
            }
        }
        Ok(kind)
    }

    /// The directory the scripts see as `TMP_MOUNT_PATH`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Compares the host view with what was unpacked.
    pub fn changes(&self) -> Result<Changes, HostViewError> {
        let mut changes = Changes::default();
        let mut present = HashSet::new();
        self.walk(Path::new(""), &mut changes, &mut present)?;
        // Deleted: recorded, gone, and not under something else that is gone.
        let gone: BTreeSet<&PathBuf> = self.recorded.keys().filter(|p| !present.contains(*p)).collect();
        for p in &gone {
            if !p.ancestors().skip(1).any(|a| gone.contains(&a.to_path_buf())) {
                changes.removed.push((*p).clone());
            }
        }
        changes.removed.sort();
        Ok(changes)
    }

    /// Compares the directory `dir` (relative) and what lies below it, parents first.
    fn walk(&self, dir: &Path, changes: &mut Changes, present: &mut HashSet<PathBuf>) -> Result<(), HostViewError> {
        let walk_err = |e: std::io::Error| HostViewError::Walk { path: dir.to_owned(), source: e };
        let mut names: Vec<_> = std::fs::read_dir(self.root.join(dir))
            .map_err(walk_err)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(walk_err)?;
        names.sort();
        for name in names {
            let rel = dir.join(&name);
            let m = std::fs::symlink_metadata(self.root.join(&rel))
                .map_err(|e| HostViewError::Walk { path: rel.clone(), source: e })?;
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir
            } else if ft.is_file() {
                Kind::File
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                continue; // a FIFO or socket a script made: nothing the image can take from here
            };
            present.insert(rel.clone());
            match self.recorded.get(&rel) {
                None => changes.written.push(rel.clone()),
                Some(r) if r.kind != kind => {
                    changes.removed.push(rel.clone());
                    changes.written.push(rel.clone());
                }
                Some(r) if r.ino != m.ino() || r.ctime != (m.ctime(), m.ctime_nsec()) => {
                    changes.written.push(rel.clone())
                }
                Some(_) => {}
            }
            if kind == Kind::Dir {
                self.walk(&rel, changes, present)?;
            }
        }
        Ok(())
    }

    /// Writes `changes.written` as a tar stream the guest unpacks over the target root: owners
    /// from the image (root for new files), modes as the scripts left them.
    pub fn write_changes(&self, changes: &Changes, out: impl Write) -> Result<(), HostViewError> {
        self.pack(changes, out, Stamps::AsWritten)
    }

    /// What the changes do to the image, by content: the paths removed, then the stream
    /// written without its times (a script that writes the same bytes again changes nothing
    /// a later phase could see but a time stamp).
    pub fn changes_digest(&self, changes: &Changes) -> Result<crate::cache::Digest, HostViewError> {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for p in &changes.removed {
            hasher.update(p.as_os_str().as_encoded_bytes());
            hasher.update([0]);
        }
        hasher.update([0]);
        self.pack(changes, HashWriter(&mut hasher), Stamps::Zero)?;
        Ok(crate::cache::Digest::from(<[u8; 32]>::from(hasher.finalize())))
    }

    fn pack(&self, changes: &Changes, out: impl Write, stamps: Stamps) -> Result<(), HostViewError> {
        let mut b = tar::Builder::new(out);
        b.follow_symlinks(false);
        for rel in &changes.written {
            let path = self.root.join(rel);
            let walk_err = |e: std::io::Error| HostViewError::Walk { path: rel.clone(), source: e };
            let m = std::fs::symlink_metadata(&path).map_err(walk_err)?;
            let rec = self.recorded.get(rel);
            let host_mode = m.mode() & 0o7777;
            let mode = match rec {
                Some(r) if r.host_mode == host_mode => r.image_mode,
                _ => host_mode,
            };
            let mut h = tar::Header::new_gnu();
            h.set_uid(rec.map_or(0, |r| r.uid));
            h.set_gid(rec.map_or(0, |r| r.gid));
            h.set_mode(mode);
            h.set_mtime(match stamps {
                Stamps::AsWritten => u64::try_from(m.mtime()).unwrap_or(0),
                Stamps::Zero => 0,
            });
            let ft = m.file_type();
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, rel, std::io::empty()).map_err(walk_err)?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(walk_err)?;
                // A link into the view (`contain_links`, or one a script made so) is the image's
                // absolute path again.
                let target = match target.strip_prefix(&self.root) {
                    Ok(inside) => Path::new("/").join(inside),
                    Err(_) => target,
                };
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, rel, &target).map_err(walk_err)?;
            } else {
                let f = std::fs::File::open(&path).map_err(walk_err)?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(m.len());
                // A script still writing would make the size wrong: take exactly what we said.
                b.append_data(&mut h, rel, f.take(m.len())).map_err(walk_err)?;
            }
        }
        b.into_inner().map_err(HostViewError::Stream)?.flush().map_err(HostViewError::Stream)
    }
}

/// The modification times a packed stream carries.
#[derive(Clone, Copy)]
enum Stamps {
    AsWritten,
    Zero,
}

/// A `Write` into a running sha256.
struct HashWriter<'a>(&'a mut sha2::Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes every directory under `root` owner-writable, so the tree can be removed whatever modes
/// the scripts left.
pub fn make_removable(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
            make_removable(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDir;

    fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(size);
        h.set_mtime(1_000_000);
        h
    }

    /// A small image: dirs (one read-only), files, a symlink, a hard link, a device.
    fn image() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let add_dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode| {
            b.append_data(&mut header(tar::EntryType::Directory, mode, 0, 0), p, std::io::empty()).unwrap()
        };
        add_dir(&mut b, "./", 0o755);
        add_dir(&mut b, "./etc/", 0o755);
        add_dir(&mut b, "./ro/", 0o555);
        add_dir(&mut b, "./tmp/", 0o1777);
        add_dir(&mut b, "./tmp/in_target.aux/", 0o755);
        let add_file = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode, uid, data: &[u8]| {
            b.append_data(&mut header(tar::EntryType::Regular, mode, uid, data.len() as u64), p, data).unwrap()
        };
        add_file(&mut b, "./etc/hostname", 0o644, 0, b"image\n");
        add_file(&mut b, "./etc/shadow", 0o000, 0, b"secret\n");
        add_file(&mut b, "./ro/kept", 0o4755, 7, b"setuid\n");
        let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
        b.append_link(&mut h, "./etc/hostname.link", "./etc/hostname").unwrap();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, "./etc/abs", "/etc/hostname").unwrap();
        let mut h = header(tar::EntryType::Char, 0o600, 0, 0);
        b.append_data(&mut h, "./null", std::io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    fn rel(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn unchanged_view_has_no_changes_and_changes_carry_image_owners() {
        let t = TempDir::new("changes");
        let view = HostView::unpack(&t.0, &image()[..], 1 << 30).unwrap();
        let root = view.root().to_owned();
        assert_eq!(std::fs::read(root.join("etc/shadow")).unwrap(), b"secret\n", "readable by the user");
        // An absolute link leads to the image's file, not the host's.
        assert_eq!(std::fs::read_link(root.join("etc/abs")).unwrap(), root.join("etc/hostname"));
        assert_eq!(std::fs::read(root.join("etc/abs")).unwrap(), b"image\n");
        assert!(!root.join("null").exists(), "devices stay in the image only");
        assert_eq!(view.changes().unwrap(), Changes::default());

        // What a script might do: write into a read-only directory, edit, delete, retype.
        std::fs::write(root.join("ro/new"), b"n").unwrap();
        std::fs::write(root.join("etc/shadow"), b"changed\n").unwrap();
        std::fs::remove_file(root.join("etc/hostname.link")).unwrap();
        std::fs::remove_file(root.join("etc/abs")).unwrap();
        std::fs::create_dir(root.join("etc/abs")).unwrap();
        std::fs::set_permissions(root.join("ro/kept"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let c = view.changes().unwrap();
        assert_eq!(c.removed, rel(&["etc/abs", "etc/hostname.link"]));
        // etc/hostname lost a link, which changed its ctime: written again, harmlessly.
        assert_eq!(c.written, rel(&["etc", "etc/abs", "etc/hostname", "etc/shadow", "ro", "ro/kept", "ro/new"]));

        let mut tar_bytes = Vec::new();
        view.write_changes(&c, &mut tar_bytes).unwrap();
        let mut a = tar::Archive::new(&tar_bytes[..]);
        let got: Vec<(String, u32, u64, Vec<u8>)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let (mode, uid) = (e.header().mode().unwrap(), e.header().uid().unwrap());
                let p = e.path().unwrap().display().to_string();
                let mut d = Vec::new();
                e.read_to_end(&mut d).unwrap();
                (p, mode, uid, d)
            })
            .collect();
        assert_eq!(got[0], ("etc".into(), 0o755, 0, vec![]));
        assert_eq!(got[1].0, "etc/abs");
        assert_eq!(got[1].2, 0, "new: owned by root");
        assert_eq!(got[2].0, "etc/hostname");
        let got = [&got[..2], &got[3..]].concat();
        assert_eq!(got[2], ("etc/shadow".into(), 0o000, 0, b"changed\n".to_vec()), "image mode kept");
        assert_eq!(got[3], ("ro".into(), 0o555, 0, vec![]));
        assert_eq!(got[4], ("ro/kept".into(), 0o700, 7, b"setuid\n".to_vec()), "the script's mode, the image's owner");
        assert_eq!(got[5], ("ro/new".into(), 0o666 & !umask(), 0, b"n".to_vec()));
    }

    fn umask() -> u32 {
        // SAFETY: umask(2) twice restores the value it reads.
        unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        }
    }

    #[test]
    fn deleting_a_tree_removes_only_its_top() {
        let t = TempDir::new("tree");
        let view = HostView::unpack(&t.0, &image()[..], 1 << 30).unwrap();
        make_removable(&view.root().join("ro"));
        std::fs::remove_dir_all(view.root().join("ro")).unwrap();
        assert_eq!(view.changes().unwrap(), Changes { removed: rel(&["ro"]), written: vec![] });
    }

    fn hostile(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Result<HostView, HostViewError> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let t = TempDir::new("hostile");
        let r = HostView::unpack(&t.0, &bytes[..], 1 << 30);
        // Nothing may have been written next to the view.
        let outside: Vec<_> = std::fs::read_dir(t.0.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pwned"))
            .collect();
        assert!(outside.is_empty(), "wrote outside: {outside:?}");
        r
    }

    fn raw_name(h: &mut tar::Header, name: &str) {
        // Header::set_path refuses `..`; a hostile guest does not.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
    }

    #[test]
    fn hostile_streams_cannot_reach_outside_the_view() {
        let r = hostile(|b| {
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 1);
            raw_name(&mut h, "../pwned-dotdot");
            b.append(&h, &b"x"[..]).unwrap();
        });
        assert!(matches!(r, Err(HostViewError::BadPath(_))), "{:?}", r.err());

        // A symlink to a directory outside, then a file through it.
        let r = hostile(|b| {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
            b.append_link(&mut h, "escape", "..").unwrap();
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 1);
            raw_name(&mut h, "escape/pwned-symlink");
            b.append(&h, &b"x"[..]).unwrap();
        });
        assert!(r.is_err());

        // A hard link to a file outside, through a symlink.
        let r = hostile(|b| {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
            b.append_link(&mut h, "up", "/etc").unwrap();
            let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
            b.append_link(&mut h, "pwned-link", "up/passwd").unwrap();
        });
        assert!(matches!(r, Err(HostViewError::LinkOutside(_))), "{:?}", r.err());

        // The same name twice (a symlink, then a directory whose mode would be set through it).
        let r = hostile(|b| {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
            b.append_link(&mut h, "twice", "/tmp").unwrap();
            b.append_data(&mut header(tar::EntryType::Directory, 0o700, 0, 0), "twice", std::io::empty()).unwrap();
        });
        assert!(matches!(r, Err(HostViewError::Duplicate(_))), "{:?}", r.err());
    }

    /// The image's aux tree never comes from the guest: the host brings its own hooks, and only
    /// what extra-data.d changes in them goes back.
    #[test]
    fn the_hooks_in_the_view_are_the_hosts() {
        let r = hostile(|b| {
            let data = b"touch /pwned\n";
            let mut h = header(tar::EntryType::Regular, 0o755, 0, data.len() as u64);
            raw_name(&mut h, "tmp/in_target.aux/hooks/extra-data.d/10-x");
            b.append(&h, &data[..]).unwrap();
        });
        assert!(matches!(r, Err(HostViewError::HostOnly(_))), "{:?}", r.err());

        let t = TempDir::new("hooks");
        let hooks = t.0.join("hooks");
        std::fs::create_dir_all(hooks.join("extra-data.d")).unwrap();
        std::fs::create_dir_all(hooks.join("environment.d")).unwrap();
        std::fs::write(hooks.join("extra-data.d/10-real"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("10-real", hooks.join("extra-data.d/20-link")).unwrap();
        let view_dir = t.0.join("view");
        std::fs::create_dir(&view_dir).unwrap();
        let mut view = HostView::unpack(&view_dir, &image()[..], 1 << 30).unwrap();
        view.add_host_hooks(&hooks).unwrap();
        let aux = view.root().join("tmp/in_target.aux/hooks");
        assert_eq!(std::fs::read(aux.join("extra-data.d/10-real")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::read_link(aux.join("extra-data.d/20-link")).unwrap(), Path::new("10-real"));
        assert_eq!(view.changes().unwrap(), Changes::default(), "the host's hooks count as the image's");
        std::fs::write(aux.join("environment.d/10-new"), b"x").unwrap();
        let c = view.changes().unwrap();
        assert_eq!(
            c.written,
            rel(&["tmp/in_target.aux/hooks/environment.d", "tmp/in_target.aux/hooks/environment.d/10-new"])
        );
        assert!(c.removed.is_empty());

        // Its parents must be the image's directories, not links that lead elsewhere.
        let t2 = TempDir::new("hooks-link");
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header(tar::EntryType::Directory, 0o1777, 0, 0), "tmp", std::io::empty()).unwrap();
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, "tmp/in_target.aux", "/home").unwrap();
        let mut view = HostView::unpack(&t2.0, &b.into_inner().unwrap()[..], 1 << 30).unwrap();
        let r = view.add_host_hooks(&hooks);
        assert!(matches!(r, Err(HostViewError::NotADirectory(_))), "{:?}", r.err());
    }

    /// GNU tar's sparse entries (what the guest sends, `tar --sparse`) stay sparse in the view,
    /// and the view takes no more file data than the image's disk can hold.
    #[test]
    fn sparse_files_stay_sparse_and_the_view_is_bounded() {
        let t = TempDir::new("sparse");
        let src = t.0.join("src");
        std::fs::create_dir(&src).unwrap();
        let f = std::fs::File::create(src.join("big")).unwrap();
        f.set_len(8 << 30).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"end", (8 << 30) - 3).unwrap();
        std::fs::write(src.join("small"), vec![1u8; 100_000]).unwrap();
        let tar = std::process::Command::new("tar")
            .args(["-c", "-f", "-", "--sparse", "--numeric-owner", "-C"])
            .arg(&src)
            .arg(".")
            .output()
            .unwrap();
        assert!(tar.status.success());
        let view_dir = t.0.join("view");
        std::fs::create_dir(&view_dir).unwrap();
        let view = HostView::unpack(&view_dir, &tar.stdout[..], 1 << 20).unwrap();
        let m = std::fs::metadata(view.root().join("big")).unwrap();
        assert_eq!(m.len(), 8 << 30);
        assert!(m.blocks() * 512 < 1 << 20, "8 GiB sparse file took {} bytes", m.blocks() * 512);
        let end = std::fs::File::open(view.root().join("big")).unwrap();
        let mut b = [0u8; 3];
        std::os::unix::fs::FileExt::read_at(&end, &mut b, (8 << 30) - 3).unwrap();
        assert_eq!(&b, b"end");

        let view_dir = t.0.join("view2");
        std::fs::create_dir(&view_dir).unwrap();
        let r = HostView::unpack(&view_dir, &tar.stdout[..], 50_000);
        assert!(matches!(r, Err(HostViewError::TooBig(50_000))), "{:?}", r.err());
    }

    /// A PAX `size` record larger than the header's size field is what the stream carries: it
    /// counts against the budget, not the header's number.
    #[test]
    fn a_pax_size_counts_against_the_budget() {
        let t = TempDir::new("pax-size");
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", b"1000000".as_slice())]).unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
        h.set_path("./big").unwrap();
        h.set_cksum();
        let raw = b.get_mut();
        raw.extend_from_slice(h.as_bytes());
        raw.extend(std::iter::repeat_n(7u8, 1_000_000));
        raw.resize(raw.len().div_ceil(512) * 512, 0);
        let stream = b.into_inner().unwrap();
        let view_dir = t.0.join("view");
        std::fs::create_dir(&view_dir).unwrap();
        let r = HostView::unpack(&view_dir, &stream[..], 50_000);
        assert!(matches!(r, Err(HostViewError::TooBig(50_000))), "{:?}", r.err());
    }

    /// Entries without data cost too (an inode and a block in the image): a stream of empty
    /// files ends at the budget.
    #[test]
    fn empty_entries_count_against_the_budget() {
        let t = TempDir::new("empty-entries");
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..1000 {
            b.append_data(&mut header(tar::EntryType::Regular, 0o644, 0, 0), format!("./e{i}"), std::io::empty())
                .unwrap();
        }
        let stream = b.into_inner().unwrap();
        let view_dir = t.0.join("view");
        std::fs::create_dir(&view_dir).unwrap();
        let r = HostView::unpack(&view_dir, &stream[..], 100 * crate::formats::tar_guard::ENTRY_COST);
        assert!(matches!(r, Err(HostViewError::TooBig(_))), "{:?}", r.err());
        let view_dir = t.0.join("view2");
        std::fs::create_dir(&view_dir).unwrap();
        assert!(HostView::unpack(&view_dir, &stream[..], 2000 * crate::formats::tar_guard::ENTRY_COST).is_ok());
    }

    /// Links that lead out of the root on the host (absolute ones, `..` past the top, chains of
    /// both) lead to the same place inside the view; writes through them stay in the image, and
    /// an unchanged link goes back as it was.
    #[test]
    fn links_cannot_lead_host_scripts_out_of_the_view() {
        let t = TempDir::new("links");
        let mut b = tar::Builder::new(Vec::new());
        for d in ["./home/", "./home/u/", "./tmp/", "./lib/"] {
            b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0, 0), d, std::io::empty()).unwrap();
        }
        let mut link = |name: &str, target: &str| {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
            b.append_link(&mut h, name, target).unwrap();
        };
        link("opt", "/home/u");
        link("tmp/up", "../../../../../home");
        link("tmp/root", "/");
        link("tmp/chain", "root/..");
        link("lib/libx.so", "libx.so.1");
        link("tmp/loop", "loop2");
        link("tmp/loop2", "/tmp/loop");
        let view = HostView::unpack(&t.0, &b.into_inner().unwrap()[..], 1 << 30).unwrap();
        let root = view.root().to_owned();
        let target = |p: &str| std::fs::read_link(root.join(p)).unwrap();
        assert_eq!(target("opt"), root.join("home/u"));
        assert_eq!(target("tmp/up"), root.join("home"));
        assert_eq!(target("tmp/root"), root.join(""));
        assert_eq!(target("tmp/chain"), root.join(""));
        assert_eq!(target("lib/libx.so"), Path::new("libx.so.1"), "plain relative links stay");
        assert!(target("tmp/loop2").starts_with(&root));
        // A script writes through them: the files land in the view, hence in the image.
        std::fs::write(root.join("opt/written"), b"x").unwrap();
        std::fs::write(root.join("tmp/chain/top"), b"y").unwrap();
        assert_eq!(std::fs::read(root.join("home/u/written")).unwrap(), b"x");
        assert_eq!(std::fs::read(root.join("top")).unwrap(), b"y");
        let c = view.changes().unwrap();
        assert_eq!(c.written, rel(&["home/u", "home/u/written", "top"]));
        // A script's own link into the view goes back as the image's absolute path.
        std::os::unix::fs::symlink(root.join("home/u"), root.join("newlink")).unwrap();
        let c = view.changes().unwrap();
        let mut out = Vec::new();
        view.write_changes(&c, &mut out).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let back = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap() == Path::new("newlink"))
            .map(|e| e.link_name().unwrap().unwrap().into_owned())
            .unwrap();
        assert_eq!(back, Path::new("/home/u"));
    }
}
