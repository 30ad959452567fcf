//! Whole builds against a fake build VM (`guest::fake`): the command line is parsed and
//! planned, and the engine runs every host step for real (elements, environment, extra-data.d,
//! outputs, clean-up), while the guest's side is scripted. Engine behaviour that needs no
//! kernel is tested here in milliseconds; `tests/` keeps what needs a real VM.

mod cache;
mod failures;
mod phases;
mod reporting;
mod signals;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::cache::Digest;
use crate::cli::{self, Action};
use crate::engine::build_vm::{VmRequest, VmStarter};
use crate::engine::run::run_with;
use crate::engine::signals::Stop;
use crate::engine::EngineError;
use crate::guest::fake::FakeVm;
use crate::guest::BuildGuest;
use crate::plan::BuildPlan;
use crate::report::{Reporter, ReporterOptions};
use crate::testing::TempDir;

/// A build to run against a fake VM: its own elements, output directory and options.
pub struct FakeBuild {
    pub vm: FakeVm,
    /// The build's stop switch: raise on it as a stop signal would.
    pub stop: Stop,
    pub dir: TempDir,
    options: Vec<String>,
    elements: Vec<String>,
    /// What the fake VM says runs the phases (the kernel, agent and appliance of a real one).
    pub tools: String,
}

/// Starts the fake VM for the engine: a new boot of it on the build's disks.
struct FakeStarter {
    vm: FakeVm,
    tools: String,
    workspace: Option<PathBuf>,
}

impl VmStarter for FakeStarter {
    fn prepare(&mut self, _: &BuildPlan, _: &Reporter) -> Result<(), EngineError> {
        Ok(())
    }

    fn tools(&mut self, _: &BuildPlan, _: &Reporter) -> Result<Digest, EngineError> {
        Ok(Digest::of(self.tools.as_bytes()))
    }

    fn start(&mut self, req: &VmRequest<'_>) -> Result<Box<dyn BuildGuest>, EngineError> {
        self.workspace = Some(req.workspace.dir.clone());
        self.vm.boot(req.scratch.unwrap_or(&req.outputs.target_disk));
        Ok(self.vm.guest())
    }
}

/// How a build ended and what it said.
pub struct Outcome {
    pub result: Result<(), EngineError>,
    /// What microdib's process would exit with.
    pub exit_status: u8,
    /// stdout and stderr, interleaved.
    pub said: String,
    /// The --machine-readable records.
    pub records: Vec<String>,
    /// The build's host workspace, once the VM was started.
    pub workspace: Option<PathBuf>,
}

impl Outcome {
    pub fn error(&self) -> String {
        match &self.result {
            Ok(()) => panic!("the build succeeded:\n{}", self.said),
            Err(e) => e.to_string(),
        }
    }

    pub fn succeeded(&self) {
        if let Err(e) = &self.result {
            panic!("the build failed: {e}\n{}", self.said);
        }
        assert_eq!(self.exit_status, 0, "{}", self.said);
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A shared buffer the machine-readable channel writes to.
#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Records {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl FakeBuild {
    /// A build of the fixtures' small OS element (`fake-os`, with `--skip-base`) and `elements`.
    pub fn new(elements: &[&str]) -> FakeBuild {
        FakeBuild::on_os("fake-os", elements)
    }

    /// A build of the OS element `os` (from the fixtures or this build's own) and `elements`.
    pub fn on_os(os: &str, elements: &[&str]) -> FakeBuild {
        let dir = TempDir::new("fake-build");
        std::fs::create_dir_all(dir.0.join("elements")).unwrap();
        std::fs::create_dir_all(dir.0.join("out")).unwrap();
        let mut all = vec![os.to_owned()];
        all.extend(elements.iter().map(|e| (*e).to_owned()));
        FakeBuild {
            vm: FakeVm::new(),
            stop: Stop::new(),
            dir,
            options: Vec::new(),
            elements: all,
            tools: "fake kernel, agent and appliance".into(),
        }
    }

    /// Adds an element of this build's own with `files` (`phase.d/NN-name` files are made
    /// executable: the fake VM decides what they do).
    pub fn element(&self, name: &str, files: &[(&str, &str)]) -> &Self {
        for (rel, text) in files {
            let path = self.dir.0.join("elements").join(name).join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            if rel.contains(".d/") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        self
    }

    /// The build's options are `args` from now on.
    pub fn options(&mut self, args: &[&str]) -> &mut Self {
        self.options.clear();
        self.option(args)
    }

    pub fn option(&mut self, args: &[&str]) -> &mut Self {
        self.options.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The build's phase cache (its own unless `--cache-dir` says otherwise).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.0.join("phases")
    }

    /// The image's name: outputs are `NAME.FORMAT`.
    pub fn name(&self) -> PathBuf {
        self.dir.0.join("out/img")
    }

    /// What the output directory holds after the build, sorted.
    pub fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.0.join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Runs the build as microdib would, with `--machine-readable` records captured.
    pub fn run(&self) -> Outcome {
        self.run_with(&ReporterOptions::default())
    }

    pub fn run_with(&self, reporting: &ReporterOptions) -> Outcome {
        let fx = fixtures();
        let mut args: Vec<String> = vec![
            "-B".into(),
            fx.join("lib").display().to_string(),
            "-p".into(),
            fx.join("elements").display().to_string(),
            "-p".into(),
            self.dir.0.join("elements").display().to_string(),
            "--skip-base".into(),
            "--name".into(),
            self.name().display().to_string(),
            "--size".into(),
            "64M".into(),
            "--formats".into(),
            "raw".into(),
            "--image-cache".into(),
            self.dir.0.join("cache").display().to_string(),
            "--cache-dir".into(),
            self.cache_dir().display().to_string(),
        ];
        args.extend(self.options.iter().cloned());
        args.extend(self.elements.iter().cloned());
        let c = match cli::parse(&args) {
            Ok(Action::Run(c)) => c,
            Ok(_) => panic!("not a build: {args:?}"),
            Err(e) => panic!("the command line is refused: {e:?}"),
        };
        let plan = cli::plan::plan(&c).unwrap_or_else(|e| panic!("cannot plan: {e}"));
        let records = Records::default();
        let (reporter, transcript) = Reporter::capturing("microdib", reporting, Some(Box::new(records.clone())));
        let mut starter = FakeStarter { vm: self.vm.clone(), tools: self.tools.clone(), workspace: None };
        let result = run_with(&plan, &reporter, &self.stop, &mut starter);
        let workspace = starter.workspace;
        let exit_status = cli::outcome::conclude(&reporter, &result);
        let records = String::from_utf8_lossy(&records.0.lock().unwrap()).lines().map(String::from).collect();
        Outcome { result, exit_status, said: transcript.text(), records, workspace }
    }
}
