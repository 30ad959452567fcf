//! The phase cache's store: entries under one private directory, each written whole or not at
//! all, checked against its recorded sha256 sums before use, evicted least recently used first
//! when the store outgrows its bound. Entries hold guest-written bytes (disk layers): the host
//! never executes or interprets them, it hashes them and hands them back to a build VM.
//!
//! Layout: `DIR/lock` (held while entries are committed or evicted), `DIR/entries/KEY/`
//! (`manifest`, `used` whose mtime is the last use, the files), `DIR/tmp/` (entries being
//! written, and entries on their way out). An entry in use is held by a shared lock on its
//! manifest; eviction passes over it. An entry being written is held by a lock on its
//! directory; one nobody holds is what a killed build left, and goes.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::key::{Digest, Inputs, Key};

/// A manifest longer than this is not one of ours.
const MANIFEST_MAX: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the phase cache {0} belongs to another user")]
    NotOurs(PathBuf),
    #[error("the phase cache {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0} is not a name a cache entry's file can have")]
    BadFileName(String),
    #[error("{0} cannot be stored as a fact (a one-word name, a one-line value)")]
    BadFact(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CacheError {
    let what = what.into();
    move |source| CacheError::Io { what, source }
}

/// How large and how old the store's entries may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most the entries may take on disk together.
    pub max_bytes: u64,
    /// Entries older than this are not used (what no key sees, a mirror's packages, ages).
    pub max_age: Duration,
}

/// A stored file and its sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSum {
    pub name: String,
    pub size: u64,
    pub sha256: Digest,
}

/// What an entry is: written by the host, next to the guest-written files it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub key: Key,
    pub parent: Option<Key>,
    pub phase: String,
    pub elements: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub inputs: Inputs,
    /// What the build made up by then and later phases read (the root file system's UUID),
    /// by name; names are single words.
    pub facts: Vec<(String, String)>,
    pub files: Vec<FileSum>,
}

impl Manifest {
    fn to_text(&self) -> String {
        let mut t = format!("key {}\n", self.key);
        t += &format!("parent {}\n", self.parent.map_or("-".to_owned(), |p| p.to_string()));
        t += &format!("phase {}\ncreated {}\n", self.phase, self.created);
        for e in &self.elements {
            t += &format!("element {e}\n");
        }
        for (name, d) in self.inputs.iter() {
            t += &format!("input {name} {d}\n");
        }
        for (name, value) in &self.facts {
            t += &format!("fact {name} {value}\n");
        }
        for f in &self.files {
            t += &format!("file {} {} {}\n", f.name, f.size, f.sha256);
        }
        t
    }

    /// The manifest in `text`, or None if it is not a whole one of ours.
    fn parse(text: &str) -> Option<Manifest> {
        let (mut key, mut parent, mut phase, mut created) = (None, None, None, None);
        let (mut elements, mut inputs, mut facts, mut files) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for line in text.lines() {
            let (tag, rest) = line.split_once(' ')?;
            match tag {
                "key" => key = Some(Key(Digest::from_hex(rest)?)),
                "parent" if rest == "-" => parent = Some(None),
                "parent" => parent = Some(Some(Key(Digest::from_hex(rest)?))),
                "phase" => phase = Some(rest.to_owned()),
                "created" => created = Some(rest.parse().ok()?),
                "element" => elements.push(rest.to_owned()),
                "input" => {
                    let (name, d) = rest.split_once(' ')?;
                    inputs.push((name.to_owned(), Digest::from_hex(d)?));
                }
                "fact" => {
                    let (name, value) = rest.split_once(' ')?;
                    facts.push((name.to_owned(), value.to_owned()));
                }
                "file" => {
                    let mut p = rest.split(' ');
                    let (name, size, sum) = (p.next()?, p.next()?.parse().ok()?, Digest::from_hex(p.next()?)?);
                    if p.next().is_some() || !is_file_name(name) {
                        return None;
                    }
                    files.push(FileSum { name: name.to_owned(), size, sha256: sum });
                }
                _ => return None,
            }
        }
        Some(Manifest {
            key: key?,
            parent: parent?,
            phase: phase?,
            elements,
            created: created?,
            inputs: inputs.into_iter().collect(),
            facts,
            files,
        })
    }
}

