//! The keys of a build's phase checkpoints (`crate::cache`): at each boundary before the image
//! is entered, the content of everything the phases up to there depend on, chained on the
//! previous boundary's key. Nothing per run may enter a key (the workspace's host paths, the
//! root file system's random UUID, the log's time stamp), or no key would match twice: what a
//! phase makes up and later phases read is a fact the checkpoint carries, not an input.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::env::{BuildVars, Context};
use super::phases::Phase;
use crate::cache::sparse::{copy_sparse, restore_into};
use crate::cache::{tree_digest, CacheError, Digest, Entry, Inputs, Key, Lookup, NewEntry, Store};
use crate::guest::paths::AUX;
use crate::guest::{scripts, Guest, GuestError, TreeTar};

/// The phases after which a build can be checkpointed, in the order they run.
pub const CHECKPOINTED: [Phase; 6] =
    [Phase::Root, Phase::ExtraData, Phase::PreInstall, Phase::Install, Phase::PostInstall, Phase::PostRoot];

/// Variables holding facts, not inputs: the file system's UUID (made at random for each build)
/// and the devices block-device.d or the block-device layer named.
const FACT_VARIABLES: [&str; 3] = ["DIB_IMAGE_ROOT_FS_UUID", "IMAGE_BLOCK_DEVICE", "IMAGE_BLOCK_DEVICE_WITHOUT_PART"];

/// Where the aux tree's runtime directories are: the helper drive and NAME.d, the build's own.
const AUX_RUNTIME: [&str; 2] = ["perm", "out"];

/// The places in the aux tree a checkpoint's key leaves out: later phases' hook directories
/// and, before pre-install.d, the extra packages' list and installer. Editing them reuses the
/// checkpoint, so a restore gives them the host's current content.
pub fn skipped_places(phase: Phase) -> Vec<PathBuf> {
    let mut places: Vec<PathBuf> =
        Phase::ALL.iter().filter(|p| **p > phase).map(|p| Path::new("hooks").join(p.dir())).collect();
    if phase < Phase::PreInstall {
        places.extend(["extra-packages", "install-packages.sh"].map(PathBuf::from));
    }
    places
}

/// The files the host's aux tree holds in `places` (relative paths, `/`-separated), with the
/// digests of their contents (a link: of its target).
pub fn host_files(aux: &Path, places: &[PathBuf]) -> Result<BTreeMap<String, Digest>, CheckpointError> {
    let mut found = BTreeMap::new();
    let mut pending: Vec<PathBuf> = places.to_vec();
    while let Some(rel) = pending.pop() {
        let path = aux.join(&rel);
        let key_err = |source| CheckpointError::Key { path: path.clone(), source };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(key_err(e)),
        };
        let name = rel.to_string_lossy().into_owned();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(key_err)? {
                pending.push(rel.join(entry.map_err(key_err)?.file_name()));
            }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(key_err)?;
            found.insert(name, Digest::of_fields([("link", target.to_string_lossy().as_ref())]));
        } else {
            let content = Digest::of(&std::fs::read(&path).map_err(key_err)?);
            found.insert(name, file_digest(meta.permissions().mode() & 0o7777, &content.hex()));
        }
    }
    Ok(found)
}

/// A file as both sides describe it: its permission bits (octal, as `stat -c %a` prints them)
/// and the sha256 of its content.
fn file_digest(mode: u32, sha256_hex: &str) -> Digest {
    Digest::of_fields([("mode", format!("{mode:o}").as_str()), ("sha256", sha256_hex)])
}

/// What every checkpoint of a build depends on besides the aux tree and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInputs {
    /// The host's aux tree: hooks (the merged elements), wrappers, fake-bin.
    pub aux: PathBuf,
    /// diskimage-builder's library (`-B`), sent beside the aux tree.
    pub lib: PathBuf,
    /// Size, file system, label, mkfs options, block-device configuration, as one digest.
    pub layout: Digest,
    pub network: NetworkMode,
    pub extra_packages: Vec<String>,
    /// microdib, the guest kernel, the agent and the appliance, as one digest.
    pub tools: Digest,
}

/// What the scripts can reach: what they fetch is not in any key, but where they may fetch it
/// from is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    Off,
    On,
    /// `--network-host-loopback`.
    WithHostLoopback,
}

impl NetworkMode {
    fn digest(self) -> Digest {
        Digest::of(match self {
            NetworkMode::Off => b"off".as_slice(),
            NetworkMode::On => b"on",
            NetworkMode::WithHostLoopback => b"on, with the host's loopback",
        })
    }
}

/// The disk layout a checkpoint's disk was made with: size, file system, label, mkfs options
/// (the block-device layer's configuration is a variable, in the environment). Not the name: a
/// rebuild to another place reuses the same checkpoints.
pub fn layout_digest(image: &crate::plan::ImagePlan) -> Digest {
    let size = image.size.to_string();
    let mkfs = image.mkfs_options.as_deref().unwrap_or("");
    Digest::of_fields([
        ("size", size.as_str()),
        ("fs-type", &image.fs_type),
        ("root-label", &image.root_label),
        ("mkfs-options", mkfs),
    ])
}

/// What runs the phases: microdib itself, the guest kernel, the agent, and the appliance
/// (whose directory is named by the digest of its content).
pub struct Tools<'a> {
    pub microdib: &'a Path,
    pub kernel: &'a Path,
    pub agent: &'a Path,
    pub appliance_root: &'a Path,
}

impl Tools<'_> {
    pub fn digest(&self) -> Result<Digest, CheckpointError> {
        let sum = |path: &Path| -> Result<String, CheckpointError> {
            let bytes = std::fs::read(path).map_err(|source| CheckpointError::Key { path: path.to_owned(), source })?;
            Ok(Digest::of(&bytes).hex())
        };
        let appliance = self.appliance_root.parent().and_then(Path::file_name).unwrap_or_default();
        let (microdib, kernel, agent) = (sum(self.microdib)?, sum(self.kernel)?, sum(self.agent)?);
        let appliance = appliance.to_string_lossy();
        Ok(Digest::of_fields([
            ("microdib", microdib.as_str()),
            ("kernel", &kernel),
            ("agent", &agent),
            ("appliance", &appliance),
        ]))
    }
}

