//! The cargo-fuzz targets (fuzz, their own workspace, run with nightly by hack/fuzz) must
//! keep compiling against the VMM's API: an API change once left one unbuildable unnoticed.
//! Checked without libFuzzer's C++ runtime (the fuzz crate's default feature), which `cargo
//! fuzz` links and a type check does not need, in a target directory kept in microdib's cache
//! (as the kernel and the appliance are): the fuzz crate is its own workspace, so nothing of the
//! tests' own build serves it, and a check from nothing takes most of a minute on two cores (a
//! new checkout rechecks only the workspace's own crates).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn fuzz_targets_compile() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .args(["check", "--locked", "--quiet", "--bins", "--no-default-features", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .env("CARGO_TARGET_DIR", initramfs::cache_root().join("fuzz-check"))
        .output()
        .expect("cannot run cargo");
    assert!(out.status.success(), "the fuzz targets do not compile:\n{}", String::from_utf8_lossy(&out.stderr));
}
