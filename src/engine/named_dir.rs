//! NAME.d: what the image's scripts left in `out/NAME.d` (manifests and the like) comes back to
//! the host next to the outputs, merged into an existing NAME.d as virt-dib did.
//!
//! The tar stream is the guest's and NAME.d may hold what an earlier build's guest left there
//! (a link to `~/.ssh`, say). So the stream is unpacked into a fresh private directory beside
//! NAME.d (`tar` crate, every entry checked to stay inside), and that is merged in with
//! directory descriptors (`openat` with `O_NOFOLLOW`, `renameat`): no existing link, NAME.d
//! itself included, is ever followed. By hand because no crate merges trees without following
//! links; the merge is a few system calls per entry.
//!
//! What is published is plain: a link whose target is absolute or climbs out of NAME.d is left
//! out (the next `cp -rL` or artifact upload would follow it to a host file), and modes are
//! 0755 for directories and executables, 0644 for the rest, owned by the user running the build.
//! The stream is read against a byte budget.

use std::ffi::{CString, OsStr};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::formats::tar_guard::Budget;

#[derive(Debug, thiserror::Error)]
pub enum NamedDirError {
    #[error("{0} is not a directory (a link is never written through)")]
    NotADirectory(PathBuf),
    #[error("the image's {0} holds an unacceptable path {1:?}")]
    BadEntry(String, PathBuf),
    #[error("cannot unpack the image's {what}: {source}")]
    Unpack {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the image's {0} is larger than {1} bytes")]
    TooBig(String, u64),
    #[error("cannot put {path} in place: {source}")]
    Merge {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a copy left out: links that lead out of NAME.d (their paths inside it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopiedOut {
    pub links_left_out: Vec<PathBuf>,
}

/// Unpacks `stream` (a tar of `./NAME.d/...`, as the appliance sends it; at most `max_bytes`)
/// and merges its `NAME.d` into `dest` (the host's NAME.d, created if missing).
pub fn copy_out(stream: impl Read, dest: &Path, max_bytes: u64) -> Result<CopiedOut, NamedDirError> {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().ok_or_else(|| NamedDirError::NotADirectory(dest.to_owned()))?;
    let what = name.to_string_lossy().into_owned();
    let fresh = parent.join(format!(".{what}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(parent).map_err(|e| NamedDirError::Merge { path: parent.to_owned(), source: e })?;
    let made = std::fs::DirBuilder::new().mode_private().create(&fresh);
    made.map_err(|e| NamedDirError::Merge { path: fresh.clone(), source: e })?;
    let budget = Budget::new(max_bytes);
    let unpacked = unpack(budget.reader(stream), &budget, &fresh, &what);
    let unpacked = match unpacked {
        Err(_) if budget.spent() => Err(NamedDirError::TooBig(what.clone(), max_bytes)),
        other => other,
    };
    let result = unpacked.and_then(|copied| {
        let top = fresh.join(name);
        if std::fs::symlink_metadata(&top).is_ok_and(|m| m.is_dir()) {
            plain_modes(&top).map_err(|e| NamedDirError::Merge { path: dest.to_owned(), source: e })?;
            merge_into(&top, parent, name, dest)?;
        }
        Ok(copied)
    });
    // Modes from the stream may have made directories unreadable to us.
    super::host_view::make_removable(&fresh);
    let _ = std::fs::remove_dir_all(&fresh);
    result
}

trait PrivateDir {
    fn mode_private(&mut self) -> &mut Self;
}
impl PrivateDir for std::fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

/// Unpacks every entry inside `dir`: files, directories, links that stay inside NAME.d and
/// hard links to files unpacked before; devices and FIFOs are left out, and so are links that
/// lead out.
fn unpack(stream: impl Read, budget: &Budget, dir: &Path, what: &str) -> Result<CopiedOut, NamedDirError> {
    let unpack_err = |e: std::io::Error| NamedDirError::Unpack { what: what.to_owned(), source: e };
    let mut copied = CopiedOut::default();
    let mut archive = tar::Archive::new(crate::formats::tar_guard::TarGuard::new(stream));
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(unpack_err)? {
        let mut entry = entry.map_err(unpack_err)?;
        if !budget.charge_entry() {
            return Err(NamedDirError::TooBig(what.to_owned(), budget.limit()));
        }
        let kind = entry.header().entry_type();
        let wanted =
            kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link() || kind.is_gnu_sparse();
        if !wanted {
            continue;
        }
        if kind.is_symlink() {
            let path = entry.path().map_err(unpack_err)?.into_owned();
            let target = entry.link_name().map_err(unpack_err)?.map(|t| t.into_owned()).unwrap_or_default();
            if !stays_inside(&path, &target) {
                copied
                    .links_left_out
                    .push(path.components().skip_while(|c| matches!(c, Component::CurDir)).skip(1).collect());
                continue;
            }
        }
        // unpack_in refuses `..`, absolute paths and parents that resolve outside `dir`.
        if !entry.unpack_in(dir).map_err(unpack_err)? {
            let path = entry.path().map(|p| p.into_owned()).unwrap_or_default();
            return Err(NamedDirError::BadEntry(what.to_owned(), path));
        }
    }
    Ok(copied)
}

/// Whether a link at `path` (`./NAME.d/...` in the stream) pointing at `target` leads to a place
/// inside NAME.d, read as written (the links it may pass through are checked the same way).
fn stays_inside(path: &Path, target: &Path) -> bool {
    if target.is_absolute() || target.as_os_str().is_empty() {
        return false;
    }
    // Depth below NAME.d of the directory holding the link.
    let parts: Vec<Component> = path.components().filter(|c| !matches!(c, Component::CurDir)).collect();
    let mut depth = parts.len() as i64 - 2;
    if depth < 0 {
        return false;
    }
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Directories and executables 0755, other files 0644; links as they are. No set-id bits and
/// nothing writable by others reach the output directory.
fn plain_modes(top: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(top)?;
    if m.file_type().is_symlink() {
        return Ok(());
    }
    if m.is_dir() {
        // Readable first, so its entries can be walked.
        std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(top)? {
            plain_modes(&e?.path())?;
        }
        return Ok(());
    }
    let mode = if m.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(mode))
}

fn cstr(name: &OsStr) -> CString {
    // A name from read_dir has no NUL byte.
    CString::new(name.as_bytes()).unwrap_or_default()
}

/// Opens `name` in the directory `at` as a directory, never through a link.
fn open_dir_at(at: libc::c_int, name: &OsStr) -> std::io::Result<OwnedFd> {
    let c = cstr(name);
    // SAFETY: `c` is a NUL-terminated string that outlives the call; the result is checked.
    let fd = unsafe { libc::openat(at, c.as_ptr(), libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened by us and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `name` in the directory `at` is, without following a link; None if missing.
fn kind_at(at: &OwnedFd, name: &OsStr) -> std::io::Result<Option<libc::mode_t>> {
    let c = cstr(name);
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` and `st` outlive the call; the result is checked.
    let r = unsafe { libc::fstatat(at.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 {
        return Ok(Some(st.st_mode & libc::S_IFMT));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Moves `src` (a path in our private tree) to `name` in the directory `at`, replacing a
/// non-directory there (rename never follows the link it replaces).
fn move_into(src: &Path, at: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    let (s, d) = (cstr(src.as_os_str()), cstr(name));
    // SAFETY: both strings outlive the call; the result is checked.
    let r = unsafe { libc::renameat(libc::AT_FDCWD, s.as_ptr(), at.as_raw_fd(), d.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn remove_at(at: &OwnedFd, name: &OsStr, dir: bool) -> std::io::Result<()> {
    let c = cstr(name);
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` outlives the call; the result is checked.
    if unsafe { libc::unlinkat(at.as_raw_fd(), c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Merges the private directory `src` into `name` in `parent` (shown as `shown`).
fn merge_into(src: &Path, parent: &Path, name: &OsStr, shown: &Path) -> Result<(), NamedDirError> {
    let merge_err = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| NamedDirError::Merge { path, source: e }
    };
    let parent_fd = open_dir_at(libc::AT_FDCWD, parent.as_os_str()).map_err(merge_err(parent))?;
    match kind_at(&parent_fd, name).map_err(merge_err(shown))? {
        // The first build: the whole tree moves in at once.
        None => return move_into(src, &parent_fd, name).map_err(merge_err(shown)),
        Some(libc::S_IFDIR) => {}
        Some(_) => return Err(NamedDirError::NotADirectory(shown.to_owned())),
    }
    let dest = open_dir_at(parent_fd.as_raw_fd(), name).map_err(merge_err(shown))?;
    merge_dir(src, &dest, shown)
}

fn merge_dir(src: &Path, dest: &OwnedFd, shown: &Path) -> Result<(), NamedDirError> {
    let merge_err = |path: PathBuf| move |e: std::io::Error| NamedDirError::Merge { path, source: e };
    let entries = std::fs::read_dir(src).map_err(merge_err(shown.to_owned()))?;
    for e in entries {
        let e = e.map_err(merge_err(shown.to_owned()))?;
        let name = e.file_name();
        let (from, to) = (e.path(), shown.join(&name));
        let is_dir = e.file_type().map_err(merge_err(to.clone()))?.is_dir();
        let there = kind_at(dest, &name).map_err(merge_err(to.clone()))?;
        match (is_dir, there) {
            (true, Some(libc::S_IFDIR)) => {
                let sub = open_dir_at(dest.as_raw_fd(), &name).map_err(merge_err(to.clone()))?;
                merge_dir(&from, &sub, &to)?;
            }
            (true, Some(_)) => {
                // A file or link where a directory comes: the new directory wins, as with tar.
                remove_at(dest, &name, false).map_err(merge_err(to.clone()))?;
                move_into(&from, dest, &name).map_err(merge_err(to))?;
            }
            (false, Some(libc::S_IFDIR)) => {
                return Err(NamedDirError::Merge {
                    path: to,
                    source: std::io::Error::other("a directory is in the way"),
                })
            }
            (_, _) => move_into(&from, dest, &name).map_err(merge_err(to))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDir;
    use std::os::unix::fs::PermissionsExt;

    const MAX: u64 = 64 << 20;

    fn stream(entries: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match (path.ends_with('/'), link) {
                (true, _) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
                (false, Some(l)) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, l).unwrap();
                }
                (false, None) => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, *data).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn merges_without_following_links_left_by_an_earlier_build() {
        let t = TempDir::new("links");
        let outside = t.0.join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = t.0.join("out/img.d");
        // An earlier build's NAME.d holds a link to a host directory (today's builds leave such
        // links out; a NAME.d from before, or made by hand, may still hold one).
        std::fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("k")).unwrap();
        // Build 2 writes a file under the link's name and a new file in a new directory.
        let second = stream(&[
            ("./img.d/", None, b""),
            ("./img.d/k/", None, b""),
            ("./img.d/k/authorized_keys", None, b"pwned"),
            ("./img.d/manifest", None, b"ok"),
        ]);
        copy_out(&second[..], &dest, MAX).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote through the link");
        assert_eq!(std::fs::read(dest.join("k/authorized_keys")).unwrap(), b"pwned");
        assert_eq!(std::fs::read(dest.join("manifest")).unwrap(), b"ok");
        // A file replacing a link replaces the link, never its target.
        std::os::unix::fs::symlink(outside.join("f"), dest.join("f")).unwrap();
        copy_out(&stream(&[("./img.d/f", None, b"x")])[..], &dest, MAX).unwrap();
        assert!(!outside.join("f").exists());
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"x");
        // No private directory is left behind.
        let left: Vec<_> = std::fs::read_dir(t.0.join("out")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("img.d")]);
    }

    #[test]
    fn a_name_d_that_is_a_link_is_refused() {
        let t = TempDir::new("top");
        let outside = t.0.join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, t.0.join("img.d")).unwrap();
        let s = stream(&[("./img.d/", None, b""), ("./img.d/x", None, b"x")]);
        let r = copy_out(&s[..], &t.0.join("img.d"), MAX);
        assert!(matches!(r, Err(NamedDirError::NotADirectory(_))), "{:?}", r.err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn entries_that_climb_out_are_refused() {
        let t = TempDir::new("climb");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, "./img.d/up", "../../..").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        let name = b"./img.d/up/pwned-climb";
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let r = copy_out(&b.into_inner().unwrap()[..], &t.0.join("img.d"), MAX);
        assert!(r.is_err());
        assert!(!t.0.parent().unwrap().join("pwned-climb").exists());
    }

    /// Links that point at a host path or climb out of NAME.d are left out and named; links
    /// that stay inside are kept.
    #[test]
    fn links_that_lead_out_are_left_out_and_named() {
        let t = TempDir::new("out-links");
        let dest = t.0.join("img.d");
        let s = stream(&[
            ("./img.d/", None, b""),
            ("./img.d/sub/", None, b""),
            ("./img.d/key", Some("/root/.ssh/id_ed25519"), b""),
            ("./img.d/sub/up", Some("../../etc"), b""),
            ("./img.d/sub/ok", Some("../manifest"), b""),
            ("./img.d/manifest", None, b"m"),
        ]);
        let copied = copy_out(&s[..], &dest, MAX).unwrap();
        assert_eq!(copied.links_left_out, vec![PathBuf::from("key"), PathBuf::from("sub/up")]);
        assert!(std::fs::symlink_metadata(dest.join("key")).is_err());
        assert!(std::fs::symlink_metadata(dest.join("sub/up")).is_err());
        assert_eq!(std::fs::read_link(dest.join("sub/ok")).unwrap(), PathBuf::from("../manifest"));
    }

    /// What is published has plain modes: no set-id bits, nothing writable by others.
    #[test]
    fn modes_are_plain() {
        let t = TempDir::new("modes");
        let mut b = tar::Builder::new(Vec::new());
        for (path, mode, kind) in [
            ("./img.d/", 0o777, tar::EntryType::Directory),
            ("./img.d/run", 0o4777, tar::EntryType::Regular),
            ("./img.d/data", 0o666, tar::EntryType::Regular),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        }
        let dest = t.0.join("img.d");
        copy_out(&b.into_inner().unwrap()[..], &dest, MAX).unwrap();
        let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(""), mode("run"), mode("data")), (0o755, 0o755, 0o644));
    }

    #[test]
    fn a_stream_over_its_budget_is_refused() {
        let t = TempDir::new("budget");
        let s = stream(&[("./img.d/", None, b""), ("./img.d/big", None, &vec![7u8; 200_000])]);
        let r = copy_out(&s[..], &t.0.join("img.d"), 100_000);
        assert!(matches!(r, Err(NamedDirError::TooBig(_, 100_000))), "{:?}", r.err());
    }
}