/// A name an entry's file may have: one plain path component.
fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name != "manifest"
        && name != "used"
}

/// A name part no other directory of this process or another has.
fn unique_suffix() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{t}-{n}", std::process::id())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An entry a build uses: its files stay while this lives.
#[derive(Debug)]
pub struct Entry {
    pub manifest: Manifest,
    dir: PathBuf,
    _held: File,
}

impl Entry {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Entry>),
    /// No entry has this key.
    Absent,
    /// The entry is older than the age bound.
    Expired {
        age: Duration,
    },
    /// The entry failed its check and was dropped (the text says how).
    Dropped(String),
}

/// One entry, as `microdib --cache-list` shows it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub manifest: Manifest,
    /// Where it is.
    pub dir: PathBuf,
    /// Bytes on disk (sparse files count what they hold).
    pub bytes: u64,
    pub last_used: SystemTime,
}

/// The phase cache's directory.
pub struct Store {
    dir: PathBuf,
    limits: Limits,
}

impl Store {
    /// Opens (or makes, mode 0700) the store at `dir`, and removes what killed builds left.
    pub fn open(dir: &Path, limits: Limits) -> Result<Store, CacheError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("cannot make {}", dir.display())))?;
        let meta = std::fs::symlink_metadata(dir).map_err(io(format!("cannot read {}", dir.display())))?;
        if !meta.is_dir() {
            return Err(CacheError::NotADirectory(dir.to_owned()));
        }
        if meta.uid() != effective_uid() {
            return Err(CacheError::NotOurs(dir.to_owned()));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(format!("cannot make {} private", dir.display())))?;
        }
        for sub in ["entries", "tmp"] {
            let p = dir.join(sub);
            DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .map_err(io(format!("cannot make {}", p.display())))?;
        }
        let store = Store { dir: dir.to_owned(), limits };
        let lock = store.bookkeeping()?;
        store.remove_abandoned();
        drop(lock);
        Ok(store)
    }

    fn entries(&self) -> PathBuf {
        self.dir.join("entries")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The bookkeeping lock: one build commits or evicts at a time.
    fn bookkeeping(&self) -> Result<File, CacheError> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("cannot open {}", path.display())))?;
        f.lock().map_err(io(format!("cannot lock {}", path.display())))?;
        Ok(f)
    }

    /// The entry with `key`, checked whole, or why there is none to use.
    pub fn lookup(&self, key: &Key) -> Result<Lookup, CacheError> {
        let dir = self.entries().join(key.to_string());
        let manifest_path = dir.join("manifest");
        // Evicted, or evicted and stored again, between the open and the lock: look again.
        for _ in 0..3 {
            let held = match open_manifest(&manifest_path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Absent),
                Err(_) => return Ok(self.drop_entry(None, &dir, "its manifest is not a plain file")),
            };
            held.lock_shared().map_err(io(format!("cannot lock {}", manifest_path.display())))?;
            if !still_at(&held, &manifest_path) {
                continue;
            }
            let manifest = match read_manifest(&held) {
                Some(m) if m.key == *key => m,
                _ => return Ok(self.drop_entry(Some(held), &dir, "its manifest is not a valid one")),
            };
            let age = Duration::from_secs(now().saturating_sub(manifest.created));
            if age >= self.limits.max_age {
                return Ok(Lookup::Expired { age });
            }
            if let Err(why) = verify_files(&dir, &manifest) {
                return Ok(self.drop_entry(Some(held), &dir, &why));
            }
            touch_used(&dir.join("used"));
            return Ok(Lookup::Hit(Box::new(Entry { manifest, dir, _held: held })));
        }
        Ok(Lookup::Absent)
    }

    /// Whether a young enough entry with `key` is stored (its files unchecked: a build that
    /// would store the same key again does not, and a lookup checks them before any use).
    pub fn has(&self, key: &Key) -> bool {
        let manifest_path = self.entries().join(key.to_string()).join("manifest");
        let Ok(f) = open_manifest(&manifest_path) else { return false };
        read_manifest(&f).is_some_and(|m| {
            m.key == *key && Duration::from_secs(now().saturating_sub(m.created)) < self.limits.max_age
        })
    }

    /// Removes an entry that failed its check (unless another build holds it still).
    fn drop_entry(&self, held: Option<File>, dir: &Path, why: &str) -> Lookup {
        drop(held);
        if let Ok(_lock) = self.bookkeeping() {
            let _ = self.remove_entry_if_unused(dir);
        }
        Lookup::Dropped(why.to_owned())
    }

    /// The newest entry after `parent` for `phase`: what a miss compares its inputs with.
    pub fn nearest(&self, parent: Option<&Key>, phase: &str) -> Option<Manifest> {
        self.list()
            .into_iter()
            .map(|i| i.manifest)
            .filter(|m| m.parent.as_ref() == parent && m.phase == phase)
            .max_by_key(|m| m.created)
    }

    /// Starts a new entry: its files are written into the returned place, then committed.
    pub fn begin(&self) -> Result<Pending<'_>, CacheError> {
        let dir = self.tmp().join(format!("{}.{}", std::process::id(), unique_suffix()));
        // Made and locked under the bookkeeping lock, so that no store being opened takes it
        // for a killed build's.
        let _lock = self.bookkeeping()?;
        DirBuilder::new().mode(0o700).create(&dir).map_err(io(format!("cannot make {}", dir.display())))?;
        let held = File::open(&dir).map_err(io(format!("cannot open {}", dir.display())))?;
        held.lock().map_err(io(format!("cannot lock {}", dir.display())))?;
        Ok(Pending { store: self, dir, _held: held, committed: false })
    }

    /// Every entry, with its size and last use; entries that are not whole are left out.
    pub fn list(&self) -> Vec<EntryInfo> {
        let Ok(rd) = std::fs::read_dir(self.entries()) else { return Vec::new() };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let dir = e.path();
            let Some(manifest) = open_manifest(&dir.join("manifest")).ok().as_ref().and_then(read_manifest) else {
                continue;
            };
            let last_used =
                std::fs::symlink_metadata(dir.join("used")).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
            out.push(EntryInfo { bytes: disk_usage(&dir), manifest, last_used, dir });
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.last_used));
        out
    }

    /// Removes every entry no build is using; returns how many went.
    pub fn clear(&self) -> Result<usize, CacheError> {
        let _lock = self.bookkeeping()?;
        let mut removed = 0;
        for e in std::fs::read_dir(self.entries()).map_err(io("cannot read the phase cache"))?.flatten() {
            if self.remove_entry_if_unused(&e.path())? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Keeps the store within its bounds: expired entries go, then the least recently used
    /// until the rest fits. Entries in use stay, past the bound if need be (the next commit
    /// evicts them). Called with the bookkeeping lock held.
    fn evict(&self) -> Result<(), CacheError> {
        // Only whole entries reach entries/: one whose manifest does not read is damage, and goes.
        if let Ok(rd) = std::fs::read_dir(self.entries()) {
            for e in rd.flatten() {
                let readable =
                    open_manifest(&e.path().join("manifest")).ok().as_ref().and_then(read_manifest).is_some();
                if !readable {
                    self.remove_entry_if_unused(&e.path())?;
                }
            }
        }
        let mut entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        // Oldest use first.
        entries.reverse();
        for e in entries {
            let expired = now().saturating_sub(e.manifest.created) >= self.limits.max_age.as_secs();
            if (expired || total > self.limits.max_bytes) && self.remove_entry_if_unused(&e.dir)? {
                total -= e.bytes;
            }
        }
        Ok(())
    }

    /// Moves an entry out (atomically: into tmp/) and deletes it, unless a build holds it.
    fn remove_entry_if_unused(&self, dir: &Path) -> Result<bool, CacheError> {
        let manifest = dir.join("manifest");
        // Held (exclusively) until the entry has left entries/: no lookup can take it meanwhile.
        let _held = match open_manifest(&manifest) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Some(f),
                Err(TryLockError::WouldBlock) => return Ok(false),
                Err(TryLockError::Error(e)) => return Err(io(format!("cannot lock {}", manifest.display()))(e)),
            },
            Err(_) => None,
        };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let gone = self.tmp().join(format!("gone.{name}.{}", unique_suffix()));
        std::fs::rename(dir, &gone).map_err(io(format!("cannot remove {}", dir.display())))?;
        // Out of entries/ it is gone for every build; what a failed or raced delete leaves in
        // tmp/ goes when a store is next opened.
        let _ = std::fs::remove_dir_all(&gone);
        Ok(true)
    }

    /// What killed builds left in tmp/: directories nobody holds.
    fn remove_abandoned(&self) {
        let Ok(rd) = std::fs::read_dir(self.tmp()) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let free = File::open(&path).is_ok_and(|f| f.try_lock().is_ok());
            if free {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// What an entry is stored as, besides its files.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub key: Key,
    pub parent: Option<Key>,
    pub phase: &'a str,
    pub elements: &'a [String],
    pub inputs: &'a Inputs,
    pub facts: &'a [(String, String)],
}

/// An entry being written; dropped before `commit`, it is gone.
pub struct Pending<'s> {
    store: &'s Store,
    dir: PathBuf,
    _held: File,
    committed: bool,
}

