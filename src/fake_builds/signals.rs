//! A stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) during a build: it ends through the failure
//! path with virt-dib's status, and nothing of it is left (outputs, workspace, host processes).

use std::time::{Duration, Instant};

use super::FakeBuild;
use crate::engine::EngineError;
use crate::guest::fake::{Op, Run};
use crate::guest::ExitStatus;

#[test]
fn sigterm_during_a_guest_script_ends_the_build_and_leaves_no_outputs() {
    let build = FakeBuild::new(&["sleeper"]);
    build.element("sleeper", &[("install.d/10-sleep", "#!/bin/sh\n"), ("finalise.d/10-after", "#!/bin/sh\n")]);
    let stop = build.stop.clone();
    build.vm.on_script("install.d", "10-sleep", move |run: &mut Run<'_>| {
        run.say("sleeping\n");
        // The signal stops the VM: the script dies with it.
        stop.raise(libc::SIGTERM);
        ExitStatus::Signal(libc::SIGTERM)
    });
    let out = build.run();
    assert!(matches!(out.result, Err(EngineError::Signal("SIGTERM"))), "{}", out.said);
    assert_eq!(out.exit_status, 1);
    assert!(out.said.ends_with("microdib: Exiting on signal SIGTERM\n"), "{}", out.said);
    assert!(!build.vm.elements_run().contains(&"finalise.d/10-after".to_owned()));
    assert_eq!(build.outputs(), Vec::<String>::new(), "partial outputs left after SIGTERM");
    assert!(!out.workspace.expect("the VM was started").exists());
    // A stopped VM is neither cleaned up nor shut down: it is gone.
    let ops = build.vm.ops();
    assert!(!ops.iter().any(|op| matches!(op, Op::Script { name, .. } if name == "abandon.sh")));
    assert!(!ops.contains(&Op::ShutDown));
}

#[test]
fn a_signal_before_the_vm_starts_ends_the_build_at_once() {
    let build = FakeBuild::new(&[]);
    build.stop.raise(libc::SIGINT);
    let out = build.run();
    assert!(matches!(out.result, Err(EngineError::Signal("SIGINT"))), "{}", out.said);
    assert_eq!((out.exit_status, out.said.as_str()), (1, "microdib: Exiting on signal SIGINT\n"));
    assert!(out.workspace.is_none(), "the VM was started after the signal");
    assert!(build.vm.ops().is_empty());
}

#[test]
fn sigterm_during_an_extra_data_script_stops_the_host_script_at_once() {
    let build = FakeBuild::new(&["host-sleeper"]);
    let marker = build.dir.0.join("host-sleeper.pid");
    let script = format!("#!/bin/bash\necho $$ > {}\nexec sleep 600\n", marker.display());
    build.element("host-sleeper", &[("extra-data.d/10-sleep", &script)]);
    let stop = build.stop.clone();
    let watcher = {
        let marker = marker.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !marker.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.raise(libc::SIGTERM);
            Instant::now()
        })
    };
    let out = build.run();
    let raised = watcher.join().unwrap();
    assert!(matches!(out.result, Err(EngineError::Signal("SIGTERM"))), "{}", out.said);
    assert!(raised.elapsed() < Duration::from_secs(10), "the build went on {:?} after SIGTERM", raised.elapsed());
    let pid = std::fs::read_to_string(&marker).expect("the host script ran").trim().to_owned();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the host script outlived the build");
    assert_eq!(build.outputs(), Vec::<String>::new());
}