/// The keys of one build's checkpoints, made in phase order.
pub struct KeyChain<'a> {
    build: &'a BuildInputs,
    env: Digest,
    last: Option<Key>,
}

/// Why a checkpoint could not be keyed, taken or restored. But for `StillFrozen`, none of these
/// fails a build: it goes on without the checkpoint, saying why.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path} for the phase cache's key: {source}")]
    Key { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the aux tree's archive is larger than {0} bytes")]
    AuxTooLarge(u64),
    #[error("the entry's record of the host's files is damaged")]
    BadRecord,
    #[error("{0}, which the build changed, is not what it was when the checkpoint was taken")]
    ChangedSinceTaken(String),
    #[error("{0} is on the host now, where the build had made its own")]
    AddedByBoth(String),
    /// The one that must end the build: its file system stays frozen, and the next write to
    /// it would wait for ever.
    #[error("the build VM's file system could not be thawed after a checkpoint: {0}")]
    StillFrozen(GuestError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let what = what.into();
    move |source| CheckpointError::Io { what, source }
}

/// The entry's files: the disk and the aux tree's archive.
const DISK: &str = "disk";
const AUX_TAR: &str = "aux.tar";
const HOST_RECORD: &str = "host-files";

/// A checkpoint to take: what it is stored as, and where the build's disk and the host's aux
/// tree are.
pub struct Take<'a> {
    pub key: Key,
    pub parent: Option<Key>,
    pub phase: Phase,
    pub elements: &'a [String],
    pub inputs: &'a Inputs,
    pub facts: &'a [(String, String)],
    /// The host's aux tree, whose files in the key's skipped places the entry records.
    pub host_aux: &'a Path,
    /// The disk the build writes (the target disk, or the block-device layer's scratch disk).
    pub disk: &'a Path,
    /// The most the aux tree's archive may hold (the appliance's memory holds the tree).
    pub aux_max: u64,
}

/// The entry's record of the host's files in the places its key skipped: `provided` ones the
/// build left as they were (a restore gives the host's current ones), `pinned` ones the build
/// changed (a restore is only valid while the host's are still what they were), and `added`
/// ones the build made there (a restore is not valid if the host has one of those now: in a
/// build without the cache, the script would have written over the host's).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostRecord {
    provided: BTreeMap<String, Digest>,
    pinned: BTreeMap<String, Digest>,
    added: BTreeMap<String, Digest>,
}

/// A host record longer than this is not one of ours.
const HOST_RECORD_MAX: u64 = 16 << 20;

impl HostRecord {
    /// Splits the host's files by what the guest's sums (`MODE SHA256 PATH`, NUL-ended) say of
    /// them: a file the guest lacks, or a link, which it does not sum, counts as changed. The
    /// sums are the guest's word: a guest that lies can only spoil the checkpoints of its own
    /// element set, whose scripts run in it anyway.
    fn new(host: BTreeMap<String, Digest>, guest_sums: &str) -> HostRecord {
        let guest: BTreeMap<&str, Digest> = guest_sums
            .split('\0')
            .filter_map(|rec| {
                let mut f = rec.splitn(3, ' ');
                let (mode, sum, path) = (f.next()?, f.next()?, f.next()?);
                let mode = u32::from_str_radix(mode, 8).ok()?;
                Digest::from_hex(sum)?;
                Some((path, file_digest(mode, sum)))
            })
            .collect();
        let mut r = HostRecord::default();
        for (path, d) in &guest {
            if !host.contains_key(*path) {
                r.added.insert((*path).to_owned(), *d);
            }
        }
        for (path, digest) in host {
            match guest.get(path.as_str()) {
                Some(d) if *d == digest => r.provided.insert(path, digest),
                _ => r.pinned.insert(path, digest),
            };
        }
        r
    }

    /// NUL-separated records: `provided`, `pinned` or `added`, the digest, the path.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, files) in [("provided", &self.provided), ("pinned", &self.pinned), ("added", &self.added)] {
            for (path, d) in files {
                out.extend_from_slice(format!("{kind}\0{d}\0{path}\0").as_bytes());
            }
        }
        out
    }

    /// The record in `bytes`, or None if it is not a whole one of ours (paths only relative,
    /// downwards).
    fn parse(bytes: &[u8]) -> Option<HostRecord> {
        if bytes.len() as u64 > HOST_RECORD_MAX {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split('\0');
        let mut r = HostRecord::default();
        loop {
            let kind = fields.next()?;
            if kind.is_empty() {
                return fields.next().is_none().then_some(r);
            }
            let (d, path) = (Digest::from_hex(fields.next()?)?, fields.next()?.to_owned());
            let downwards = Path::new(&path).components().all(|c| matches!(c, std::path::Component::Normal(_)));
            if path.is_empty() || !downwards {
                return None;
            }
            match kind {
                "provided" => r.provided.insert(path, d),
                "pinned" => r.pinned.insert(path, d),
                "added" => r.added.insert(path, d),
                _ => return None,
            };
        }
    }

    /// Whether the host's files now still allow the restore (see the kinds).
    fn allows(&self, now: &BTreeMap<String, Digest>) -> Result<(), CheckpointError> {
        if let Some(path) = self.pinned.iter().find(|(p, d)| now.get(*p) != Some(*d)).map(|(p, _)| p) {
            return Err(CheckpointError::ChangedSinceTaken(path.clone()));
        }
        if let Some(path) = self.added.keys().find(|p| now.contains_key(*p)) {
            return Err(CheckpointError::AddedByBoth(path.clone()));
        }
        Ok(())
    }
}