impl Pending<'_> {
    /// Where the entry's file `name` is written.
    pub fn path(&self, name: &str) -> Result<PathBuf, CacheError> {
        if !is_file_name(name) {
            return Err(CacheError::BadFileName(name.to_owned()));
        }
        Ok(self.dir.join(name))
    }

    /// Sums the files, writes the manifest, and moves the entry into place under its key. If
    /// another build stored the same key meanwhile, its entry is kept and returned.
    pub fn commit(mut self, new: &NewEntry<'_>) -> Result<Entry, CacheError> {
        let key = new.key;
        let bad_fact =
            new.facts.iter().find(|(n, v)| n.is_empty() || n.contains(char::is_whitespace) || v.contains('\n'));
        if let Some((name, value)) = bad_fact {
            return Err(CacheError::BadFact(format!("{name:?} = {value:?}")));
        }
        let mut files = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(io(format!("cannot read {}", self.dir.display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            if !is_file_name(&name) {
                return Err(CacheError::BadFileName(name));
            }
            let path = self.dir.join(&name);
            let f = File::open(&path).map_err(io(format!("cannot open {}", path.display())))?;
            f.sync_all().map_err(io(format!("cannot sync {}", path.display())))?;
            let (size, sha256) = sum_file(&path).map_err(io(format!("cannot read {}", path.display())))?;
            files.push(FileSum { name, size, sha256 });
        }
        let manifest = Manifest {
            key,
            parent: new.parent,
            phase: new.phase.to_owned(),
            elements: new.elements.to_vec(),
            created: now(),
            inputs: new.inputs.clone(),
            facts: new.facts.to_vec(),
            files,
        };
        let manifest_path = self.dir.join("manifest");
        let mut f = File::create(&manifest_path).map_err(io(format!("cannot write {}", manifest_path.display())))?;
        f.write_all(manifest.to_text().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(format!("cannot write {}", manifest_path.display())))?;
        File::create(self.dir.join("used")).map_err(io("cannot write the entry's use stamp"))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("cannot sync the new entry"))?;

        let lock = self.store.bookkeeping()?;
        let dest = self.store.entries().join(key.to_string());
        // An entry already there that is no use (expired, damaged) makes way for this one.
        if dest.exists() {
            let usable =
                open_manifest(&dest.join("manifest")).ok().as_ref().and_then(read_manifest).is_some_and(|m| {
                    m.key == key && now().saturating_sub(m.created) < self.store.limits.max_age.as_secs()
                });
            if !usable {
                self.store.remove_entry_if_unused(&dest)?;
            }
        }
        match std::fs::rename(&self.dir, &dest) {
            Ok(()) => self.committed = true,
            // Stored by another build meanwhile: ours goes (on drop), theirs is used, checked.
            Err(_) if dest.exists() => {
                drop(lock);
                return match self.store.lookup(&key)? {
                    Lookup::Hit(entry) => Ok(*entry),
                    other => Err(CacheError::Io {
                        what: format!("the entry another build stored under {} is not usable", key.0.short()),
                        source: std::io::Error::other(format!("{other:?}")),
                    }),
                };
            }
            Err(e) => return Err(io(format!("cannot store {}", dest.display()))(e)),
        }
        File::open(self.store.entries()).and_then(|d| d.sync_all()).map_err(io("cannot sync the phase cache"))?;
        // Held before the eviction, which passes over entries in use.
        let manifest_path = dest.join("manifest");
        let held = open_manifest(&manifest_path).map_err(io(format!("cannot open {}", manifest_path.display())))?;
        held.lock_shared().map_err(io(format!("cannot lock {}", manifest_path.display())))?;
        // The entry is stored: a failed eviction only leaves the store past its bound for now.
        let _ = self.store.evict();
        drop(lock);
        Ok(Entry { manifest, dir: dest, _held: held })
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Opens an entry's manifest as a plain file: never through a link, never blocking on a FIFO.
fn open_manifest(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a plain file"));
    }
    Ok(f)
}

/// Whether `held` is still the file at `path` (not evicted, not replaced by a new entry).
fn still_at(held: &File, path: &Path) -> bool {
    match (held.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Marks an entry used now, without following a link there.
fn touch_used(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    if let Ok(f) = opened {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn read_manifest(f: &File) -> Option<Manifest> {
    let mut text = String::new();
    f.take(MANIFEST_MAX + 1).read_to_string(&mut text).ok()?;
    if text.len() as u64 > MANIFEST_MAX {
        return None;
    }
    Manifest::parse(&text)
}

/// Checks each file of the entry against its size and sum.
fn verify_files(dir: &Path, m: &Manifest) -> Result<(), String> {
    for f in &m.files {
        let path = dir.join(&f.name);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", f.name))?;
        if !meta.is_file() {
            return Err(format!("{} is not a plain file", f.name));
        }
        if meta.len() != f.size {
            return Err(format!("{} is {} bytes, not {}", f.name, meta.len(), f.size));
        }
        let (_, sum) = sum_file(&path).map_err(|e| format!("{}: {e}", f.name))?;
        if sum != f.sha256 {
            return Err(format!("{} does not match its sha256", f.name));
        }
    }
    Ok(())
}

/// The size and digest of a file: sha256 over each run of data (its offset, length and bytes)
/// and the size, so a disk's holes cost nothing to sum. The same file always sums the same; a
/// copy made by `sparse::copy_sparse` has the same runs.
fn sum_file(path: &Path) -> std::io::Result<(u64, Digest)> {
    use sha2::Digest as _;
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut h = sha2::Sha256::new();
    for (offset, length) in super::sparse::data_extents(&f, size)? {
        h.update(offset.to_le_bytes());
        h.update(length.to_le_bytes());
        super::sparse::read_range(&f, offset, length, &mut |chunk| {
            h.update(chunk);
            Ok(())
        })?;
    }
    h.update(size.to_le_bytes());
    Ok((size, Digest::from(<[u8; 32]>::from(h.finalize()))))
}

/// The bytes a directory's files hold on disk.
fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum())
        .unwrap_or(0)
}

fn effective_uid() -> u32 {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}
