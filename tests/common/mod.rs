//! Helpers shared by the end-to-end tests: the guest kernel and agent, the appliance, and
//! running commands where KVM works (natively, or inside hack/nested-run).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

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
    run_bash(Command::new("bash"), script, env)
}

/// Runs `script` with `cmd` (bash, or something that runs bash), `$VMM` and `env` set, from the
/// workspace; its output is shown (for failing tests) and returned.
fn run_bash(mut cmd: Command, script: &str, env: &[(&str, &str)]) -> Output {
    let out = cmd
        .current_dir(workspace())
        .env("VMM", env!("CARGO_BIN_EXE_microdib-vmm"))
        .envs(env.iter().copied())
        .args(["-c", script])
        .output()
        .expect("cannot run bash");
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
    let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
    for attempt in 1.. {
        let cmd = match native_kvm() {
            Ok(()) => Command::new("bash"),
            Err(_) => {
                let mut c = Command::new(workspace().join("hack/nested-run"));
                if let Some(m) = nested_memory_mib {
                    c.args(["--memory", &m.to_string()]);
                }
                c.args(["--timeout", &nested_timeout_s.to_string(), "--", "bash"]);
                c
            }
        };
        let out = run_bash(cmd, script, env);
        // Under nested emulation the emulated SVM sometimes resets a guest under sustained I/O, or
        // dies itself (hack/nested-run's 125), whichever VMM drives the guest (README, "Known
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