/// Takes a checkpoint into `store`: the aux tree's archive (without the helper drive) and the
/// record of the host's files in the key's skipped places, then the disk, copied while the
/// guest holds the root's file system still.
pub fn take(guest: &mut dyn Guest, store: &Store, t: &Take<'_>) -> Result<Entry, CheckpointError> {
    let pending = store.begin()?;
    let aux_path = pending.path(AUX_TAR)?;
    let mut aux = std::fs::File::create(&aux_path).map_err(io(format!("cannot write {}", aux_path.display())))?;
    let mut written = 0u64;
    let excludes = ["./perm/*".to_owned()];
    let tree = TreeTar { root: AUX, excludes: &excludes, metadata: true };
    let sent = guest.send_tree(&tree, &mut |data| {
        written += data.len() as u64;
        if written > t.aux_max {
            return Err(std::io::Error::other("over its bound"));
        }
        aux.write_all(data)
    });
    if written > t.aux_max {
        return Err(CheckpointError::AuxTooLarge(t.aux_max));
    }
    sent?;
    aux.sync_all().map_err(io(format!("cannot write {}", aux_path.display())))?;

    let places = skipped_places(t.phase);
    let place_args: Vec<String> = places.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let mut args = vec!["sums"];
    args.extend(place_args.iter().map(String::as_str));
    let sums = guest.script(&scripts::CHECKPOINT, &args)?;
    let record = HostRecord::new(host_files(t.host_aux, &places)?, &sums);
    let record_path = pending.path(HOST_RECORD)?;
    std::fs::write(&record_path, record.to_bytes()).map_err(io(format!("cannot write {}", record_path.display())))?;

    guest.script(&scripts::CHECKPOINT, &["freeze"])?;
    let disk_path = pending.path(DISK)?;
    let copied = copy_sparse(t.disk, &disk_path).map_err(io(format!("cannot copy {}", t.disk.display())));
    // Thawed whatever the copy did: the build goes on either way.
    guest.script(&scripts::CHECKPOINT, &["thaw"]).map_err(CheckpointError::StillFrozen)?;
    copied?;
    let entry = NewEntry {
        key: t.key,
        parent: t.parent,
        phase: t.phase.dir(),
        elements: t.elements,
        inputs: t.inputs,
        facts: t.facts,
    };
    Ok(pending.commit(&entry)?)
}

/// What the store said of one checkpoint, as the build reports it.
#[derive(Debug)]
pub enum Consulted {
    Hit(Box<Entry>),
    Miss(MissReason),
}

/// Why a checkpoint was not reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissReason {
    /// No entry has ever been stored after the previous checkpoint.
    NeverBuilt,
    /// The newest entry after the previous checkpoint was made from other inputs.
    Changed(Vec<String>),
    /// The entry is older than `--cache-max-age`.
    Expired(std::time::Duration),
    /// The entry failed its check and was dropped.
    Dropped(String),
}

impl std::fmt::Display for MissReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissReason::NeverBuilt => f.write_str("not in the cache"),
            MissReason::Changed(inputs) => write!(f, "changed since the last build: {}", inputs.join(", ")),
            MissReason::Expired(age) => write!(f, "built {} ago, older than --cache-max-age", human_age(*age)),
            MissReason::Dropped(why) => write!(f, "the cached one was damaged and dropped ({why})"),
        }
    }
}

/// Looks the checkpoint after `phase` up; on a miss, says why (against the newest entry after
/// the same previous checkpoint, which names the inputs that changed).
pub fn consult(
    store: &Store,
    key: &Key,
    parent: Option<&Key>,
    phase: Phase,
    inputs: &Inputs,
) -> Result<Consulted, CheckpointError> {
    let reason = match store.lookup(key)? {
        Lookup::Hit(entry) => return Ok(Consulted::Hit(entry)),
        Lookup::Expired { age } => MissReason::Expired(age),
        Lookup::Dropped(why) => MissReason::Dropped(why),
        Lookup::Absent => match store.nearest(parent, phase.dir()) {
            Some(m) => MissReason::Changed(inputs.changed_from(&m.inputs)),
            None => MissReason::NeverBuilt,
        },
    };
    Ok(Consulted::Miss(reason))
}

/// The line a reused phase gets: `install.d: reused from the cache (3f2a91c0, built 2 h ago;
/// --no-cache rebuilds)`.
pub fn reused_line(phase: Phase, entry: &Entry, now: std::time::SystemTime) -> String {
    let built = std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.manifest.created);
    let age = now.duration_since(built).unwrap_or_default();
    format!(
        "{phase}: reused from the cache ({}, built {} ago; --no-cache rebuilds)",
        entry.manifest.key.0.short(),
        human_age(age)
    )
}

/// An age as people say it: `40 s`, `12 min`, `3 h`, `2 days`.
pub fn human_age(age: std::time::Duration) -> String {
    let s = age.as_secs();
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        5400..=129_599 => format!("{} h", (s + 1800) / 3600),
        _ => format!("{} days", (s + 43_200) / 86_400),
    }
}

/// Restores an entry's disk into the build's disk file, in place (before the VM opens it, or
/// while its guest has the file system unmounted).
pub fn restore_disk(entry: &Entry, disk: &Path) -> Result<u64, CheckpointError> {
    restore_into(&entry.file(DISK), disk).map_err(io(format!("cannot restore {}", disk.display())))
}

