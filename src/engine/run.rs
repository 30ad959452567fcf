//! A build, step by step in virt-dib's order (notes §4, §6-§8). Each step lives in the module
//! it names; this file is only their order.

use std::cell::RefCell;
use std::time::Instant;

use super::build_vm::{self, RealVm, VmRequest, VmStarter};
use super::checkpoints::{self, BuildInputs, NetworkMode};
use super::image;
use super::outputs::OutputPlan;
use super::phase_cache::{CacheSetup, PhaseCache, Restore, FACT_ROOT_UUID};
use super::phases::{Phase, PhaseRun, PhaseRunner};
use super::prepare::{self, Prepared};
use super::signals::Stop;
use super::workspace::Workspace;
use super::EngineError;
use crate::cache::Limits;
use crate::guest::paths::{IN_TARGET_AUX, SYSROOT};
use crate::guest::Guest;
use crate::plan::BuildPlan;
use crate::report::{Reporter, TimeSummary};

/// Runs a whole build; a stop signal ends it through the same failure path.
pub fn run(c: &BuildPlan, r: &Reporter) -> Result<(), EngineError> {
    let stop = Stop::install();
    run_with(c, r, &stop, &mut RealVm::default())
}

/// A build whose VM `vms` starts, stopped by `stop`.
pub(crate) fn run_with(c: &BuildPlan, r: &Reporter, stop: &Stop, vms: &mut dyn VmStarter) -> Result<(), EngineError> {
    let result = build(c, r, stop, vms);
    stop.watch_vm(None);
    match (result, stop.caught()) {
        (_, Some(sig)) => Err(EngineError::Signal(sig)),
        (res, None) => res,
    }
}

