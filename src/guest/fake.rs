//! A scripted build VM for the engine's tests: an in-memory file tree (what the host sent in
//! and what element scripts wrote), a record of every operation, element scripts whose output,
//! status and effects a test decides, and failures, VM deaths and hostile answers on demand.
//! It knows the guest's mounts only as far as the engine relies on them: the aux tree seen in
//! the sysroot, root.d's tree moving up, NAME.d's listing. The root's file system is the
//! sysroot's part of the tree; a checkpoint's freeze writes it to the disk the root is on (a tar
//! stream at its start), and mounting that disk reads it back, so the host's copies of the disk
//! carry the image as a real one's do.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::rc::Rc;

use super::ops::{BuildGuest, Guest, GuestError, Streamed, TreeTar, VmEnded};
use super::paths::{self, AUX, IN_TARGET_AUX, SUBROOT, SYSROOT};
use super::scripts::{self, Script};
use super::ExitStatus;
use crate::vmbackend::VmError;

/// One operation the engine asked of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Script {
        name: String,
        args: Vec<String>,
    },
    Sh {
        line: String,
        args: Vec<String>,
    },
    /// An element script run through the logging wrapper.
    Element {
        phase: String,
        script: String,
        env: BTreeMap<String, String>,
        chrooted: bool,
    },
    /// Any other streamed command (`--extra-packages`' install-packages).
    Stream {
        argv: Vec<String>,
        chrooted: bool,
    },
    Append {
        path: String,
        text: String,
    },
    ReceiveTar {
        dest: String,
    },
    SendTree {
        root: String,
    },
    Remove {
        paths: Vec<String>,
    },
    ShutDown,
}

impl Op {
    /// The element script's (phase, script), if this ran one.
    pub fn element(&self) -> Option<(&str, &str)> {
        match self {
            Op::Element { phase, script, .. } => Some((phase, script)),
            _ => None,
        }
    }
}

/// A file in the fake guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeFile {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// What an element script does when it runs.
pub struct Run<'a> {
    pub tree: &'a mut BTreeMap<String, FakeFile>,
    pub env: &'a BTreeMap<String, String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Run<'_> {
    /// Writes a file at `path` under the script's TARGET_ROOT (the image, or root.d's tree; in
    /// the chroot, where TARGET_ROOT is empty, `/` is the image).
    pub fn write_in_target(&mut self, path: &str, data: &[u8]) {
        let root = self.env.get("TARGET_ROOT").filter(|r| !r.is_empty()).cloned().unwrap_or_else(|| SYSROOT.to_owned());
        self.tree.insert(format!("{root}{path}"), FakeFile { data: data.to_vec(), mode: 0o644 });
    }

    pub fn say(&mut self, text: &str) {
        self.stdout.extend_from_slice(text.as_bytes());
    }
}

