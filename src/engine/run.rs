//! A build, step by step in virt-dib's order (notes §4, §6-§8). Each step lives in the module
//! it names; this file is only their order.

use std::cell::RefCell;
use std::time::Instant;

use super::build_vm::{self, VmRequest};
use super::image;
use super::outputs::OutputPlan;
use super::phases::{Phase, PhaseRun, PhaseRunner};
use super::prepare::{self, Prepared};
use super::signals::Stop;
use super::workspace::Workspace;
use super::EngineError;
use crate::guest::paths::{IN_TARGET_AUX, SYSROOT};
use crate::guest::{BuildGuest, Guest};
use crate::plan::BuildPlan;
use crate::report::{Reporter, TimeSummary};

/// Starts the build VM of a build: `build_vm::start`, or in the engine's tests a fake guest.
pub type StartVm<'a> = dyn FnMut(&VmRequest<'_>) -> Result<Box<dyn BuildGuest>, EngineError> + 'a;

/// Runs a whole build; a stop signal ends it through the same failure path.
pub fn run(c: &BuildPlan, r: &Reporter) -> Result<(), EngineError> {
    let stop = Stop::install();
    run_with(c, r, &stop, &mut |vm| Ok(Box::new(build_vm::start(vm)?)))
}

/// A build whose VM `start_vm` starts, stopped by `stop`.
pub(crate) fn run_with(
    c: &BuildPlan,
    r: &Reporter,
    stop: &Stop,
    start_vm: &mut StartVm<'_>,
) -> Result<(), EngineError> {
    let result = build(c, r, stop, start_vm);
    stop.watch_vm(None);
    match (result, stop.caught()) {
        (_, Some(sig)) => Err(EngineError::Signal(sig)),
        (res, None) => res,
    }
}

/// A build with its VM started by `start_vm`.
fn build(c: &BuildPlan, r: &Reporter, stop: &Stop, start_vm: &mut StartVm<'_>) -> Result<(), EngineError> {
    stop.check()?;
    let ws = Workspace::create()?;
    // On the host: elements, environment, the aux tree with the hooks, extra-data.d's plan.
    let mut host = prepare::prepare(c, r, &ws)?;
    let log_name = format!("{}-{}.log", r.prog(), crate::stamp::utc_stamp());

    r.message("Opening the disks");
    let outputs = OutputPlan::new(&c.image.name, &c.outputs, host.ramdisk, &ws.dir, stop)?;
    outputs.create_target_disk(c.image.size)?;
    let vm_start = Instant::now();
    let scratch = host.block_layer.is_some();
    let mut guest = start_vm(&VmRequest { plan: c, stop, reporter: r, workspace: &ws, outputs: &outputs, scratch })?;
    let vm_start = vm_start.elapsed().as_secs_f64();
    let log_hint = match &c.vm.drive {
        Some(d) => format!("The build log is {log_name} at the root of the helper drive {}.", d.path.display()),
        None => "The full output is in the build log, on the throwaway helper drive (use --drive to keep it).".into(),
    };
    let owners = std::mem::take(&mut host.owners);
    let vars = host.vars.clone();
    let mut summary = TimeSummary::default();
    summary.step("build VM start", vm_start);
    let mut runner = PhaseRunner {
        reporter: r,
        stop: stop.clone(),
        vars,
        log_name,
        owners,
        log_hint,
        summary: RefCell::new(summary),
    };
    if let Err(e) = in_the_vm(c, &mut *guest, &mut runner, &ws, &mut host, &outputs) {
        if let (Some(end), None) = (guest.ended(), stop.caught()) {
            return Err(EngineError::VmStopped { end: end.how, console: end.console });
        }
        if stop.caught().is_none() {
            image::abandon(&mut *guest);
        }
        return Err(e);
    }
    r.message("Umounting the disks");
    guest.shut_down()?;
    stop.watch_vm(None);
    stop.check()?;
    // After the VM: qcow2 and vhd from the disk, checksums, every output under its final name.
    let finishing = Instant::now();
    outputs.finish(r)?;
    let mut summary = runner.summary.into_inner();
    summary.step("outputs after the VM", finishing.elapsed().as_secs_f64());
    summary.report(r, r.elapsed());
    r.message("Done");
    Ok(())
}

/// The phases and everything else done in the build VM.
fn in_the_vm(
    c: &BuildPlan,
    guest: &mut dyn Guest,
    runner: &mut PhaseRunner<'_>,
    ws: &Workspace,
    host: &mut Prepared,
    outputs: &OutputPlan,
) -> Result<(), EngineError> {
    let r = runner.reporter;
    let hooks = host.hooks_dir.as_path();
    image::prepare_appliance(guest, c, &ws.aux(), host.block_layer.is_some())?;
    // block-device.d and the root file system (or the block-device layer's scratch root).
    // block-device.d's, root.d's and cleanup.d's scripts are the ones copied at the start (as
    // in virt-dib); the other phases are read again from the image just before they run,
    // since earlier scripts may add some.
    let root = image::make_root(guest, &c.image, runner, hooks, host.block_layer.as_ref())?;
    image::root_d(guest, runner, hooks)?;
    host.extra_data.run(guest, runner)?;
    for phase in [Phase::PreInstall, Phase::Install, Phase::PostInstall, Phase::PostRoot] {
        let scripts = runner.guest_scripts(guest, phase)?;
        runner.run(guest, &PhaseRun::new(phase, &scripts))?;
        if phase == Phase::PreInstall && !c.extra_packages.is_empty() {
            image::install_packages(guest, runner, &c.extra_packages)?;
        }
    }
    // disk-image-create's block-device layer makes the image now, or virt-dib remounts.
    image::enter_image(guest, &c.image, runner, host.block_layer.as_mut(), &root)?;
    for phase in [Phase::PreFinalise, Phase::Finalise] {
        let scripts = runner.guest_scripts(guest, phase)?;
        runner.run(guest, &PhaseRun::new(phase, &scripts))?;
    }
    let scripts = crate::elements::scripts::phase_scripts(&hooks.join(Phase::Cleanup.dir()));
    let out_dir = format!("{SYSROOT}{IN_TARGET_AUX}/out/{}.d", host.image_name);
    runner.run(guest, &PhaseRun { workdir: Some(&out_dir), ..PhaseRun::new(Phase::Cleanup, &scripts) })?;

    if image::named_dir_has_files(guest, &host.image_name)? {
        r.message("Extracting data out of the image");
        outputs.extract_named_dir(guest)?;
    }
    image::clean_image(guest, &root)?;
    // docker, squashfs, tar, tgz: from one tar stream of the image's root.
    let streamed = Instant::now();
    outputs.filesystem_outputs(guest, r, &ws.dir)?;
    runner.summary.borrow_mut().step("outputs from the VM", streamed.elapsed().as_secs_f64());
    image::finish(guest, host.block_layer.as_ref())
}
