//! The qemu TCG backend as processes: what runs under microdib, what a qemu that cannot start
//! does to the build, and SIGKILL of microdib taking qemu and passt along.

mod common;
use common::*;

/// `--accel tcg` (what `auto` picks where KVM cannot run the guest): only the build VM is
/// emulated, by a qemu child of microdib (microvm, vhost-user vsock served by microdib itself)
/// next to passt; nothing below microdib is an emulated KVM host. qemu and passt run with an
/// empty environment, and when microdib is root, as another user (qemu in an empty root).
/// Killed outright, microdib cannot clean up: its qemu and passt die with it
/// (PR_SET_PDEATHSIG), within 2 s.
#[test]
fn accel_tcg_runs_only_the_build_vm_under_qemu_and_sigkill_takes_it_along() {
    let r = FixtureBuild::new(&["fixture-os", "sleeper"])
        .element("sleeper", &[("install.d/10-sleep", "#!/bin/bash\necho sleeping\nsleep 600\n")])
        .options(&["--accel", "tcg", "--formats", "tar", "--debug", "1"])
        .signal_when("KILL", "sleeping")
        .run();
    assert!(r.stderr.lines().any(|l| l.starts_with("build VM: tcg (qemu pid ")), "{}", r.stderr);
    let (ps, microdib) = r.processes_at_signal();
    let program =
        |args: &str| args.split(' ').next().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
    let mut children: Vec<String> = ps.children(microdib).iter().map(|p| program(&p.args)).collect();
    children.sort();
    assert!(
        children.len() == 2 && children[0].starts_with("passt") && children[1] == "qemu-system-x86_64",
        "{children:?}"
    );
    let qemu = ps.children(microdib).into_iter().find(|p| p.args.contains("qemu-system")).unwrap();
    let words: Vec<&str> = qemu.args.split(' ').collect();
    assert!(words.contains(&"tcg") || words.iter().any(|w| w.starts_with("tcg,")), "{}", qemu.args);
    for device in [
        "microvm,acpi=off",
        "vhost-user-vsock-device,chardev=vsock",
        "virtio-blk-device,drive=disk0,serial=microdib-target",
    ] {
        assert!(words.iter().any(|w| w.starts_with(device)), "no {device} in {}", qemu.args);
    }
    let env = r.children_env_at_signal();
    for child in ps.children(microdib) {
        assert_eq!(env.get(&child.pid), Some(&0), "{} has an environment", child.args);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(qemu.uid, 0, "qemu runs as root");
        r.said("microdib: the build VM: qemu runs as nobody (uid 65534) with an empty environment, in its seccomp sandbox, holding only the files it was handed");
        let passt = ps.children(microdib).into_iter().find(|p| program(&p.args).starts_with("passt")).unwrap();
        assert_ne!(passt.uid, 0, "passt runs as root");
    }
    let nested: Vec<&str> = ps
        .below(microdib)
        .iter()
        .map(|p| p.args.as_str())
        .filter(|a| a.contains("nested-run") || a.contains("svm"))
        .collect();
    assert!(nested.is_empty(), "an emulated KVM host below microdib: {nested:?}");
    assert_eq!(r.processes_left(), Vec::<String>::new(), "qemu or passt outlived a killed microdib");
}

/// A qemu that will not start (here: one that complains and exits) ends the build at once with
/// what qemu said, instead of waiting for an agent that never comes.
#[test]
fn a_qemu_that_fails_to_start_is_reported_at_once() {
    let build = FixtureBuild::new(&["fixture-os"]);
    let qemu = stand_in_script(
        &build.path(""),
        "qemu",
        "echo 'qemu-system-x86_64: -M microvm: this qemu is broken' >&2\nexit 1",
    );
    let r = build.env("MICRODIB_QEMU", qemu.to_str().unwrap()).options(&["--accel", "tcg", "--formats", "raw"]).run();
    assert_eq!(r.status, 1);
    assert!(r.seconds() < 30, "the failure took {} s", r.seconds());
    r.said("microdib: error: the build VM did not come up (qemu exited with status 1)");
    r.said("qemu-system-x86_64: -M microvm: this qemu is broken");
    assert_eq!(r.outputs(), Vec::<String>::new(), "partial outputs left");
}