type Behaviour = Box<dyn FnMut(&mut Run<'_>) -> ExitStatus>;
type Answer = Box<dyn FnMut(&[&str]) -> Result<String, GuestError>>;
type Hook = Box<dyn FnMut(&Op) -> Option<GuestError>>;

/// The fake guest's state, shared between the test and the engine's `Box<dyn BuildGuest>`.
#[derive(Default)]
pub struct FakeState {
    pub tree: BTreeMap<String, FakeFile>,
    pub ops: Vec<Op>,
    behaviours: BTreeMap<(String, String), Behaviour>,
    hooks: Vec<Hook>,
    /// Answers of guest scripts given by the test instead of the fake's own, by script name.
    answers: BTreeMap<String, Answer>,
    /// The VM "ended by itself" (a crash): every operation from then on loses the VM.
    pub ended: Option<String>,
    /// The host file of the disk the root is built on.
    disk: Option<std::path::PathBuf>,
}

/// A handle on a fake build VM; `start` gives the engine one guest on it.
#[derive(Clone, Default)]
pub struct FakeVm(pub Rc<RefCell<FakeState>>);

impl FakeVm {
    pub fn new() -> FakeVm {
        FakeVm::default()
    }

    /// `phase/script`, when it runs, does `behaviour` (else: exit 0, no output).
    pub fn on_script(&self, phase: &str, script: &str, behaviour: impl FnMut(&mut Run<'_>) -> ExitStatus + 'static) {
        self.0.borrow_mut().behaviours.insert((phase.to_owned(), script.to_owned()), Box::new(behaviour));
    }

    /// The guest script `script` answers what `answer` says (a hostile guest's answers).
    pub fn answer(&self, script: &Script, answer: impl FnMut(&[&str]) -> Result<String, GuestError> + 'static) {
        self.0.borrow_mut().answers.insert(script.name.to_owned(), Box::new(answer));
    }

    /// Before each operation: `hook` may fail it (or change the fake's state, e.g. end the VM).
    pub fn before_each(&self, hook: impl FnMut(&Op) -> Option<GuestError> + 'static) {
        self.0.borrow_mut().hooks.push(Box::new(hook));
    }

    /// The VM ends by itself (`how`: a panic, a crash): every operation from now on loses it.
    pub fn crash(&self, how: &str) {
        self.0.borrow_mut().ended = Some(how.to_owned());
    }

    /// The guest the engine drives.
    pub fn guest(&self) -> Box<dyn BuildGuest> {
        Box::new(FakeGuest(self.clone()))
    }

    /// A new boot: nothing in memory, the root to be built on `disk`. What scripts do, the
    /// hooks and the answers stay.
    pub fn boot(&self, disk: &std::path::Path) {
        let mut st = self.0.borrow_mut();
        st.tree.clear();
        st.ops.clear();
        st.ended = None;
        st.disk = Some(disk.to_owned());
    }

    pub fn ops(&self) -> Vec<Op> {
        self.0.borrow().ops.clone()
    }

    /// The element scripts run, as `phase/script`, in order.
    pub fn elements_run(&self) -> Vec<String> {
        self.ops().iter().filter_map(Op::element).map(|(p, s)| format!("{p}/{s}")).collect()
    }

    /// The environment `phase/script` ran with.
    pub fn env_of(&self, phase: &str, script: &str) -> BTreeMap<String, String> {
        self.ops()
            .into_iter()
            .find_map(|op| match op {
                Op::Element { phase: p, script: s, env, .. } if p == phase && s == script => Some(env),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{phase}/{script} did not run"))
    }

    pub fn file(&self, path: &str) -> Option<FakeFile> {
        self.0.borrow().tree.get(path).cloned()
    }
}

struct FakeGuest(FakeVm);

impl FakeGuest {
    /// Records `op`; a hook's failure, or a lost VM, instead of doing it.
    fn begin(&self, op: Op) -> Result<(), GuestError> {
        let mut st = self.0 .0.borrow_mut();
        st.ops.push(op.clone());
        let mut hooks = std::mem::take(&mut st.hooks);
        drop(st);
        let failed = hooks.iter_mut().find_map(|h| h(&op));
        let mut st = self.0 .0.borrow_mut();
        hooks.append(&mut st.hooks);
        st.hooks = hooks;
        if let Some(e) = failed {
            return Err(e);
        }
        if st.ended.is_some() {
            return Err(lost_vm());
        }
        Ok(())
    }

    fn tree(&self) -> std::cell::RefMut<'_, BTreeMap<String, FakeFile>> {
        std::cell::RefMut::map(self.0 .0.borrow_mut(), |s| &mut s.tree)
    }
}

/// The error of an operation on a VM that has died.
pub fn lost_vm() -> GuestError {
    GuestError::Lost {
        during: String::new(),
        source: microdib_proto::ProtoError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
    }
}

/// Where `path` really is: the aux tree bound into the sysroot is the appliance's aux tree.
fn resolve(path: &str) -> String {
    let in_sysroot = format!("{SYSROOT}{IN_TARGET_AUX}");
    match path.strip_prefix(&in_sysroot) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{AUX}{rest}"),
        _ => path.to_owned(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The sysroot's files as a tar stream at the start of `disk` (what a frozen file system holds).
fn write_root(tree: &BTreeMap<String, FakeFile>, disk: &std::path::Path) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, file) in tree.iter().filter(|(k, _)| k.starts_with(&format!("{SYSROOT}/"))) {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.data.len() as u64);
        header.set_mode(file.mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, &path[SYSROOT.len() + 1..], &file.data[..])?;
    }
    let stream = builder.into_inner()?;
    let mut f = std::fs::OpenOptions::new().write(true).open(disk)?;
    std::io::Write::write_all(&mut f, &stream)
}

/// Mounting `disk`: the files `write_root` left there appear under the sysroot.
fn read_root(tree: &mut BTreeMap<String, FakeFile>, disk: &std::path::Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::fs::File::open(disk)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.to_string_lossy().into_owned();
        let mode = entry.header().mode()?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        tree.insert(format!("{SYSROOT}/{rel}"), FakeFile { data, mode });
    }
    Ok(())
}

/// The names directly under `dir` in `tree`, once each.
fn listing(tree: &BTreeMap<String, FakeFile>, dir: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let mut names: Vec<String> = tree
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .map(|rest| rest.split('/').next().unwrap_or_default().to_owned())
        .collect();
    names.dedup();
    names
}

impl Guest for FakeGuest {
    fn script(&mut self, script: &Script, args: &[&str]) -> Result<String, GuestError> {
        self.begin(Op::Script { name: script.name.to_owned(), args: strings(args) })?;
        let answer = self.0 .0.borrow_mut().answers.remove(script.name);
        if let Some(mut answer) = answer {
            let said = answer(args);
            self.0 .0.borrow_mut().answers.insert(script.name.to_owned(), answer);
            return said;
        }
        let disk = self.0 .0.borrow().disk.clone();
        let mut tree = self.tree();
        if script.name == scripts::LIST_SCRIPTS.name {
            let dir = paths::aux(&format!("hooks/{}", args.first().copied().unwrap_or_default()));
            let prefix = format!("{dir}/");
            let runnable = listing(&tree, &dir)
                .into_iter()
                .filter(|n| tree.get(&format!("{prefix}{n}")).is_some_and(|f| f.mode & 0o111 != 0));
            return Ok(runnable.map(|n| n + "\n").collect());
        }
        if script.name == scripts::CHECKPOINT.name && args.first() == Some(&"sums") {
            // checkpoint.sh's records for the regular files under each place.
            use sha2::Digest as _;
            let mut out = String::new();
            for place in &args[1..] {
                let prefix = paths::aux(place);
                for (path, file) in tree.iter().filter(|(p, _)| **p == prefix || p.starts_with(&format!("{prefix}/"))) {
                    let sum: String = sha2::Sha256::digest(&file.data).iter().map(|b| format!("{b:02x}")).collect();
                    out += &format!("{:o} {sum} {}\0", file.mode & 0o7777, &path[AUX.len() + 1..]);
                }
            }
            return Ok(out);
        }
        let state = args.get(2).copied();
        match (script.name, args.first().copied()) {
            // Unbooted (a test of the host's side alone), the fake has no disk of its own.
            (n, Some("freeze")) if n == scripts::CHECKPOINT.name => {
                if let Some(disk) = disk {
                    write_root(&tree, &disk).map_err(|e| GuestError::Host { what: "fake freeze".into(), source: e })?;
                }
            }
            (n, Some("release")) if n == scripts::CHECKPOINT.name => {
                tree.retain(|k, _| !k.starts_with(&format!("{SYSROOT}/")));
            }
            (n, _)
                if n == scripts::MOUNT_ROOT.name
                    || (n == scripts::BLOCK_LAYER_PREPARE.name && state == Some("restored")) =>
            {
                if let Some(disk) = disk {
                    read_root(&mut tree, &disk)
                        .map_err(|e| GuestError::Host { what: "fake mount".into(), source: e })?;
                }
            }
            _ => {}
        }
        if script.name == scripts::ROOT_D_FINISH.name {
            let moved: Vec<String> = tree.keys().filter(|k| k.starts_with(&format!("{SUBROOT}/"))).cloned().collect();
            for from in moved {
                if let Some(f) = tree.remove(&from) {
                    tree.insert(format!("{SYSROOT}{}", &from[SUBROOT.len()..]), f);
                }
            }
        }
        Ok(String::new())
    }

    fn sh(&mut self, line: &str, args: &[&str]) -> Result<String, GuestError> {
        self.begin(Op::Sh { line: line.to_owned(), args: strings(args) })?;
        let tree = self.tree();
        Ok(match line {
            l if l.starts_with("losetup --show") => "/dev/loop0\n".to_owned(),
            l if l.contains("ls -A") => listing(&tree, &resolve(args.first().copied().unwrap_or_default())).join("\n"),
            l if l.starts_with("df ") => "1048576\n".to_owned(),
            _ => String::new(),
        })
    }

    fn stream(&mut self, cmd: &Streamed<'_>, on_output: &mut dyn FnMut(bool, &[u8])) -> Result<ExitStatus, GuestError> {
        let chrooted = cmd.chroot.is_some();
        let is_element =
            cmd.argv.first().is_some_and(|a| a.ends_with("/run-and-log.sh")) && cmd.argv.get(2) != Some(&"-");
        if !is_element {
            self.begin(Op::Stream { argv: strings(cmd.argv), chrooted })?;
            return Ok(ExitStatus::Code(0));
        }
        // run-and-log.sh LOG PHASE HOOK_DIR SCRIPT NEW_WD DIE
        let phase = cmd.argv.get(2).copied().unwrap_or_default().to_owned();
        let script = cmd.argv.get(4).copied().unwrap_or_default().to_owned();
        let env: BTreeMap<String, String> = cmd.env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.begin(Op::Element { phase: phase.clone(), script: script.clone(), env: env.clone(), chrooted })?;
        let behaviour = self.0 .0.borrow_mut().behaviours.remove(&(phase.clone(), script.clone()));
        let Some(mut behaviour) = behaviour else { return Ok(ExitStatus::Code(0)) };
        let mut tree = std::mem::take(&mut self.0 .0.borrow_mut().tree);
        let mut run = Run { tree: &mut tree, env: &env, stdout: Vec::new(), stderr: Vec::new() };
        let status = behaviour(&mut run);
        let (stdout, stderr) = (std::mem::take(&mut run.stdout), std::mem::take(&mut run.stderr));
        let mut st = self.0 .0.borrow_mut();
        st.tree = tree;
        st.behaviours.insert((phase, script), behaviour);
        drop(st);
        if !stderr.is_empty() {
            on_output(true, &stderr);
        }
        if !stdout.is_empty() {
            on_output(false, &stdout);
        }
        Ok(status)
    }

    fn append(&mut self, path: &str, text: &[u8]) -> Result<(), GuestError> {
        self.begin(Op::Append { path: path.to_owned(), text: String::from_utf8_lossy(text).into_owned() })?;
        self.tree()
            .entry(resolve(path))
            .or_insert(FakeFile { data: Vec::new(), mode: 0o644 })
            .data
            .extend_from_slice(text);
        Ok(())
    }

    fn receive_tar(&mut self, dest: &str, input: &mut (dyn Read + Send)) -> Result<(), GuestError> {
        self.begin(Op::ReceiveTar { dest: dest.to_owned() })?;
        let host = |source| GuestError::Host { what: format!("tar -x -C {dest}"), source };
        let mut archive = tar::Archive::new(input);
        let dest = resolve(dest.trim_end_matches('/'));
        for entry in archive.entries().map_err(host)? {
            let mut entry = entry.map_err(host)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let rel = entry.path().map_err(host)?.to_string_lossy().trim_start_matches("./").to_owned();
            let mode = entry.header().mode().map_err(host)?;
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(host)?;
            self.tree().insert(format!("{dest}/{rel}"), FakeFile { data, mode });
        }
        Ok(())
    }

    fn send_tree(
        &mut self,
        tree: &TreeTar<'_>,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), GuestError> {
        self.begin(Op::SendTree { root: tree.root.to_owned() })?;
        let root = resolve(tree.root.trim_end_matches('/'));
        let excluded =
            |rel: &str| tree.excludes.iter().any(|e| format!("./{rel}").starts_with(e.trim_end_matches('*')));
        let host = |source| GuestError::Host { what: format!("cannot take the tar stream of {root}"), source };
        // The files under the root as tar sees them: the aux tree is bound into the sysroot.
        let mut files: BTreeMap<String, FakeFile> = BTreeMap::new();
        for (path, file) in self.tree().iter() {
            let seen = match path.strip_prefix(&format!("{AUX}/")) {
                Some(rest) if root == SYSROOT => format!("{}/{rest}", &IN_TARGET_AUX[1..]),
                _ => match path.strip_prefix(&format!("{root}/")) {
                    Some(rel) => rel.to_owned(),
                    None => continue,
                },
            };
            if !excluded(&seen) {
                files.insert(seen, file.clone());
            }
        }
        let mut dirs = std::collections::BTreeSet::new();
        for rel in files.keys() {
            let mut parent = std::path::Path::new(rel).parent();
            while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(dir.to_string_lossy().into_owned());
                parent = dir.parent();
            }
        }
        let mut builder = tar::Builder::new(Vec::new());
        for dir in &dirs {
            let mut header = tar::Header::new_gnu();
            header.set_size(0);
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut header, format!("./{dir}/"), &[][..]).map_err(host)?;
        }
        for (rel, file) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(file.data.len() as u64);
            header.set_mode(file.mode);
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, format!("./{rel}"), &file.data[..]).map_err(host)?;
        }
        let stream = builder.into_inner().map_err(host)?;
        for chunk in stream.chunks(64 * 1024) {
            sink(chunk).map_err(host)?;
        }
        // GNU tar pads the archive to whole 10 KiB records, after its end: a reader that stops
        // at the end has gone by then.
        std::thread::sleep(std::time::Duration::from_millis(50));
        sink(&vec![0; 10240 - stream.len() % 10240]).map_err(host)
    }

    fn remove(&mut self, paths: &[String]) -> Result<(), GuestError> {
        self.begin(Op::Remove { paths: paths.to_vec() })?;
        let mut tree = self.tree();
        for p in paths {
            let p = resolve(p);
            tree.retain(|k, _| k != &p && !k.starts_with(&format!("{p}/")));
        }
        Ok(())
    }
}

impl BuildGuest for FakeGuest {
    fn ended(&self) -> Option<VmEnded> {
        let how = self.0 .0.borrow().ended.clone()?;
        Some(VmEnded { how, console: "fake console\n".to_owned() })
    }

    fn shut_down(self: Box<Self>) -> Result<(), VmError> {
        self.0 .0.borrow_mut().ops.push(Op::ShutDown);
        Ok(())
    }
}
