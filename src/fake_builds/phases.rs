//! The phases: which scripts run, in which order, where and with what environment.

use super::FakeBuild;
use crate::engine::phases::Phase;
use crate::guest::fake::Run;
use crate::guest::paths::{self, SYSROOT};
use crate::guest::ExitStatus;

const OK: ExitStatus = ExitStatus::Code(0);

/// The phases that run in the build VM (extra-data.d runs on the host), in their order.
fn guest_phases() -> Vec<&'static str> {
    Phase::ALL.iter().filter(|p| **p != Phase::ExtraData).map(|p| p.dir()).collect()
}

/// A build with an element that has a script `50-step` in every guest phase.
fn every_phase_build() -> FakeBuild {
    let build = FakeBuild::new(&["every"]);
    let files: Vec<(String, &str)> = guest_phases().iter().map(|p| (format!("{p}/50-step"), "#!/bin/sh\n")).collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    build.element("every", &files);
    build
}

#[test]
fn every_phase_runs_once_in_virt_dibs_order() {
    let build = every_phase_build();
    build.run().succeeded();
    let ran: Vec<String> = build.vm.elements_run().into_iter().filter(|s| s.ends_with("/50-step")).collect();
    let expected: Vec<String> = guest_phases().iter().map(|p| format!("{p}/50-step")).collect();
    assert_eq!(ran, expected);
    let fake_os = build.vm.elements_run().iter().position(|s| s == "root.d/10-fake-os");
    assert_eq!(fake_os, Some(1), "{:?}", build.vm.elements_run());
}

#[test]
fn scripts_run_in_diskimage_builders_order_without_non_executables_or_excluded_ones() {
    let mut build = FakeBuild::on_os("fixture-os", &["order"]);
    build.option(&["--exclude-script", "30-excluded"]);
    build.run().succeeded();
    let install: Vec<String> =
        build.vm.elements_run().into_iter().filter_map(|s| s.strip_prefix("install.d/").map(String::from)).collect();
    // diskimage-builder's order (digits first by value, then names); dotted names never run.
    assert_eq!(install, ["00-z", "foo", "5-b", "10-a"]);
}

#[test]
fn a_script_added_during_the_build_runs_in_its_later_phase() {
    let build = FakeBuild::new(&["adder"]);
    build.element("adder", &[("install.d/10-add", "#!/bin/sh\n")]);
    build.vm.on_script("install.d", "10-add", |run: &mut Run<'_>| {
        let added = paths::aux("hooks/finalise.d/90-added");
        run.tree.insert(added, crate::guest::fake::FakeFile { data: b"#!/bin/sh\n".to_vec(), mode: 0o755 });
        OK
    });
    build.run().succeeded();
    assert!(build.vm.elements_run().contains(&"finalise.d/90-added".to_owned()), "{:?}", build.vm.elements_run());
}

#[test]
fn chroot_phases_run_in_the_image_and_the_others_outside_it() {
    let build = every_phase_build();
    build.run().succeeded();
    let chrooted: Vec<(String, bool)> = build
        .vm
        .ops()
        .into_iter()
        .filter_map(|op| match op {
            crate::guest::fake::Op::Element { phase, script, chrooted, .. } if script == "50-step" => {
                Some((phase, chrooted))
            }
            _ => None,
        })
        .collect();
    for (phase, chrooted) in chrooted {
        let expected = matches!(phase.as_str(), "pre-install.d" | "install.d" | "post-install.d" | "finalise.d");
        assert_eq!(chrooted, expected, "{phase}");
        let env = build.vm.env_of(&phase, "50-step");
        let target = env.get("TARGET_ROOT").map(String::as_str);
        match (expected, phase.as_str()) {
            (true, _) => assert_eq!(target, Some(""), "{phase}"),
            (false, "root.d") => assert_eq!(target, Some(paths::SUBROOT), "{phase}"),
            (false, _) => assert_eq!(target, Some(SYSROOT), "{phase}"),
        }
    }
}

#[test]
fn envvar_reaches_every_script_and_host_variables_do_not() {
    let mut build = every_phase_build();
    build.option(&["--envvar", "FROM_USER=yes", "--envvar", "PATH"]);
    build.run().succeeded();
    for phase in guest_phases() {
        let env = build.vm.env_of(phase, "50-step");
        assert_eq!(env.get("FROM_USER").map(String::as_str), Some("yes"), "{phase}");
        assert_eq!(env.get("IMAGE_NAME").map(String::as_str), Some("img"), "{phase}");
        assert!(!env.contains_key("CARGO_MANIFEST_DIR"), "a host variable reached {phase}");
    }
}

#[test]
fn root_d_builds_the_tree_that_becomes_the_image() {
    let build = FakeBuild::new(&["writer"]);
    build.element("writer", &[("root.d/20-write", "#!/bin/sh\n")]);
    build.vm.on_script("root.d", "20-write", |run: &mut Run<'_>| {
        run.write_in_target("/etc/from-root-d", b"yes\n");
        OK
    });
    build.run().succeeded();
    let file = build.vm.file(&format!("{SYSROOT}/etc/from-root-d"));
    assert_eq!(file.map(|f| f.data), Some(b"yes\n".to_vec()));
}

#[test]
fn only_script_names_diskimage_builder_runs_are_taken_from_the_guests_listing() {
    let build = FakeBuild::new(&[]);
    build.vm.answer(&crate::guest::scripts::LIST_SCRIPTS, |args| {
        Ok(match args {
            ["finalise.d"] => "20-ok\n../../../bin/reboot\n$(reboot)\n10-ok\n.hidden\nwith space\n".to_owned(),
            _ => String::new(),
        })
    });
    build.run().succeeded();
    let finalise: Vec<String> =
        build.vm.elements_run().into_iter().filter_map(|s| s.strip_prefix("finalise.d/").map(String::from)).collect();
    assert_eq!(finalise, ["10-ok", "20-ok"]);
}

#[test]
fn no_final_image_runs_the_build_and_writes_no_image() {
    let build = FakeBuild::new(&["no-final-image"]);
    build.run().succeeded();
    assert!(build.vm.elements_run().contains(&"root.d/10-fake-os".to_owned()));
    assert_eq!(build.outputs(), Vec::<String>::new());
}

#[test]
fn processes_left_running_are_named_as_plain_words() {
    let build = FakeBuild::new(&[]);
    build
        .vm
        .answer(&crate::guest::scripts::STOP_LEFTOVERS, |_| Ok("12 sl\u{1b}[2Jeep\nnot a record\n7 daemon\n".into()));
    let out = build.run();
    out.succeeded();
    assert!(out.said.contains("microdib: root.d left sl[2Jeep (pid 12) running: killed"), "{}", out.said);
    assert!(out.said.contains("microdib: root.d left daemon (pid 7) running: killed"), "{}", out.said);
    assert!(!out.said.contains('\u{1b}') && !out.said.contains("not a record"), "{}", out.said);
}
