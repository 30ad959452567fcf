//! Helpers shared by the end-to-end tests: the guest kernel and agent, the appliance, and
//! running commands where KVM works (natively, or inside hack/nested-run).
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

mod fixture_build;
#[allow(unused_imports)]
pub use fixture_build::*;
pub mod installed;
pub mod unprivileged;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The guest kernel, built (or found in the cache) by hack/build-kernel.
pub fn kernel() -> PathBuf {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| {
        if let Some(k) = std::env::var_os("MICRODIB_KERNEL") {
            return PathBuf::from(k);
        }
        let out = Command::new(workspace().join("hack/build-kernel")).output().expect("cannot run hack/build-kernel");
        assert!(out.status.success(), "hack/build-kernel failed:\n{}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// hack/nested-run, given the microdib-dev this test run built (so it runs no cargo of its own).
pub fn nested_run() -> Command {
    let mut c = Command::new(workspace().join("hack/nested-run"));
    c.env("MICRODIB_DEV", env!("CARGO_BIN_EXE_microdib-dev"));
    c
}

/// Whether microdib-vmm can run here directly; if not, the reason (printed by the tests).
pub fn native_kvm() -> Result<(), String> {
    vmm::KvmHost::open().map(|_| ()).map_err(|e| e.to_string())
}

/// Emulated machines (qemu TCG build VMs, hack/nested-run) run one at a time: several on a
/// 2-core host starve each other (and the guest timers inside them) far more than running them
/// in turn costs.
pub static EMULATED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs a bash script here (never nested): microdib in it picks its backend as a user's would,
/// which where KVM cannot run the guest is qemu TCG, so the script waits its turn.
pub fn run_emulated_here(script: &str, env: &[(&str, &str)]) -> Output {
    let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
    output_of(Command::new("bash").args(["-c", script]), env)
}

/// Runs `cmd` from the workspace with `$VMM` and `env` set; its output is shown (for failing
/// tests) and returned.
fn output_of(cmd: &mut Command, env: &[(&str, &str)]) -> Output {
    let out = cmd
        .current_dir(workspace())
        .env("VMM", env!("CARGO_BIN_EXE_microdib-vmm"))
        .envs(env.iter().copied())
        .output()
        .expect("cannot start the command");
    shown(out)
}

/// Prints a command's status and output (what a failing test shows) and returns them.
pub fn shown(out: Output) -> Output {
    eprintln!(
        "--- status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run_script_with_env(script: &str, env: &[(&str, &str)]) -> Output {
    run_script_nested_sized(script, env, None, 600)
}

/// Like `run_script_with_env`; when nested, the emulated machine gets `nested_memory_mib` (for
/// tests that keep their data in its /tmp, which is RAM) and `nested_timeout_s` to finish.
pub fn run_script_nested_sized(
    script: &str,
    env: &[(&str, &str)],
    nested_memory_mib: Option<u32>,
    nested_timeout_s: u32,
) -> Output {
    let nested = Nested { memory_mib: nested_memory_mib, timeout_s: nested_timeout_s };
    run_where_kvm_works(&["bash".as_ref(), "-c".as_ref(), script.as_ref()], env, nested)
}

/// What the emulated machine of hack/nested-run gets, where a command needs one.
#[derive(Debug, Clone, Copy)]
pub struct Nested {
    /// Its memory (default: hack/nested-run's); its /tmp is RAM.
    pub memory_mib: Option<u32>,
    /// How long the command may take in there.
    pub timeout_s: u32,
}

/// Runs `argv` from the workspace, with `$VMM` and `env` set, where microdib-vmm can run a
/// guest: here, or inside hack/nested-run (one emulated machine at a time).
pub fn run_where_kvm_works(argv: &[&OsStr], env: &[(&str, &str)], nested: Nested) -> Output {
    let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
    for attempt in 1.. {
        let mut cmd = match native_kvm() {
            Ok(()) => Command::new(argv[0]),
            Err(_) => {
                let mut c = nested_run();
                if let Some(m) = nested.memory_mib {
                    c.args(["--memory", &m.to_string()]);
                }
                c.args(["--timeout", &nested.timeout_s.to_string(), "--"]).arg(argv[0]);
                c
            }
        };
        let out = output_of(cmd.args(&argv[1..]), env);
        // Under nested emulation the emulated SVM sometimes resets a guest under sustained I/O, or
        // dies itself (hack/nested-run's 125), whichever VMM drives the guest (docs/history.md, "Known
        // problem"; qemu's guests fared worse). Such a run is repeated once, saying so. Nothing else
        // is retried, and a wrong result always fails.
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let platform_fault = out.status.code() == Some(125) || said.contains("guest triple-faulted");
        if native_kvm().is_err() && platform_fault && attempt < 2 {
            eprintln!("--- the emulated KVM host reset the guest or died under the test; running it again");
            continue;
        }
        return out;
    }
    unreachable!()
}

/// Runs `argv` from the workspace with `env` where a build on `vm` runs: here, in its turn where
/// builds are emulated; for `OurKvm`, where microdib-vmm can run a guest (nested on such hosts).
pub fn run_where(vm: BuildVm, argv: &[OsString], env: &[(String, String)]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    match vm {
        BuildVm::OurKvm => {
            let argv: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
            run_where_kvm_works(&argv, &env, Nested { memory_mib: None, timeout_s: 900 })
        }
        BuildVm::Auto => {
            let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
            output_of(Command::new(&argv[0]).args(&argv[1..]), &env)
        }
    }
}

/// The agent built for the guest: a static musl binary (its own target directory, so this
/// cargo does not wait on the one running the tests).
pub fn guest_agent() -> PathBuf {
    static A: OnceLock<PathBuf> = OnceLock::new();
    A.get_or_init(|| {
        // No emulated machine boots while this compiles: a busy host upsets its clock calibration.
        let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
        let target_dir = workspace().join("target/guest");
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args(["build", "--quiet", "--release", "-p", "microdib-agent", "--target", "x86_64-unknown-linux-musl"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .status()
            .expect("cannot run cargo");
        assert!(
            status.success(),
            "building the agent for x86_64-unknown-linux-musl failed (rustup target add x86_64-unknown-linux-musl)"
        );
        target_dir.join("x86_64-unknown-linux-musl/release/microdib-agent")
    })
    .clone()
}

/// The appliance (host packages in a squashfs, the agent as init), built or found in the cache.
pub fn appliance() -> initramfs::appliance::ApplianceFiles {
    static A: OnceLock<initramfs::appliance::ApplianceFiles> = OnceLock::new();
    A.get_or_init(|| {
        let cache = initramfs::appliance::default_cache_dir();
        initramfs::appliance::build_or_cached(&guest_agent(), &cache, |m| eprintln!("{m}"))
            .expect("appliance build failed")
    })
    .clone()
}

// --- builds of the fixture elements (tests/fixtures) ---

pub fn microdib(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microdib")).args(args).output().expect("cannot run microdib")
}

pub fn fixtures() -> PathBuf {
    workspace().join("tests/fixtures")
}

/// Where a build test's VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildVm {
    /// What a user of this host gets, `--accel auto`: our VMM where KVM can run the guest, else
    /// qemu TCG. The build runs here, natively.
    Auto,
    /// Our own VMM, `--accel kvm`: natively where KVM can run the guest, else inside
    /// hack/nested-run, so every change to vmm/ is still tested on real (nested) KVM.
    OurKvm,
}

/// What a bash script printed, run with `$MICRODIB` set (`microdib_env`), as a user's build
/// (`--accel auto`), in its turn. (tests/hostile_guest.rs; new tests use FixtureBuild.)
pub fn build_output(script: &str) -> String {
    let mut env = microdib_env();
    env.push(("MICRODIB".into(), env!("CARGO_BIN_EXE_microdib").into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    text(&run_emulated_here(script, &env).stdout)
}

/// microdib's environment in a build test: the test kernel and agent (the appliance built
/// first, on the host, where its cache is writable), microdib-dev for the tools tests take
/// from it, and the device watchdog's notes on stderr, for failures to show.
pub fn microdib_env() -> Vec<(String, String)> {
    let (kernel, agent) = (kernel(), guest_agent());
    let _ = appliance();
    let mut env = microdib_vars(&kernel, &agent);
    env.push(("MICRODIB_DEV".into(), env!("CARGO_BIN_EXE_microdib-dev").into()));
    env
}

/// The variables microdib itself reads in a build test: its guest kernel and agent, and the
/// log filter that shows the device watchdog's notes.
pub fn microdib_vars(kernel: &Path, agent: &Path) -> Vec<(String, String)> {
    vec![
        ("MICRODIB_KERNEL".into(), kernel.display().to_string()),
        ("MICRODIB_AGENT".into(), agent.display().to_string()),
        ("MICRODIB_LOG".into(), "vmm=info,warn".into()),
    ]
}

/// A `microdib` that adds `--accel kvm` (which never falls back to qemu: it fails where KVM
/// cannot run the guest): what `FixtureBuild` runs for `BuildVm::OurKvm`. Inside hack/nested-run
/// the build VM gets one vCPU (a script's own --smp comes later and wins): the emulated SVM
/// resets two-vCPU guests under heavy I/O far more often.
pub fn accel_kvm_wrapper() -> &'static PathBuf {
    static W: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        let wrapper = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("microdib-accel-kvm");
        let script = format!(
            "#!/bin/sh\nsmp=\n[ \"$MICRODIB_IN_NESTED\" = 1 ] && smp='--smp 1'\nexec '{}' --accel kvm $smp \"$@\"\n",
            env!("CARGO_BIN_EXE_microdib")
        );
        let tmp = wrapper.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, script).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &wrapper).unwrap();
        wrapper
    })
}

/// Two tests of `$build(vm)`, one per backend: `$auto` under `--accel auto` (qemu TCG where KVM
/// cannot run the guest), `$our_kvm` on our VMM (nested on such hosts).
#[macro_export]
macro_rules! on_each_backend {
    ($(#[$doc:meta])* $auto:ident, $our_kvm:ident => $build:ident) => {
        $(#[$doc])*
        #[test]
        fn $auto() {
            $build(BuildVm::Auto);
        }

        $(#[$doc])*
        #[test]
        fn $our_kvm() {
            $build(BuildVm::OurKvm);
        }
    };
}

/// The fixture library and elements directories, for build scripts.
pub fn fixture_dirs() -> (String, String) {
    (fixtures().join("lib").display().to_string(), fixtures().join("elements").display().to_string())
}

/// hack/dib-rootfs's three lines: the Debian root tarball, the diskimage-builder package
/// directory (from PyPI) and its virtualenv's python.
pub fn dib_rootfs() -> [String; 3] {
    let made = Command::new(workspace().join("hack/dib-rootfs")).output().expect("cannot run hack/dib-rootfs");
    assert!(made.status.success(), "hack/dib-rootfs failed:\n{}", text(&made.stderr));
    let made = text(&made.stdout);
    [0, 1, 2].map(|i| made.lines().nth(i).unwrap_or_default().to_owned())
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
