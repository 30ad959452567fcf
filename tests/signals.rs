//! Signals to microdib in the middle of a build: SIGTERM while a script runs in the build VM
//! and while an extra-data.d script runs on the host ends the build at once with virt-dib's
//! message and status, and leaves no outputs, processes or workspace behind. (SIGKILL:
//! tests/tcg.rs.)

mod common;
use common::*;

#[test]
fn sigterm_during_a_guest_script_stops_the_build_and_leaves_nothing() {
    let r = FixtureBuild::new(&["fixture-os", "sleeper"])
        .element("sleeper", &[("install.d/10-sleep", "#!/bin/bash\necho sleeping\nsleep 600\n")])
        .options(&["--formats", "raw,tar", "--debug", "1"])
        .signal_when("TERM", "sleeping")
        .run();
    assert_eq!(r.status, 1);
    r.said("microdib: Exiting on signal SIGTERM");
    assert_eq!(r.outputs(), Vec::<String>::new(), "partial outputs left after SIGTERM");
    assert_eq!(r.passt_pids().len(), 1, "no passt in the build");
    assert_eq!(r.processes_left(), Vec::<String>::new(), "processes of the stopped build still run");
    assert_eq!(r.tmp_left(), 0, "the build's workspace was left behind");
}

/// An extra-data.d script runs on the host as microdib's child: it must hear the SIGTERM too
/// (microdib's threads block it; children must not inherit that).
#[test]
fn sigterm_during_an_extra_data_script_stops_it_too() {
    // Named after its script, so that it is seen if it outlives the build.
    let sleeper = "#!/bin/bash\necho host sleeping\nexec -a \"$0 sleeping\" sleep 600\n";
    let r = FixtureBuild::new(&["fixture-os", "host-sleeper"])
        .element("host-sleeper", &[("extra-data.d/10-sleep", sleeper)])
        .options(&["--formats", "raw"])
        .signal_when("TERM", "host sleeping")
        .run();
    assert_eq!(r.status, 1);
    let after = r.signalled_after().unwrap();
    assert!(after < 60, "microdib ended {after} s after SIGTERM");
    assert_eq!(r.processes_left(), Vec::<String>::new(), "the host script outlived the build");
    assert_eq!(r.tmp_left(), 0, "the build's workspace was left behind");
}