/// A build with its VM started by `vms`.
fn build(c: &BuildPlan, r: &Reporter, stop: &Stop, vms: &mut dyn VmStarter) -> Result<(), EngineError> {
    stop.check()?;
    let ws = Workspace::create()?;
    // On the host: elements, environment, the aux tree with the hooks, extra-data.d's plan.
    let mut host = prepare::prepare(c, r, &ws)?;
    let log_name = format!("{}-{}.log", r.prog(), crate::stamp::utc_stamp());

    r.message("Opening the disks");
    let outputs = OutputPlan::new(&c.image.name, &c.outputs, host.ramdisk, &ws.dir, stop)?;
    outputs.create_target_disk(c.image.size)?;
    // The tree is built on a scratch disk until the block-device layer has made the image.
    let scratch = host.block_layer.is_some().then(|| ws.dir.join("build.raw"));
    if let Some(path) = &scratch {
        build_vm::sparse_file(path, c.image.size)?;
    }
    vms.prepare(c, r)?;
    let keying = Instant::now();
    let cache_inputs = match &c.cache.dir {
        Some(_) => Some(cache_inputs(c, r, &ws, vms)?),
        None => None,
    };
    let keying = keying.elapsed().as_secs_f64();
    let mut cache = match (&c.cache.dir, &cache_inputs) {
        (Some(dir), Some(inputs)) => {
            let limits = Limits { max_bytes: c.cache.max_bytes, max_age: c.cache.max_age };
            let disk = scratch.clone().unwrap_or_else(|| outputs.target_disk.clone());
            PhaseCache::open(CacheSetup { dir, limits, inputs, disk }, &host.vars, r).map(|mut pc| {
                pc.overhead_secs += keying;
                pc
            })
        }
        _ => None,
    };
    // The checkpoint after root.d goes into the disk before the VM opens it.
    let restoring = Instant::now();
    let restored_root = cache.as_mut().and_then(|pc| pc.restore_before_vm());
    let restoring = restoring.elapsed().as_secs_f64();

    let vm_start = Instant::now();
    let request =
        VmRequest { plan: c, stop, reporter: r, workspace: &ws, outputs: &outputs, scratch: scratch.as_deref() };
    let mut guest = vms.start(&request)?;
    let vm_start = vm_start.elapsed().as_secs_f64();
    let log_hint = match &c.vm.drive {
        Some(d) => format!("The build log is {log_name} at the root of the helper drive {}.", d.path.display()),
        None => "The full output is in the build log, on the throwaway helper drive (use --drive to keep it).".into(),
    };
    let owners = std::mem::take(&mut host.owners);
    let vars = host.vars.clone();
    let mut summary = TimeSummary::default();
    if restored_root.is_some() {
        summary.step("restoring (before the VM)", restoring);
    }
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
    let mut start = Start { cache: cache.as_mut(), restored_root };
    if let Err(e) = in_the_vm(c, &mut *guest, &mut runner, &ws, &mut host, &outputs, &mut start) {
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

/// What every checkpoint of this build depends on besides the phase's own.
fn cache_inputs(
    c: &BuildPlan,
    r: &Reporter,
    ws: &Workspace,
    vms: &mut dyn VmStarter,
) -> Result<BuildInputs, EngineError> {
    Ok(BuildInputs {
        aux: ws.aux(),
        lib: c.lib_dir.clone(),
        layout: checkpoints::layout_digest(&c.image),
        network: match &c.vm.network {
            None => NetworkMode::Off,
            Some(n) if n.host_loopback => NetworkMode::WithHostLoopback,
            Some(_) => NetworkMode::On,
        },
        extra_packages: c.extra_packages.clone(),
        tools: vms.tools(c, r)?,
    })
}

/// Where the phases start: the phase cache the build uses, and the checkpoint after root.d
/// already in the disk.
struct Start<'c, 'a> {
    cache: Option<&'c mut PhaseCache<'a>>,
    restored_root: Option<Restore>,
}

/// The phases and everything else done in the build VM.
fn in_the_vm(
    c: &BuildPlan,
    guest: &mut dyn Guest,
    runner: &mut PhaseRunner<'_>,
    ws: &Workspace,
    host: &mut Prepared,
    outputs: &OutputPlan,
    start: &mut Start<'_, '_>,
) -> Result<(), EngineError> {
    let r = runner.reporter;
    let hooks = host.hooks_dir.as_path();
    image::prepare_appliance(guest, c, &ws.aux(), host.block_layer.is_some())?;
    // block-device.d and the root file system (or the block-device layer's scratch root).
    // block-device.d's, root.d's and cleanup.d's scripts are the ones copied at the start (as
    // in virt-dib); the other phases are read again from the image just before they run,
    // since earlier scripts may add some.
    let mut cache = start.cache.take();
    let root = match &start.restored_root {
        Some(restore) => {
            let root = image::mount_restored_root(guest, runner, host.block_layer.as_ref())?;
            restore_facts(guest, runner, cache.as_deref(), restore)?;
            root
        }
        None => {
            let made = image::make_root(guest, &c.image, runner, hooks, host.block_layer.as_ref())?;
            image::root_d(guest, runner, hooks)?;
            if let Some(pc) = cache.as_deref_mut() {
                match made.on_whole_disk {
                    true => pc.checkpoint(guest, Phase::Root, &facts(runner))?,
                    false => pc.stop_storing(format!("block-device.d put the root on {}", runner.vars.block_device)),
                }
            }
            made.mount
        }
    };
    let changes = host.extra_data.run(guest, runner)?;
    // The deepest later checkpoint, restored in place; or the one after extra-data.d taken.
    let mut reused_up_to = start.restored_root.as_ref().map(|_| Phase::Root);
    if let Some(pc) = cache.as_deref_mut() {
        match pc.after_extra_data(changes) {
            Some(restore) => {
                let restoring = Instant::now();
                image::release_root(guest, &root)?;
                pc.restore_in_place(&restore)?;
                image::mount_root_again(guest, &root)?;
                restore_facts(guest, runner, Some(pc), &restore)?;
                runner.summary.borrow_mut().step("restoring (in place)", restoring.elapsed().as_secs_f64());
                reused_up_to = Some(restore.phase);
            }
            None => pc.checkpoint(guest, Phase::ExtraData, &facts(runner))?,
        }
    }
    for phase in [Phase::PreInstall, Phase::Install, Phase::PostInstall, Phase::PostRoot] {
        if reused_up_to.is_some_and(|p| phase <= p) {
            runner.summary.borrow_mut().step(&format!("{phase} (reused)"), 0.0);
            continue;
        }
        let scripts = runner.guest_scripts(guest, phase)?;
        runner.run(guest, &PhaseRun::new(phase, &scripts))?;
        if phase == Phase::PreInstall && !c.extra_packages.is_empty() {
            image::install_packages(guest, runner, &c.extra_packages)?;
        }
        if let Some(pc) = cache.as_deref_mut() {
            pc.checkpoint(guest, phase, &facts(runner))?;
        }
    }
    if let Some(pc) = cache.as_deref() {
        runner.summary.borrow_mut().step("phase checkpoints", pc.overhead_secs);
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
        let copied = outputs.extract_named_dir(guest, c.vm.memory_mib << 20)?;
        for link in copied.links_left_out {
            r.warning(&format!("{}.d/{}: a link that leads out of it, left out", host.image_name, link.display()));
        }
    }
    image::clean_image(guest, &root)?;
    // docker, squashfs, tar, tgz: from one tar stream of the image's root.
    let streamed = Instant::now();
    outputs.filesystem_outputs(guest, r, &ws.dir)?;
    runner.summary.borrow_mut().step("outputs from the VM", streamed.elapsed().as_secs_f64());
    image::finish(guest, host.block_layer.as_ref())
}

/// The facts the checkpoints after this point carry: what the build made up before them.
fn facts(runner: &PhaseRunner<'_>) -> Vec<(String, String)> {
    vec![(FACT_ROOT_UUID.to_owned(), runner.vars.root_uuid.clone())]
}

/// A restored checkpoint's aux tree and facts: the build goes on as the one that stored it.
fn restore_facts(
    guest: &mut dyn Guest,
    runner: &mut PhaseRunner<'_>,
    cache: Option<&PhaseCache<'_>>,
    restore: &Restore,
) -> Result<(), EngineError> {
    if let Some(pc) = cache {
        pc.restore_aux(guest, restore)?;
    }
    if let Some(uuid) = restore.fact(FACT_ROOT_UUID) {
        runner.vars.root_uuid = uuid.to_owned();
    }
    Ok(())
}