/// Restores an entry's aux tree in the guest (its archive goes back unopened: the host never
/// unpacks it), then gives the key's skipped places the host's current files: a file the build
/// left as the host gave it is replaced (or removed, if the host has it no more), one a script
/// added stays, one the build changed must still be what the host gave, or nothing is restored.
pub fn restore_aux(guest: &mut dyn Guest, entry: &Entry, host_aux: &Path, phase: Phase) -> Result<(), CheckpointError> {
    let (record, now) = restorable(entry, host_aux, phase)?;
    // What the appliance's aux tree holds now goes first (root.d's scripts may have removed
    // what the host sent), all but the helper drive.
    let listing = guest.sh(r#"ls -A "$1""#, &[AUX])?;
    let present: Vec<String> =
        listing.lines().filter(|n| !n.is_empty() && *n != "perm").map(|n| format!("{AUX}/{n}")).collect();
    if !present.is_empty() {
        guest.remove(&present)?;
    }
    let archive_path = entry.file(AUX_TAR);
    let mut archive =
        std::fs::File::open(&archive_path).map_err(io(format!("cannot read {}", archive_path.display())))?;
    guest.receive_tar(AUX, &mut archive)?;
    let gone: Vec<String> =
        record.provided.keys().filter(|p| !now.contains_key(*p)).map(|p| crate::guest::paths::aux(p)).collect();
    if !gone.is_empty() {
        guest.remove(&gone)?;
    }
    let current: Vec<&String> = now.keys().filter(|p| !record.pinned.contains_key(*p)).collect();
    let tar = host_tar(host_aux, &current)?;
    guest.receive_tar(AUX, &mut &tar[..])?;
    Ok(())
}

/// Whether the entry can be restored with the host's files as they are now (call it before
/// restoring the disk): the entry's record, and the host's files in the key's skipped places.
pub fn restorable(
    entry: &Entry,
    host_aux: &Path,
    phase: Phase,
) -> Result<(HostRecord, BTreeMap<String, Digest>), CheckpointError> {
    let record_path = entry.file(HOST_RECORD);
    let mut bytes = Vec::new();
    std::fs::File::open(&record_path)
        .and_then(|f| f.take(HOST_RECORD_MAX + 1).read_to_end(&mut bytes))
        .map_err(io(format!("cannot read {}", record_path.display())))?;
    let record = HostRecord::parse(&bytes).ok_or(CheckpointError::BadRecord)?;
    let now = host_files(host_aux, &skipped_places(phase))?;
    record.allows(&now)?;
    Ok((record, now))
}

/// The host's files at `rels` as an archive the guest unpacks, owned by root as a build
/// without the cache sends them (`send_dir`'s `--owner=root`), modes kept.
fn host_tar(host_aux: &Path, rels: &[&String]) -> Result<Vec<u8>, CheckpointError> {
    let mut tar = tar::Builder::new(Vec::new());
    for rel in rels {
        let path = host_aux.join(rel);
        let packing = || format!("cannot pack {rel}");
        let meta = std::fs::symlink_metadata(&path).map_err(io(packing()))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(packing()))?;
            tar.append_link(&mut header, rel, target).map_err(io(packing()))?;
        } else {
            let file = std::fs::File::open(&path).map_err(io(packing()))?;
            tar.append_data(&mut header, rel, file).map_err(io(packing()))?;
        }
    }
    tar.into_inner().map_err(io("cannot pack the host's hooks"))
}

impl<'a> KeyChain<'a> {
    pub fn new(build: &'a BuildInputs, vars: &BuildVars) -> KeyChain<'a> {
        KeyChain { build, env: env_digest(vars), last: None }
    }

    /// The key of the checkpoint after `phase`, chained on the one before, and its named
    /// inputs. `host_changes` is what extra-data.d wrote back into the image: after it runs,
    /// it decides whether what follows is reused.
    pub fn next(&mut self, phase: Phase, host_changes: Option<Digest>) -> Result<(Key, Inputs), CheckpointError> {
        let mut inputs = Inputs::default();
        let skipped = skipped_places(phase);
        let aux = &self.build.aux;
        let skip = |rel: &Path| AUX_RUNTIME.iter().any(|d| rel == Path::new(d)) || skipped.iter().any(|p| rel == p);
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckpointError::Key { path, source }
        };
        inputs.add("aux", tree_digest(aux, &skip).map_err(read_err(aux))?);
        let lib = &self.build.lib;
        inputs.add("lib", tree_digest(lib, &|_| false).map_err(read_err(lib))?);
        inputs.add("env", self.env);
        inputs.add("layout", self.build.layout);
        inputs.add("network", self.build.network.digest());
        inputs.add("tools", self.build.tools);
        if phase >= Phase::PreInstall {
            inputs.add("extra-packages", Digest::of(self.build.extra_packages.join("\n").as_bytes()));
        }
        if let Some(changes) = host_changes {
            inputs.add("extra-data", changes);
        }
        let key = Key::chain(self.last.as_ref(), phase.dir(), &inputs);
        self.last = Some(key);
        Ok((key, inputs))
    }
}

