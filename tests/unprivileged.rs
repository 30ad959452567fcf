//! microdib's first promise, no root needed: a user with no sudo rights, who cannot read root's
//! files (sudo's 0440 `/etc/sudoers`, among the appliance packages' files), builds the example
//! with microdib installed as the Debian package lays it out (Cargo.toml's
//! `[package.metadata.deb]`, staged as `dpkg -i` would), with no source tree and no MICRODIB_*
//! variables; /etc stays as it was. CI runs as root: the user is then a system user made for
//! the test (tests/common/unprivileged.rs).

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;

use common::unprivileged::{Builder, Stage, USER_PATH};
use common::*;

/// The mode, owner and contents of a host file, to see that the build left it alone.
fn state(path: &str) -> (u32, u32, i64, Vec<u8>) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.mode(), m.uid(), m.mtime(), std::fs::read(path).unwrap())
}

#[test]
fn a_user_without_sudo_rights_builds_the_example_from_the_installed_package() {
    // The case that failed: a root-only file among the appliance's. hack/setup installs sudo.
    let sudoers = std::fs::metadata("/etc/sudoers").expect("/etc/sudoers: install sudo (hack/setup does)");
    assert_eq!(sudoers.mode() & 0o7777, 0o440, "/etc/sudoers is not Debian's 0440");
    let before = (state("/etc/sudoers"), state("/etc/sudoers.d/README"));
    let who = Builder::get();
    let stage = Stage::new("unprivileged");
    let prefix = stage.path("installed");
    installed::stage(&prefix);
    let (home, out) = (stage.path("home"), stage.path("out"));
    who.own_dir(&home);
    who.own_dir(&out);
    let lib = prefix.join("usr/lib/microdib");
    let ex = prefix.join("usr/share/microdib/examples");

    // A user's shell with the package installed: its bin on PATH, nothing else of microdib's.
    let path = format!("{}:{USER_PATH}", prefix.join("usr/bin").display());
    let env = [("HOME", home.as_os_str()), ("PATH", OsStr::new(&path))];
    let microdib = prefix.join("usr/bin/microdib");
    let version = shown(who.command(&env, &microdib).arg("--version").output().expect("setpriv: util-linux"));
    let version = text(&version.stdout);
    for line in [
        format!("guest kernel: {}/vmlinuz (installed)", lib.display()),
        format!("guest agent: {}/microdib-agent (installed)", lib.display()),
    ] {
        assert!(version.lines().any(|l| l == line), "no {line:?} in --version:\n{version}");
    }

    let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
    let mut build = who.command(&env, &microdib);
    build.arg("-B").arg(ex.join("lib")).arg("-p").arg(ex.join("elements"));
    build.args(["--skip-base", "--name"]).arg(out.join("hello-boot"));
    build.args(["--size", "256M", "--formats", "qcow2", "--checksum", "--debug", "1", "hello-boot"]);
    let built = shown(build.current_dir(&stage.dir).output().unwrap());
    let said = format!("{}{}", text(&built.stdout), text(&built.stderr));
    assert!(built.status.success(), "the build failed:\n{said}");
    assert_eq!((state("/etc/sudoers"), state("/etc/sudoers.d/README")), before, "/etc/sudoers* changed");

    let has = |line: String| assert!(said.lines().any(|l| l == line), "no {line:?} in:\n{said}");
    has(format!("guest kernel: {}/vmlinuz (installed)", lib.display()));
    has(format!("guest agent: {}/microdib-agent (installed)", lib.display()));
    // The user's own appliance, built now in its new home's cache; it left out what this user
    // cannot read, and said so at --debug.
    let appliance = format!("appliance: {}/", home.join(".cache/microdib/appliance").display());
    let built_now = said.lines().any(|l| l.starts_with(&appliance) && l.ends_with(" (built now)"));
    assert!(built_now, "no {appliance}... (built now) line in:\n{said}");
    for f in ["/etc/sudoers", "/etc/sudoers.d/README"] {
        has(format!("appliance: left out {f} (this user cannot read it)"));
    }
    // The example's own kernel defaults to the installed one, found through PATH.
    assert!(said.lines().any(|l| l.starts_with("hello-boot: kernel ")), "extra-data.d did not run:\n{said}");

    // The image is the builder's, a valid qcow2, and its checksum file holds its sha256.
    let image = out.join("hello-boot.qcow2");
    let meta = std::fs::metadata(&image).unwrap_or_else(|e| panic!("{}: {e}\n{said}", image.display()));
    assert_eq!(meta.uid(), who.uid, "the image's owner");
    tool("qemu-img", &["check", "-q", image.to_str().unwrap()]);
    let bytes = std::fs::read(&image).unwrap();
    use sha2::Digest;
    let sha256: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let sum_file = std::fs::read_to_string(out.join("hello-boot.qcow2.sha256")).unwrap();
    assert!(sum_file.starts_with(&sha256), "{sum_file} is not the image's sha256 {sha256}");
    assert!(out.join("hello-boot.qcow2.md5").is_file());
}
