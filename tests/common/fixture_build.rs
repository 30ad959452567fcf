//! One microdib build as a test describes it (`FixtureBuild`), and what it left (`BuildResult`):
//! its status and output, the output files, the image read with debugfs and dumpe2fs, and the
//! processes that outlived it. Each build has its own temporary directory.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::unprivileged::{Builder, StagedMicrodib};
use super::{accel_kvm_wrapper, fixtures, microdib_env, run_where, text, BuildVm};

/// A build of fixture elements: `-B tests/fixtures/lib -p tests/fixtures/elements`, the image
/// `img` in the build's `out/`, a 256M disk, the image cache and the phase cache in the build's
/// directory.
pub struct FixtureBuild {
    vm: BuildVm,
    dir: tempfile::TempDir,
    lib: PathBuf,
    element_dirs: Vec<PathBuf>,
    name: String,
    options: Vec<String>,
    elements: Vec<String>,
    env: Vec<(String, String)>,
    signal: Option<(String, String)>,
    user: Option<AsUser>,
}

/// microdib run as another user: who, its staged copy, and its whole environment but TMPDIR.
struct AsUser {
    builder: Builder,
    microdib: PathBuf,
    env: Vec<(String, OsString)>,
}

impl FixtureBuild {
    pub fn new(elements: &[&str]) -> FixtureBuild {
        FixtureBuild::in_dir(Path::new(env!("CARGO_TARGET_TMPDIR")), elements)
    }

    /// A build whose microdib runs as `staged`'s builder, from the staged copies (the fixtures'
    /// library and elements too); tests/common/run-build stays the tests' user. The build's
    /// directory is in /tmp, where the builder can reach it, and becomes the builder's when the
    /// build starts.
    pub fn as_user(staged: &StagedMicrodib, elements: &[&str]) -> FixtureBuild {
        let mut build = FixtureBuild::in_dir(Path::new("/tmp"), elements);
        build.lib = staged.lib.clone();
        build.element_dirs = vec![staged.elements.clone()];
        build.user = Some(AsUser {
            builder: staged.builder,
            microdib: staged.microdib.clone(),
            env: staged.env(&build.path("home")),
        });
        build
    }

    fn in_dir(parent: &Path, elements: &[&str]) -> FixtureBuild {
        let dir = tempfile::Builder::new()
            .prefix("microdib-build-")
            .tempdir_in(parent)
            .expect("cannot make the build's directory");
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        FixtureBuild::with_dir(dir, elements)
    }

    fn with_dir(dir: tempfile::TempDir, elements: &[&str]) -> FixtureBuild {
        FixtureBuild {
            vm: BuildVm::Auto,
            dir,
            lib: fixtures().join("lib"),
            element_dirs: vec![fixtures().join("elements")],
            name: "img".into(),
            options: Vec::new(),
            elements: elements.iter().map(|e| (*e).to_owned()).collect(),
            env: Vec::new(),
            signal: None,
            user: None,
        }
    }

    pub fn on(mut self, vm: BuildVm) -> Self {
        self.vm = vm;
        self
    }

    /// The diskimage-builder library (`-B`), instead of the fixtures' own.
    pub fn lib(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lib = dir.into();
        self
    }