/// Every variable the scripts see, as the chroot's scripts see them (the other contexts differ
/// only in fixed paths), without the facts a build makes up.
fn env_digest(vars: &BuildVars) -> Digest {
    let mut env = vars.script_env(&Context::Chroot);
    for fact in FACT_VARIABLES.iter().copied().chain(vars.layer_vars.iter().map(|(k, _)| k.as_str())) {
        env.remove(fact);
    }
    Digest::of_fields(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    /// A build's inputs over an aux tree and library of its own.
    struct Fixture {
        dir: TempDir,
        build: BuildInputs,
        vars: BuildVars,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = TempDir::new("checkpoint-keys");
            let aux = dir.0.join("aux");
            for (rel, text) in [
                ("hooks/root.d/10-debootstrap", "debootstrap\n"),
                ("hooks/install.d/10-packages", "apt-get install\n"),
                ("hooks/finalise.d/90-tidy", "tidy\n"),
                ("hooks/cleanup.d/10-clean", "clean\n"),
                ("hooks/environment.d/10-os.bash", "export OS=debian\n"),
                ("hooks/package-installs.yaml", "vim:\n"),
                ("run-part.sh", "wrapper\n"),
                ("out/img.d/left-by-a-build", "x\n"),
                ("perm/home/cache", "x\n"),
            ] {
                std::fs::create_dir_all(aux.join(rel).parent().unwrap()).unwrap();
                std::fs::write(aux.join(rel), text).unwrap();
            }
            let lib = dir.0.join("lib");
            std::fs::create_dir_all(&lib).unwrap();
            std::fs::write(lib.join("common-functions"), "functions\n").unwrap();
            let build = BuildInputs {
                aux,
                lib,
                layout: Digest::of(b"256M ext4"),
                network: NetworkMode::On,
                extra_packages: vec![],
                tools: Digest::of(b"microdib 1"),
            };
            let vars = BuildVars {
                user_vars: vec![("DIB_RELEASE".into(), "bookworm".into())],
                arch: "amd64".into(),
                image_name: "img".into(),
                elements: vec!["base".into(), "debian".into()],
                root_uuid: "11111111-1111-1111-1111-111111111111".into(),
                ..BuildVars::default()
            };
            Fixture { dir, build, vars }
        }

        fn aux(&self, rel: &str) -> PathBuf {
            self.build.aux.join(rel)
        }

        /// Every checkpoint's key, extra-data.d having written back `host_changes`.
        fn keys_with(&self, host_changes: &str) -> Vec<Key> {
            let mut chain = KeyChain::new(&self.build, &self.vars);
            let changes = Digest::of(host_changes.as_bytes());
            CHECKPOINTED.iter().map(|&p| chain.next(p, (p == Phase::ExtraData).then_some(changes)).unwrap().0).collect()
        }

        fn keys(&self) -> Vec<Key> {
            self.keys_with("")
        }
    }

    /// How many leading checkpoints two key lists share (what a rebuild may reuse).
    fn kept(before: &[Key], after: &[Key]) -> usize {
        before.iter().zip(after).take_while(|(a, b)| a == b).count()
    }

    fn phase_index(p: Phase) -> usize {
        CHECKPOINTED.iter().position(|c| *c == p).unwrap()
    }

    #[test]
    fn the_same_inputs_give_the_same_keys_whatever_a_build_made_up() {
        let f = Fixture::new();
        let before = f.keys();
        assert_eq!(before.len(), CHECKPOINTED.len());
        let mut again = Fixture::new();
        // Another build: another file system UUID, another workspace, its own runtime files.
        again.vars.root_uuid = "22222222-2222-2222-2222-222222222222".into();
        std::fs::write(again.aux("out/img.d/left-by-a-build"), "y\n").unwrap();
        std::fs::write(again.aux("perm/home/cache"), "y\n").unwrap();
        assert_ne!(f.dir.0, again.dir.0);
        assert_eq!(again.keys(), before);
        // Every checkpoint has its own key.
        let distinct: std::collections::BTreeSet<_> = before.iter().collect();
        assert_eq!(distinct.len(), before.len());
    }

    #[test]
    fn the_devices_a_build_was_given_are_facts_not_inputs() {
        let f = Fixture::new();
        let before = f.keys();
        let mut again = Fixture::new();
        again.vars.block_device = "/dev/loop0p1".into();
        again.vars.layer_vars = vec![("IMAGE_BLOCK_DEVICE".into(), "/dev/mapper/loop0p1".into())];
        assert_eq!(again.keys(), before);
    }

    #[test]
    fn a_changed_script_invalidates_its_phase_and_what_follows_only() {
        for (rel, first_invalid) in [
            ("hooks/root.d/10-debootstrap", Some(Phase::Root)),
            ("hooks/install.d/10-packages", Some(Phase::Install)),
            // Later than every checkpoint: a finalise.d or cleanup.d edit reuses all of them.
            ("hooks/finalise.d/90-tidy", None),
            ("hooks/cleanup.d/10-clean", None),
        ] {
            let f = Fixture::new();
            let before = f.keys();
            std::fs::write(f.aux(rel), "changed\n").unwrap();
            let expected = first_invalid.map_or(CHECKPOINTED.len(), phase_index);
            assert_eq!(kept(&before, &f.keys()), expected, "{rel}");
        }
    }

    #[test]
    fn a_script_added_to_a_phase_invalidates_from_that_phase() {
        let f = Fixture::new();
        let before = f.keys();
        std::fs::create_dir_all(f.aux("hooks/post-install.d")).unwrap();
        std::fs::write(f.aux("hooks/post-install.d/50-new"), "new\n").unwrap();
        assert_eq!(kept(&before, &f.keys()), phase_index(Phase::PostInstall));
    }

    /// Something changed between two builds.
    type Change = dyn Fn(&mut Fixture);

    #[test]
    fn what_every_phase_can_read_invalidates_everything() {
        let changes: [(&str, &Change); 12] = [
            ("a static file of an element", &|f| {
                std::fs::write(f.aux("hooks/package-installs.yaml"), "emacs:\n").unwrap()
            }),
            ("environment.d", &|f| std::fs::write(f.aux("hooks/environment.d/10-os.bash"), "export OS=x\n").unwrap()),
            ("the wrapper", &|f| std::fs::write(f.aux("run-part.sh"), "other\n").unwrap()),
            ("the library", &|f| std::fs::write(f.build.lib.join("common-functions"), "other\n").unwrap()),
            ("a carried variable", &|f| f.vars.user_vars[0].1 = "trixie".into()),
            ("an added variable", &|f| f.vars.user_vars.push(("DIB_NEW".into(), "1".into()))),
            ("the element list", &|f| f.vars.elements.push("vm".into())),
            ("the architecture", &|f| f.vars.arch = "arm64".into()),
            ("a layout option", &|f| f.build.layout = Digest::of(b"512M ext4")),
            ("the network", &|f| f.build.network = NetworkMode::Off),
            ("the host's loopback", &|f| f.build.network = NetworkMode::WithHostLoopback),
            ("microdib, the kernel, agent or appliance", &|f| f.build.tools = Digest::of(b"microdib 2")),
        ];
        for (what, change) in changes {
            let mut f = Fixture::new();
            let before = f.keys();
            change(&mut f);
            assert_eq!(kept(&before, &f.keys()), 0, "{what}");
        }
    }

    #[test]
    fn extra_packages_invalidate_from_pre_install_d() {
        let mut f = Fixture::new();
        let before = f.keys();
        // The list, and the installer the aux tree gets with it.
        f.build.extra_packages = vec!["less".into()];
        std::fs::write(f.aux("extra-packages"), "less").unwrap();
        std::fs::write(f.aux("install-packages.sh"), "installer\n").unwrap();
        assert_eq!(kept(&before, &f.keys()), phase_index(Phase::PreInstall));
    }

    #[test]
    fn what_extra_data_d_wrote_back_decides_what_follows_it() {
        let f = Fixture::new();
        let before = f.keys_with("etc/motd: hello");
        assert_eq!(f.keys_with("etc/motd: hello"), before, "unchanged host input, all reused");
        assert_eq!(kept(&before, &f.keys_with("etc/motd: changed")), phase_index(Phase::ExtraData));
    }

    #[test]
    fn a_miss_can_name_what_changed() {
        let f = Fixture::new();
        let mut chain = KeyChain::new(&f.build, &f.vars);
        let (_, before) = chain.next(Phase::Root, None).unwrap();
        std::fs::write(f.aux("hooks/root.d/10-debootstrap"), "changed\n").unwrap();
        let mut chain = KeyChain::new(&f.build, &f.vars);
        let (_, after) = chain.next(Phase::Root, None).unwrap();
        assert_eq!(after.changed_from(&before), ["aux"]);
    }

    mod taking {
        use super::super::*;
        use crate::cache::{Inputs, Limits, Store};
        use crate::guest::fake::{FakeFile, FakeVm, Op};
        use crate::guest::paths;
        use crate::testing::TempDir;
        use std::time::Duration;

        /// A build at the root.d checkpoint: the host's aux tree and the guest's copy of it (as
        /// the host sent it, plus what the build did), a disk, a store.
        struct Setup {
            dir: TempDir,
            store: Store,
            vm: FakeVm,
            disk: PathBuf,
            host_aux: PathBuf,
        }

        const HOST_FILES: [(&str, &str); 4] = [
            ("hooks/install.d/10-x", "x\n"),
            ("hooks/finalise.d/50-edit-me", "old\n"),
            ("hooks/finalise.d/60-gone-later", "gone\n"),
            ("hooks/finalise.d/70-changed-by-root-d", "host's\n"),
        ];

        fn setup() -> Setup {
            let dir = TempDir::new("checkpoint-take");
            let limits = Limits { max_bytes: 1 << 30, max_age: Duration::from_secs(3600) };
            let store = Store::open(&dir.0.join("phases"), limits).unwrap();
            let host_aux = dir.0.join("aux");
            let vm = FakeVm::new();
            for (rel, text) in HOST_FILES {
                host_file(&host_aux, rel, text);
                guest_file(&vm, rel, text);
            }
            // What the build did by then: NAME.d, the helper drive, a finalise.d script a root.d
            // script added, one it changed.
            guest_file(&vm, "out/img.d/manifest", "m\n");
            guest_file(&vm, "perm/home/cache", "big\n");
            guest_file(&vm, "hooks/finalise.d/80-added-by-root-d", "added\n");
            guest_file(&vm, "hooks/finalise.d/70-changed-by-root-d", "changed by root.d\n");
            let disk = dir.0.join("target.raw");
            let f = std::fs::File::create(&disk).unwrap();
            f.set_len(8 << 20).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, b"the root file system", 1 << 20).unwrap();
            Setup { dir, store, vm, disk, host_aux }
        }

        fn host_file(aux: &Path, rel: &str, text: &str) {
            std::fs::create_dir_all(aux.join(rel).parent().unwrap()).unwrap();
            std::fs::write(aux.join(rel), text).unwrap();
        }

        fn guest_file(vm: &FakeVm, rel: &str, text: &str) {
            // As the host's: written with the default umask.
            vm.0.borrow_mut().tree.insert(paths::aux(rel), FakeFile { data: text.as_bytes().to_vec(), mode: 0o644 });
        }

        fn guest_text(vm: &FakeVm, rel: &str) -> Option<String> {
            vm.file(&paths::aux(rel)).map(|f| String::from_utf8(f.data).unwrap())
        }

        /// The checkpoint after root.d, taken with no inputs or facts.
        fn taken_after_root_d(s: &Setup) -> Entry {
            take(&mut *s.vm.guest(), &s.store, &take_root_d(s, &s.disk, &Inputs::default(), &[])).unwrap()
        }

        fn take_root_d<'a>(
            s: &'a Setup,
            disk: &'a Path,
            inputs: &'a Inputs,
            facts: &'a [(String, String)],
        ) -> Take<'a> {
            Take {
                key: Key::chain(None, "root.d", inputs),
                parent: None,
                phase: Phase::Root,
                elements: &[],
                inputs,
                facts,
                host_aux: &s.host_aux,
                disk,
                aux_max: 1 << 20,
            }
        }

        fn scripts_run(vm: &FakeVm) -> Vec<String> {
            vm.ops()
                .into_iter()
                .filter_map(|op| match op {
                    Op::Script { name, args } if name == "checkpoint.sh" => Some(args[0].clone()),
                    Op::SendTree { root } => Some(format!("tar of {root}")),
                    _ => None,
                })
                .collect()
        }

        #[test]
        fn a_checkpoint_holds_the_disk_and_the_aux_tree_without_the_helper_drive() {
            let s = setup();
            let inputs = Inputs::default();
            let facts = [("root-uuid".to_owned(), "0000-1111".to_owned())];
            let entry = take(&mut *s.vm.guest(), &s.store, &take_root_d(&s, &s.disk, &inputs, &facts)).unwrap();
            assert_eq!(std::fs::read(entry.file("disk")).unwrap(), std::fs::read(&s.disk).unwrap());
            assert_eq!(entry.manifest.facts, facts);
            assert_eq!(entry.manifest.phase, "root.d");
            let listing = std::process::Command::new("tar").arg("-tf").arg(entry.file("aux.tar")).output().unwrap();
            let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
                .lines()
                .map(|l| l.trim_start_matches("./").to_owned())
                .collect();
            assert!(names.contains(&"hooks/install.d/10-x".to_owned()), "{names:?}");
            assert!(names.contains(&"out/img.d/manifest".to_owned()), "{names:?}");
            assert!(!names.iter().any(|n| n.contains("perm/home")), "the helper drive is in the checkpoint: {names:?}");
            // The disk is copied between the freeze and the thaw.
            assert_eq!(scripts_run(&s.vm), [format!("tar of {AUX}"), "sums".into(), "freeze".into(), "thaw".into()]);
        }

        #[test]
        fn a_failed_copy_still_thaws_the_guest_and_stores_nothing() {
            let s = setup();
            let inputs = Inputs::default();
            let missing = s.dir.0.join("no-such-disk");
            let err = take(&mut *s.vm.guest(), &s.store, &take_root_d(&s, &missing, &inputs, &[])).unwrap_err();
            assert!(err.to_string().contains("no-such-disk"), "{err}");
            assert_eq!(scripts_run(&s.vm).last().map(String::as_str), Some("thaw"));
            assert!(s.store.list().is_empty());
        }

        #[test]
        fn an_aux_tree_over_its_bound_is_refused_before_the_guest_is_frozen() {
            let s = setup();
            s.vm.0
                .borrow_mut()
                .tree
                .insert(paths::aux("hooks/huge"), FakeFile { data: vec![7; 64 << 10], mode: 0o644 });
            let inputs = Inputs::default();
            let t = Take { aux_max: 32 << 10, ..take_root_d(&s, &s.disk, &inputs, &[]) };
            assert!(matches!(take(&mut *s.vm.guest(), &s.store, &t), Err(CheckpointError::AuxTooLarge(_))));
            assert!(!scripts_run(&s.vm).contains(&"freeze".to_owned()));
            assert!(s.store.list().is_empty());
        }

        #[test]
        fn a_restore_brings_back_the_disk_and_the_build_and_takes_the_hosts_later_scripts() {
            let s = setup();
            let entry = taken_after_root_d(&s);
            let taken = std::fs::read(&s.disk).unwrap();
            // The next build: a finalise.d script edited, another gone, a new one; a fresh VM
            // that has the host's aux tree as sent and a new disk.
            host_file(&s.host_aux, "hooks/finalise.d/50-edit-me", "new\n");
            std::fs::remove_file(s.host_aux.join("hooks/finalise.d/60-gone-later")).unwrap();
            host_file(&s.host_aux, "hooks/finalise.d/90-new", "new script\n");
            let vm = FakeVm::new();
            std::fs::write(&s.disk, vec![9u8; 8 << 20]).unwrap();

            restore_disk(&entry, &s.disk).unwrap();
            assert!(std::fs::read(&s.disk).unwrap() == taken, "the disk is not the checkpoint's");
            restore_aux(&mut *vm.guest(), &entry, &s.host_aux, Phase::Root).unwrap();
            for (rel, want) in [
                ("hooks/install.d/10-x", Some("x\n")),
                ("out/img.d/manifest", Some("m\n")),
                // The host's current later scripts, not the checkpoint's.
                ("hooks/finalise.d/50-edit-me", Some("new\n")),
                ("hooks/finalise.d/60-gone-later", None),
                ("hooks/finalise.d/90-new", Some("new script\n")),
                // What the build did to them stays.
                ("hooks/finalise.d/80-added-by-root-d", Some("added\n")),
                ("hooks/finalise.d/70-changed-by-root-d", Some("changed by root.d\n")),
            ] {
                assert_eq!(guest_text(&vm, rel).as_deref(), want, "{rel}");
            }
        }

        #[test]
        fn a_later_script_the_build_changed_and_the_host_changed_since_restores_nothing() {
            let s = setup();
            let entry = taken_after_root_d(&s);
            host_file(&s.host_aux, "hooks/finalise.d/70-changed-by-root-d", "host's, edited\n");
            let vm = FakeVm::new();
            let refused = restore_aux(&mut *vm.guest(), &entry, &s.host_aux, Phase::Root);
            assert!(
                matches!(&refused, Err(CheckpointError::ChangedSinceTaken(p)) if p.ends_with("70-changed-by-root-d")),
                "{refused:?}"
            );
            assert!(vm.ops().is_empty(), "the guest was touched: {:?}", vm.ops());
        }

        #[test]
        fn sums_that_do_not_match_the_hosts_pin_the_files() {
            let s = setup();
            // Every sum wrong, or missing: every host file counts as changed by the build.
            s.vm.answer(&crate::guest::scripts::CHECKPOINT, |args| match args[0] {
                "sums" => Ok(format!("644 {} hooks/finalise.d/50-edit-me\0", "0".repeat(64))),
                _ => Ok(String::new()),
            });
            let entry = taken_after_root_d(&s);
            host_file(&s.host_aux, "hooks/finalise.d/50-edit-me", "new\n");
            let refused = restore_aux(&mut *FakeVm::new().guest(), &entry, &s.host_aux, Phase::Root);
            assert!(matches!(refused, Err(CheckpointError::ChangedSinceTaken(_))), "{refused:?}");
        }

        #[test]
        fn the_host_record_reads_back_what_was_written_and_nothing_else() {
            let mut r = HostRecord::default();
            r.provided.insert("hooks/finalise.d/with space".into(), Digest::of(b"a"));
            r.pinned.insert("hooks/finalise.d/new\nline".into(), Digest::of(b"b"));
            assert_eq!(HostRecord::parse(&r.to_bytes()), Some(r));
            let d = Digest::of(b"x").hex();
            let climbing = format!("provided\0{d}\0../x\0");
            let absolute = format!("added\0{d}\0/etc/passwd\0");
            for bad in [
                &b"provided\0zz\0x\0"[..],
                b"other\0",
                b"provided\0",
                b"\xff\0",
                climbing.as_bytes(),
                absolute.as_bytes(),
            ] {
                assert_eq!(HostRecord::parse(bad), None, "{bad:?}");
            }
        }

        #[test]
        fn a_failed_thaw_is_the_one_failure_that_ends_the_build() {
            let s = setup();
            s.vm.before_each(|op| match op {
                Op::Script { name, args } if name == "checkpoint.sh" && args[0] == "thaw" => {
                    Some(crate::guest::fake::lost_vm())
                }
                _ => None,
            });
            let inputs = Inputs::default();
            let err = take(&mut *s.vm.guest(), &s.store, &take_root_d(&s, &s.disk, &inputs, &[])).unwrap_err();
            assert!(matches!(err, CheckpointError::StillFrozen(_)), "{err:?}");
            assert!(s.store.list().is_empty());
        }

        #[test]
        fn a_host_file_where_the_build_had_made_its_own_refuses_the_restore_before_anything_is_touched() {
            let s = setup();
            let entry = taken_after_root_d(&s);
            host_file(&s.host_aux, "hooks/finalise.d/80-added-by-root-d", "the host's own\n");
            let refused = restorable(&entry, &s.host_aux, Phase::Root);
            assert!(
                matches!(&refused, Err(CheckpointError::AddedByBoth(p)) if p.ends_with("80-added-by-root-d")),
                "{:?}",
                refused.err()
            );
            let vm = FakeVm::new();
            assert!(restore_aux(&mut *vm.guest(), &entry, &s.host_aux, Phase::Root).is_err());
            assert!(vm.ops().is_empty(), "the guest was touched: {:?}", vm.ops());
        }

        #[test]
        fn a_changed_mode_counts_as_a_change() {
            use std::os::unix::fs::PermissionsExt;
            let s = setup();
            let entry = taken_after_root_d(&s);
            // Left alone by the build: the host's new mode is restored.
            let edit_me = s.host_aux.join("hooks/finalise.d/50-edit-me");
            std::fs::set_permissions(&edit_me, std::fs::Permissions::from_mode(0o755)).unwrap();
            let vm = FakeVm::new();
            restore_aux(&mut *vm.guest(), &entry, &s.host_aux, Phase::Root).unwrap();
            assert_eq!(vm.file(&paths::aux("hooks/finalise.d/50-edit-me")).map(|f| f.mode & 0o777), Some(0o755));
            // Changed by the build: a new mode on the host refuses the restore.
            let changed = s.host_aux.join("hooks/finalise.d/70-changed-by-root-d");
            std::fs::set_permissions(&changed, std::fs::Permissions::from_mode(0o700)).unwrap();
            assert!(matches!(restorable(&entry, &s.host_aux, Phase::Root), Err(CheckpointError::ChangedSinceTaken(_))));
        }

        #[test]
        fn the_hosts_files_go_to_the_guest_owned_by_root_with_their_modes() {
            use std::os::unix::fs::PermissionsExt;
            let s = setup();
            let script = s.host_aux.join("hooks/install.d/10-x");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
            let rel = "hooks/install.d/10-x".to_owned();
            let tar = host_tar(&s.host_aux, &[&rel]).unwrap();
            let mut archive = tar::Archive::new(&tar[..]);
            let entry = archive.entries().unwrap().next().unwrap().unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap() & 0o777), (0, 0, 0o750));
        }

        #[test]
        fn a_lookup_says_hit_or_why_not() {
            let s = setup();
            let inputs = Inputs::default();
            let t = take_root_d(&s, &s.disk, &inputs, &[]);
            let never = consult(&s.store, &t.key, None, Phase::Root, &inputs).unwrap();
            assert!(matches!(never, Consulted::Miss(MissReason::NeverBuilt)), "{never:?}");
            take(&mut *s.vm.guest(), &s.store, &t).unwrap();
            let hit = consult(&s.store, &t.key, None, Phase::Root, &inputs).unwrap();
            let Consulted::Hit(entry) = hit else { panic!("{hit:?}") };
            let line = reused_line(Phase::Root, &entry, std::time::SystemTime::now() + Duration::from_secs(7200));
            assert_eq!(
                line,
                format!("root.d: reused from the cache ({}, built 2 h ago; --no-cache rebuilds)", t.key.0.short())
            );
            drop(entry);
            // Another environment: the miss names it.
            let mut other = Inputs::default();
            other.add("env", Digest::of(b"DIB_RELEASE=trixie"));
            let key = Key::chain(None, "root.d", &other);
            let miss = consult(&s.store, &key, None, Phase::Root, &other).unwrap();
            assert!(matches!(&miss, Consulted::Miss(MissReason::Changed(c)) if c == &["env"]), "{miss:?}");
            let Consulted::Miss(reason) = miss else { unreachable!() };
            assert_eq!(reason.to_string(), "changed since the last build: env");
        }

        #[test]
        fn ages_read_as_people_say_them() {
            for (secs, text) in
                [(0, "0 s"), (89, "89 s"), (90, "2 min"), (3000, "50 min"), (7200, "2 h"), (200_000, "2 days")]
            {
                assert_eq!(human_age(Duration::from_secs(secs)), text, "{secs}");
            }
        }
    }

    #[test]
    fn the_layout_is_every_disk_option_but_the_name() {
        let image = crate::plan::ImagePlan {
            name: "out/img".into(),
            size: 256 << 20,
            fs_type: "ext4".into(),
            root_label: "cloudimg-rootfs".into(),
            mkfs_options: None,
        };
        let d = layout_digest(&image);
        assert_eq!(layout_digest(&crate::plan::ImagePlan { name: "elsewhere/img".into(), ..image.clone() }), d);
        let changed = [
            crate::plan::ImagePlan { size: 512 << 20, ..image.clone() },
            crate::plan::ImagePlan { fs_type: "xfs".into(), ..image.clone() },
            crate::plan::ImagePlan { root_label: "root".into(), ..image.clone() },
            crate::plan::ImagePlan { mkfs_options: Some("-m 0".into()), ..image.clone() },
        ];
        for other in changed {
            assert_ne!(layout_digest(&other), d, "{other:?}");
        }
    }

    #[test]
    fn the_tools_are_their_contents_and_the_appliances_name() {
        let t = TempDir::new("tools");
        let file = |name: &str, text: &str| {
            let p = t.0.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        };
        let (microdib, kernel, agent) = (file("microdib", "m"), file("vmlinuz", "k"), file("agent", "a"));
        let root = file("appliance/0123abcd/root.squashfs", "r");
        let tools = Tools { microdib: &microdib, kernel: &kernel, agent: &agent, appliance_root: &root };
        let d = tools.digest().unwrap();
        for path in [&microdib, &kernel, &agent] {
            let before = std::fs::read(path).unwrap();
            std::fs::write(path, "changed").unwrap();
            assert_ne!(tools.digest().unwrap(), d, "{}", path.display());
            std::fs::write(path, before).unwrap();
        }
        let other = file("appliance/4567ef01/root.squashfs", "r");
        assert_ne!(Tools { appliance_root: &other, ..tools }.digest().unwrap(), d);
        assert_eq!(tools.digest().unwrap(), d);
        let missing = t.0.join("missing");
        assert!(matches!(Tools { kernel: &missing, ..tools }.digest(), Err(CheckpointError::Key { .. })));
    }
}
