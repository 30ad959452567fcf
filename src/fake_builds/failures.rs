//! Builds that fail: what is said, what is left behind, and the status microdib exits with.

use super::FakeBuild;
use crate::engine::EngineError;
use crate::guest::fake::{lost_vm, Op, Run};
use crate::guest::ExitStatus;

#[test]
fn a_failing_script_stops_the_build_names_its_element_and_removes_the_outputs() {
    let build = FakeBuild::new(&["failer"]);
    build.element("failer", &[("install.d/20-fail", "#!/bin/sh\n"), ("finalise.d/50-after", "#!/bin/sh\n")]);
    build.vm.on_script("install.d", "20-fail", |run: &mut Run<'_>| {
        run.say("about to fail\n");
        ExitStatus::Code(7)
    });
    let out = build.run();
    assert!(out.error().starts_with("install.d/20-fail (element failer) failed: exit status 7"), "{}", out.error());
    assert!(out.said.contains("about to fail\n"), "{}", out.said);
    assert_eq!(out.exit_status, 1);
    assert!(out.said.contains("microdib: error: install.d/20-fail (element failer) failed"), "{}", out.said);
    assert!(!build.vm.elements_run().contains(&"finalise.d/50-after".to_owned()));
    assert_eq!(build.outputs(), Vec::<String>::new(), "outputs left after a failure");
    // What the image holds so far reaches the disk (for --no-delete-on-failure).
    assert!(build.vm.ops().iter().any(|op| matches!(op, Op::Script { name, .. } if name == "abandon.sh")));
}

#[test]
fn no_delete_on_failure_keeps_the_disk_of_a_failed_build() {
    let mut build = FakeBuild::new(&["failer"]);
    build.element("failer", &[("install.d/20-fail", "#!/bin/sh\n")]);
    build.vm.on_script("install.d", "20-fail", |_: &mut Run<'_>| ExitStatus::Code(1));
    build.option(&["--no-delete-on-failure"]);
    let out = build.run();
    assert_eq!(out.exit_status, 1, "{}", out.said);
    assert_eq!(build.outputs(), ["img.raw"]);
}

#[test]
fn a_failing_extra_data_script_is_microdibs_exit_status_as_in_virt_dib() {
    let build = FakeBuild::new(&["host-failer"]);
    build.element("host-failer", &[("extra-data.d/20-fail", "#!/bin/bash\necho host script fails\nexit 9\n")]);
    let out = build.run();
    assert!(matches!(out.result, Err(EngineError::Exit(9))), "{}", out.said);
    assert_eq!(out.exit_status, 9, "{}", out.said);
    assert!(!out.said.contains("error"), "a script's own status is passed on without a message:\n{}", out.said);
    assert!(out.said.contains("host script fails"), "{}", out.said);
    assert!(!build.vm.elements_run().iter().any(|s| s.starts_with("pre-install.d/")));
    assert_eq!(build.outputs(), Vec::<String>::new());
}

#[test]
fn a_build_vm_that_dies_is_reported_with_its_console_not_as_the_failed_step() {
    let build = FakeBuild::new(&["victim"]);
    build.element("victim", &[("install.d/10-crash", "#!/bin/sh\n")]);
    let state = build.vm.clone();
    build.vm.before_each(move |op| {
        if op.element() == Some(("install.d", "10-crash")) {
            state.crash("the guest kernel panicked");
            return Some(lost_vm());
        }
        None
    });
    let out = build.run();
    let error = out.error();
    assert!(error.starts_with("the build VM stopped: the guest kernel panicked"), "{error}");
    assert!(error.contains("fake console"), "{error}");
    assert_eq!(build.outputs(), Vec::<String>::new());
    assert!(!build.vm.ops().contains(&Op::ShutDown));
}

#[test]
fn two_devices_named_by_block_device_d_are_refused() {
    let build = FakeBuild::new(&["devices"]);
    build.element("devices", &[("block-device.d/10-two", "#!/bin/sh\n")]);
    build.vm.on_script("block-device.d", "10-two", |run: &mut Run<'_>| {
        run.say("IMAGE_BLOCK_DEVICE=/dev/loop1\nIMAGE_BLOCK_DEVICE=/dev/loop2\n");
        ExitStatus::Code(0)
    });
    let error = build.run().error();
    assert!(error.contains("‘IMAGE_BLOCK_DEVICE’ has more than one occurrency"), "{error}");
}

#[test]
fn a_block_device_d_answer_over_its_bound_is_refused_not_kept() {
    let build = FakeBuild::new(&["flood"]);
    build.element("flood", &[("block-device.d/10-flood", "#!/bin/sh\n")]);
    build.vm.on_script("block-device.d", "10-flood", |run: &mut Run<'_>| {
        run.stdout = vec![b'x'; crate::guest::capture::ANSWER_MAX + 1];
        ExitStatus::Code(0)
    });
    let error = build.run().error();
    assert!(error.contains("block-device.d/10-flood printed more than 4 MiB"), "{error}");
}

#[test]
fn a_failed_build_leaves_no_workspace_behind() {
    let build = FakeBuild::new(&["failer"]);
    build.element("failer", &[("install.d/20-fail", "#!/bin/sh\n")]);
    build.vm.on_script("install.d", "20-fail", |_: &mut Run<'_>| ExitStatus::Code(1));
    let out = build.run();
    assert!(out.result.is_err());
    let workspace = out.workspace.expect("the build VM was started");
    assert!(!workspace.exists(), "{} left behind", workspace.display());
}

#[test]
fn the_padding_after_named_dirs_archive_is_no_failure() {
    let build = FakeBuild::new(&["named"]);
    build.element("named", &[("cleanup.d/10-leave", "#!/bin/sh\n")]);
    build.vm.on_script("cleanup.d", "10-leave", |run: &mut Run<'_>| {
        let file = crate::guest::paths::aux("out/img.d/left.txt");
        run.tree.insert(file, crate::guest::fake::FakeFile { data: b"kept\n".to_vec(), mode: 0o644 });
        ExitStatus::Code(0)
    });
    build.run().succeeded();
    assert_eq!(std::fs::read(build.dir.0.join("out/img.d/left.txt")).unwrap(), b"kept\n");
}

#[test]
fn a_name_d_that_is_a_link_to_a_host_directory_fails_the_build_and_is_not_written_through() {
    let build = FakeBuild::new(&["named"]);
    build.element("named", &[("cleanup.d/10-leave", "#!/bin/sh\n")]);
    build.vm.on_script("cleanup.d", "10-leave", |run: &mut Run<'_>| {
        let file = crate::guest::paths::aux("out/img.d/authorized_keys");
        run.tree.insert(file, crate::guest::fake::FakeFile { data: b"pwned\n".to_vec(), mode: 0o644 });
        ExitStatus::Code(0)
    });
    let outside = build.dir.0.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, build.dir.0.join("out/img.d")).unwrap();
    let out = build.run();
    assert_eq!(out.exit_status, 1, "{}", out.said);
    assert!(out.said.contains("microdib: error: copying "), "{}", out.said);
    assert!(out.error().contains("img.d is not a directory"), "{}", out.error());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "written through the link");
}