    /// Another elements directory (`-p`), after those already given.
    pub fn element_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.element_dirs.push(dir.into());
        self
    }

    /// Only these elements directories (`-p`), in this order.
    pub fn element_dirs(mut self, dirs: &[PathBuf]) -> Self {
        self.element_dirs = dirs.to_vec();
        self
    }

    /// An element of this build's own, with `files` (relative path, text); scripts in a
    /// `phase.d/` are made executable.
    pub fn element(mut self, name: &str, files: &[(&str, &str)]) -> Self {
        let own = self.path("elements");
        for (rel, body) in files {
            let path = own.join(name).join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
            if rel.contains(".d/") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        if !self.element_dirs.contains(&own) {
            self.element_dirs.push(own);
        }
        self
    }

    /// The image's name in `out/` (outputs are `out/NAME.FORMAT`); `img` unless given.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    pub fn options(mut self, args: &[&str]) -> Self {
        self.options.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// A program microdib finds first on its PATH: a shell script with `body`, for host tools
    /// the test plays itself (`docker`).
    pub fn stand_in(self, program: &str, body: &str) -> Self {
        let bin = self.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        stand_in_script(&bin, program, body);
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        self.env("PATH", &path)
    }

    /// Sends `signal` (`TERM`, `KILL`) to microdib once its stdout holds `text`.
    pub fn signal_when(mut self, signal: &str, text: &str) -> Self {
        self.signal = Some((signal.into(), text.into()));
        self
    }

    /// A shell command run beside the build, where it runs (nested too), and stopped after it:
    /// a server the build's scripts reach on the host's loopback.
    pub fn alongside(self, command: &str) -> Self {
        self.env("RUN_BUILD_ALONGSIDE", command)
    }

    /// A path in the build's directory (helper drives, stand-ins, files scripts write).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec!["-B".to_owned(), self.lib.display().to_string()];
        for d in &self.element_dirs {
            a.extend(["-p".to_owned(), d.display().to_string()]);
        }
        a.extend(["--name".to_owned(), self.path("out").join(&self.name).display().to_string()]);
        a.extend(["--image-cache".to_owned(), self.path("cache").display().to_string()]);
        if !self.options.iter().any(|o| o == "--size") {
            a.extend(["--size".to_owned(), "256M".to_owned()]);
        }
        // A phase cache of the build's own: no build reuses another test's checkpoints. Nested,
        // the build's directory is a 9p share, where each checkpoint would copy the whole disk
        // (no SEEK_DATA): builds there go without, but for the cache's own tests.
        if !self.options.iter().any(|o| o == "--cache-dir" || o == "--no-cache") {
            match self.vm {
                BuildVm::Auto => a.extend(["--cache-dir".to_owned(), self.path("phases").display().to_string()]),
                BuildVm::OurKvm => a.push("--no-cache".to_owned()),
            }
        }
        a.extend(self.options.iter().cloned());
        a.extend(self.elements.iter().cloned());
        a
    }

    /// Runs the build: here in its turn, or nested for `BuildVm::OurKvm` where KVM cannot run
    /// the guest.
    pub fn run(self) -> BuildResult {
        let mut argv: Vec<OsString> =
            vec![super::workspace().join("tests/common/run-build").into(), self.dir.path().into()];
        if let Some((signal, text)) = &self.signal {
            argv.extend([signal.into(), text.into()]);
        }
        argv.push("--".into());
        let env = match &self.user {
            None => {
                argv.push(match self.vm {
                    BuildVm::Auto => PathBuf::from(env!("CARGO_BIN_EXE_microdib")).into(),
                    BuildVm::OurKvm => accel_kvm_wrapper().into(),
                });
                let mut env = microdib_env();
                env.extend(self.env.iter().cloned());
                env
            }
            Some(user) => {
                assert_eq!(self.vm, BuildVm::Auto, "a build as another user runs here, not nested");
                std::fs::create_dir_all(self.path("home")).unwrap();
                user.builder.take(self.dir.path());
                // run-build's TMPDIR where it runs the build here.
                let tmp = self.path("tmp");
                let mut vars: Vec<(&str, &OsStr)> = user.env.iter().map(|(k, v)| (k.as_str(), v.as_os_str())).collect();
                vars.push(("TMPDIR", tmp.as_os_str()));
                vars.extend(self.env.iter().map(|(k, v)| (k.as_str(), OsStr::new(v))));
                argv.extend(user.builder.argv(&vars, &user.microdib));
                self.env.clone()
            }
        };
        argv.extend(self.args().into_iter().map(OsString::from));
        eprintln!("--- build: {}", self.args().join(" "));
        for attempt in 1.. {
            let out = run_where(self.vm, &argv, &env);
            let stderr = std::fs::read_to_string(self.path("stderr")).unwrap_or_default();
            // Nested, the emulated SVM sometimes resets a guest under heavy I/O (run_where_kvm_works
            // repeats a run whose machine died): such a build runs once more, saying so; nothing
            // else is retried.
            let fault = stderr.contains("guest triple-faulted");
            if self.vm == BuildVm::OurKvm && fault && attempt < 2 {
                eprintln!("--- the emulated KVM host reset the guest; building again");
                continue;
            }
            assert!(out.status.success(), "tests/common/run-build failed:\n{}", text(&out.stderr));
            return BuildResult::read(self.dir, self.name);
        }
        unreachable!()
    }
}

/// Writes an executable shell script `program` into `dir`.
pub fn stand_in_script(dir: &Path, program: &str, body: &str) -> PathBuf {
    let path = dir.join(program);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// What a build left: its status and output, its files, its image and its processes.
pub struct BuildResult {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    dir: tempfile::TempDir,
    name: String,
    report: BTreeMap<String, String>,
}

impl BuildResult {
    /// A build again in this one's directory: the same paths, so the same command line, as a
    /// user's rebuild has (its elements and options given anew).
    pub fn rebuild(self, elements: &[&str]) -> FixtureBuild {
        FixtureBuild::with_dir(self.dir, elements)
    }

    fn read(dir: tempfile::TempDir, name: String) -> BuildResult {
        let read = |f: &str| std::fs::read(dir.path().join(f)).map(|b| text(&b)).unwrap_or_default();
        let report: BTreeMap<String, String> = read("report")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let status = report.get("status").and_then(|s| s.parse().ok()).expect("run-build reported no status");
        let (stdout, stderr) = (read("stdout"), read("stderr"));
        eprintln!("--- status {status}\n--- stdout\n{stdout}--- stderr\n{stderr}");
        BuildResult { status, stdout, stderr, dir, name, report }
    }

    /// Panics, showing the build's output, unless the build succeeded.
    pub fn succeeded(&self) -> &Self {
        assert_eq!(self.status, 0, "the build failed:\n{}{}", self.stdout, self.stderr);
        self
    }

    /// Panics unless stdout or stderr has exactly this line.
    pub fn said(&self, line: &str) -> &Self {
        let found = self.stdout.lines().chain(self.stderr.lines()).any(|l| l == line);
        assert!(found, "no line {line:?} in:\n--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    /// The first line of stdout or stderr that starts with `prefix`, without it.
    pub fn line_after(&self, prefix: &str) -> Option<&str> {
        self.stdout.lines().chain(self.stderr.lines()).find_map(|l| l.strip_prefix(prefix))
    }

    /// The progress messages, `[  12.3] text`, in order (their text only).
    pub fn progress(&self) -> Vec<&str> {
        self.stdout.lines().filter_map(|l| l.strip_prefix('[')?.split_once("] ").map(|(_, m)| m)).collect()
    }

    /// Panics unless the progress messages start with each of `wanted`, in this order.
    pub fn progress_in_order(&self, wanted: &[&str]) -> &Self {
        let progress = self.progress();
        let mut at = 0;
        for want in wanted {
            match progress[at..].iter().position(|m| m.starts_with(want)) {
                Some(i) => at += i + 1,
                None => panic!("message {want:?} missing or out of order in {progress:?}"),
            }
        }
        self
    }

    /// The output directory's files, sorted.
    pub fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// An output file: `output("img.raw")`.
    pub fn output(&self, file: &str) -> PathBuf {
        self.path("out").join(file)
    }

    /// A file element scripts left in NAME.d.
    pub fn named(&self, file: &str) -> String {
        let path = self.path("out").join(format!("{}.d", self.name)).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The environment the fixtures' dumper element saw in `phase` (NAME.d/PHASE.env).
    pub fn env_of(&self, phase: &str) -> BTreeMap<String, String> {
        self.named(&format!("{phase}.env"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The raw image's file system (NAME.raw, ext4).
    pub fn image(&self) -> Ext4 {
        Ext4::at(&self.output(&format!("{}.raw", self.name)))
    }

    pub fn image_file(&self, path: &str) -> Option<String> {
        self.image().file(path)
    }

    pub fn image_stat(&self, path: &str) -> Option<Stat> {
        self.image().stat(path)
    }

    /// A path in the build's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Seconds microdib ran.
    pub fn seconds(&self) -> u64 {
        self.report.get("seconds").and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
    }

    /// Seconds from the signal to microdib's exit.
    pub fn signalled_after(&self) -> Option<u64> {
        self.report.get("signalled-after").and_then(|s| s.parse().ok())
    }

    /// How many entries the build left in its TMPDIR (its workspace is one).
    pub fn tmp_left(&self) -> usize {
        self.report.get("tmp-left").and_then(|s| s.parse().ok()).unwrap_or(usize::MAX)
    }

    /// The processes when the signal was sent, and microdib's pid among them.
    pub fn processes_at_signal(&self) -> (Processes, u32) {
        let pid = self.report.get("microdib").and_then(|p| p.parse().ok()).expect("no microdib pid");
        (Processes::read(&self.path("ps")), pid)
    }

    /// How many environment variables each of microdib's children had when it was signalled.
    pub fn children_env_at_signal(&self) -> BTreeMap<u32, usize> {
        let list = std::fs::read_to_string(self.path("children-env")).unwrap_or_default();
        list.lines()
            .filter_map(|l| {
                let (pid, n) = l.split_once(' ')?;
                Some((pid.parse().ok()?, n.parse().ok()?))
            })
            .collect()
    }

    /// The processes still running after the build that belong to it: those naming its
    /// directories (qemu, scripts) and the qemu and passt its `--debug 1` lines name.
    pub fn processes_left(&self) -> Vec<String> {
        let dirs = [self.dir.path().display().to_string(), self.report.get("tmpdir").cloned().unwrap_or_default()];
        let runner: u32 = self.report.get("runner").and_then(|p| p.parse().ok()).unwrap_or(0);
        let announced: Vec<u32> = self
            .stderr
            .lines()
            .filter_map(|l| l.split_once("passt (pid ").or_else(|| l.split_once("(qemu pid ")))
            .filter_map(|(_, rest)| rest.split(')').next()?.parse().ok())
            .collect();
        Processes::read(&self.path("ps-after"))
            .0
            .into_iter()
            .filter(|p| p.pid != runner && !p.has_exited())
            .filter(|p| announced.contains(&p.pid) || dirs.iter().any(|d| !d.is_empty() && p.args.contains(d.as_str())))
            .map(|p| format!("{} {}", p.pid, p.args))
            .collect()
    }

    /// The pids of passt that `--debug 1` announced.
    pub fn passt_pids(&self) -> Vec<u32> {
        self.stderr
            .lines()
            .filter_map(|l| l.split_once("network: passt (pid ")?.1.strip_suffix(')')?.parse().ok())
            .collect()
    }
}

/// A process list (`ps -eo pid=,ppid=,stat=,uid=,args=`).
pub struct Processes(pub Vec<Process>);

pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// ps's STAT: `Z` first for a process that has exited and waits to be reaped.
    pub state: String,
    pub uid: u32,
    pub args: String,
}

impl Process {
    /// A zombie has exited and holds nothing; once microdib is killed its children's reaper is
    /// pid 1, which may take its time.
    pub fn has_exited(&self) -> bool {
        self.state.starts_with('Z')
    }
}

impl Processes {
    fn read(path: &Path) -> Processes {
        let list = std::fs::read_to_string(path).unwrap_or_default();
        Processes(
            list.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let pid = f.next()?.parse().ok()?;
                    let ppid = f.next()?.parse().ok()?;
                    let state = f.next()?.to_owned();
                    let uid = f.next()?.parse().ok()?;
                    Some(Process { pid, ppid, state, uid, args: f.collect::<Vec<_>>().join(" ") })
                })
                .collect(),
        )
    }

    pub fn children(&self, pid: u32) -> Vec<&Process> {
        self.0.iter().filter(|p| p.ppid == pid).collect()
    }

    /// Every process below `pid`, at any depth.
    pub fn below(&self, pid: u32) -> Vec<&Process> {
        let mut found: Vec<&Process> = self.children(pid);
        let mut i = 0;
        while i < found.len() {
            found.extend(self.children(found[i].pid));
            i += 1;
        }
        found
    }
}

/// An ext4 file system in an image file, read with debugfs and dumpe2fs.
pub struct Ext4 {
    /// debugfs's device: a file, or `FILE?offset=BYTES` for a partition.
    device: String,
}

/// What debugfs's `stat` says of a file.
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    /// The permission bits, as debugfs prints them (`0644`).
    pub mode: String,
    pub uid: u32,
}

impl Ext4 {
    pub fn at(image: &Path) -> Ext4 {
        Ext4 { device: image.display().to_string() }
    }

    /// The file system of a partition starting `offset` bytes into `image`.
    pub fn partition(image: &Path, offset: u64) -> Ext4 {
        Ext4 { device: format!("{}?offset={offset}", image.display()) }
    }

    fn debugfs(&self, request: &str) -> String {
        let out = Command::new("debugfs").args(["-R", request, &self.device]).output().expect("cannot run debugfs");
        text(&out.stdout)
    }

    /// A file's contents; None if there is no such file.
    pub fn file(&self, path: &str) -> Option<String> {
        self.stat(path)?;
        Some(self.debugfs(&format!("cat {path}")))
    }

    pub fn stat(&self, path: &str) -> Option<Stat> {
        let said = self.debugfs(&format!("stat {path}"));
        let words: Vec<&str> = said.split_whitespace().collect();
        let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
        after("Inode:")?;
        Some(Stat {
            size: after("Size:")?.parse().ok()?,
            mode: after("Mode:")?.to_owned(),
            uid: after("User:")?.parse().ok()?,
        })
    }

    /// A directory's entries, without `.` and `..`.
    pub fn ls(&self, dir: &str) -> Vec<String> {
        // `ls -p` lines are /inode/mode/uid/gid/name/size/.
        self.debugfs(&format!("ls -p {dir}"))
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_owned))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect()
    }

    /// The superblock as dumpe2fs -h prints it: "Inode count" → "65536".
    pub fn superblock(&self) -> BTreeMap<String, String> {
        let out = Command::new("dumpe2fs").args(["-h", &self.device]).output().expect("cannot run dumpe2fs");
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }
}

/// A host tool's stdout; panics, showing its stderr, if it fails.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Whether a host tool succeeds (a comparison, a check).
pub fn tool_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).status().unwrap_or_else(|e| panic!("cannot run {program}: {e}")).success()
}

/// An empty ext4 file system in a new sparse file of `size` (helper drives).
pub fn make_ext4(path: &Path, size: &str) {
    tool("truncate", &["-s", size, path.to_str().unwrap()]);
    tool("mkfs.ext4", &["-q", "-F", path.to_str().unwrap()]);
}

/// An extended attribute of a file, as text ("" if it has none).
pub fn xattr(path: &str, name: &str) -> String {
    let read =
        "import os, sys\ntry: print(os.getxattr(sys.argv[1], sys.argv[2]).decode(), end='')\nexcept OSError: pass";
    tool("python3", &["-c", read, path, name])
}
