//! The build's steps on the image in the build VM, each a guest script (`guest::scripts`):
//! the appliance's aux tree and helper drive, the root (block-device.d and virt-dib's mkfs, or
//! diskimage-builder's block-device layer), root.d's tree moving into place, the remounts, the
//! extra packages, the final clean-up.

use std::path::Path;

use super::block_layer::{self, BlockLayer, Scratch};
use super::env::Context;
use super::phases::{block_device_from_output, Phase, PhaseRun, PhaseRunner};
use super::EngineError;
use crate::elements::scripts::phase_scripts;
use crate::guest::paths::{self, IN_TARGET_AUX, SYSROOT};
use crate::guest::{scripts, status_text, Guest, Streamed};
use crate::plan::{BuildPlan, ImagePlan};

/// How the image's root is mounted at the sysroot.
pub enum RootMount {
    /// virt-dib's bare file system on this device.
    Plain(String),
    /// diskimage-builder's block-device layer's mounts.
    Layer,
}

impl RootMount {
    /// The arguments of `remount-root.sh`.
    fn args(&self) -> Vec<&str> {
        match self {
            RootMount::Plain(dev) => vec!["plain", dev.as_str()],
            RootMount::Layer => vec!["layer"],
        }
    }

    /// Until the image is entered, the device whose file system is at the sysroot (the one
    /// phase checkpoints copy): virt-dib's root device, or the layer's scratch disk.
    fn building_on(&self) -> String {
        match self {
            RootMount::Plain(dev) => dev.clone(),
            RootMount::Layer => paths::disk(paths::BUILD_SERIAL),
        }
    }
}

/// The root as the cold path made it, and whether a phase checkpoint can hold it: a restore
/// mounts the whole target disk's loop device, so a root block-device.d put elsewhere (a
/// partition it made) cannot be brought back.
pub struct MadeRoot {
    pub mount: RootMount,
    pub on_whole_disk: bool,
}

/// Names the disks, fills the appliance's aux tree (the host's aux tree and the library) and
/// mounts the helper drive in it.
pub fn prepare_appliance(guest: &mut dyn Guest, c: &BuildPlan, aux: &Path, scratch: bool) -> Result<(), EngineError> {
    let mut serials = vec![paths::TARGET_SERIAL, paths::HELPER_SERIAL];
    if scratch {
        serials.push(paths::BUILD_SERIAL);
    }
    guest.script(&scripts::NAME_DISKS, &serials)?;
    guest.script(&scripts::AUX_TMPFS, &[])?;
    send_dir(guest, aux, paths::AUX)?;
    send_dir(guest, &c.lib_dir, &paths::aux("lib"))?;
    let mode = if c.vm.drive.is_some() { "keep" } else { "fresh" };
    guest.script(&scripts::HELPER_DRIVE, &[mode, &paths::disk(paths::HELPER_SERIAL)])?;
    Ok(())
}

fn send_dir(guest: &mut dyn Guest, src: &Path, dest: &str) -> Result<(), EngineError> {
    guest.send_dir(src, dest).map_err(EngineError::step(format!("copying {} into the build VM failed", src.display())))
}

/// The image's root at the sysroot, with the aux tree bound in: on the layer's scratch disk, or
/// after block-device.d, virt-dib's file system on the target disk (or the device it named).
pub fn make_root(
    guest: &mut dyn Guest,
    image: &ImagePlan,
    runner: &mut PhaseRunner<'_>,
    hooks_dir: &Path,
    layer: Option<&BlockLayer>,
) -> Result<MadeRoot, EngineError> {
    let r = runner.reporter;
    if let Some(layer) = layer {
        // diskimage-builder's block-device layer makes the disk later; the tree starts on the
        // scratch disk.
        r.message("Setting up the destination root");
        layer.prepare(guest, Scratch::Fresh)?;
        mount_aux(guest)?;
        return Ok(MadeRoot { mount: RootMount::Layer, on_whole_disk: true });
    }
    guest.script(&scripts::SYSROOT_TMPFS, &[])?;
    mount_aux(guest)?;
    let target = paths::disk(paths::TARGET_SERIAL);
    let loop_dev = guest.sh(r#"losetup --show -f "$1""#, &[&target])?;
    let whole = loop_dev.lines().next().filter(|l| !l.is_empty()).unwrap_or(&target).to_owned();
    let mut device = whole.clone();
    runner.vars.block_device = device.clone();
    let scripts = phase_scripts(&hooks_dir.join(Phase::BlockDevice.dir()));
    let run = PhaseRun { capture_answer: true, ..PhaseRun::new(Phase::BlockDevice, &scripts) };
    let out = runner.run(guest, &run)?;
    if !scripts.is_empty() {
        device = block_device_from_output(&out, &device)?;
        runner.vars.block_device = device.clone();
    }
    guest.sh(r#"sync; umount -R "$MICRODIB_SYSROOT""#, &[])?;

    r.message("Setting up the destination root");
    make_filesystem(guest, image, &runner.vars.root_uuid, &device)?;
    guest.script(&scripts::MOUNT_ROOT, &[&device])?;
    mount_aux(guest)?;
    Ok(MadeRoot { on_whole_disk: device == whole, mount: RootMount::Plain(device) })
}

/// The root a phase checkpoint restored into the disk, mounted as `root_d` leaves it: on the
/// layer's scratch disk, or virt-dib's file system on the target disk's loop device.
pub fn mount_restored_root(
    guest: &mut dyn Guest,
    runner: &mut PhaseRunner<'_>,
    layer: Option<&BlockLayer>,
) -> Result<RootMount, EngineError> {
    runner.reporter.message("Setting up the destination root (from the phase cache)");
    if let Some(layer) = layer {
        layer.prepare(guest, Scratch::Restored)?;
        mount_aux(guest)?;
        return Ok(RootMount::Layer);
    }
    let target = paths::disk(paths::TARGET_SERIAL);
    let loop_dev = guest.sh(r#"losetup --show -f "$1""#, &[&target])?;
    let device = loop_dev.lines().next().filter(|l| !l.is_empty()).unwrap_or(&target).to_owned();
    runner.vars.block_device = device.clone();
    guest.script(&scripts::MOUNT_ROOT, &[&device])?;
    mount_aux(guest)?;
    Ok(RootMount::Plain(device))
}

/// Before the host rewrites the disk under the root (a later checkpoint restored in place):
/// the root unmounted and every cached block of its disk dropped.
pub fn release_root(guest: &mut dyn Guest, root: &RootMount) -> Result<(), EngineError> {
    let device = root.building_on();
    let mut devices = vec![device.as_str()];
    let target = paths::disk(paths::TARGET_SERIAL);
    if matches!(root, RootMount::Plain(_)) {
        // The loop device's own cache, and the disk's under it.
        devices.push(&target);
    }
    let mut args = vec!["release"];
    args.extend(devices);
    guest.script(&scripts::CHECKPOINT, &args)?;
    Ok(())
}

/// After `release_root` and the host's restore: the root mounted again, the aux tree bound in.
pub fn mount_root_again(guest: &mut dyn Guest, root: &RootMount) -> Result<(), EngineError> {
    guest.script(&scripts::MOUNT_ROOT, &[&root.building_on()])?;
    mount_aux(guest)
}

/// mkfs with virt-dib's options, then the label and (for ext*) the UUID.
fn make_filesystem(guest: &mut dyn Guest, image: &ImagePlan, uuid: &str, dev: &str) -> Result<(), EngineError> {
    let opts = image.mkfs_options.as_deref().unwrap_or("");
    guest
        .script(&scripts::MKFS, &[&image.fs_type, dev, &image.root_label, uuid, opts])
        .map_err(EngineError::step(format!("making the {} file system failed", image.fs_type)))?;
    Ok(())
}

/// Binds the aux tree into the target at /tmp/in_target.aux.
pub fn mount_aux(guest: &mut dyn Guest) -> Result<(), EngineError> {
    guest.script(&scripts::MOUNT_AUX, &[])?;
    Ok(())
}

/// root.d builds the tree in subroot/, which then moves up to the sysroot; the aux tree is
/// bound in again and `paths::IN_TARGET_D` points at the hooks.
pub fn root_d(guest: &mut dyn Guest, runner: &PhaseRunner<'_>, hooks_dir: &Path) -> Result<(), EngineError> {
    guest.sh(r#"mkdir "$MICRODIB_SUBROOT""#, &[])?;
    let scripts = phase_scripts(&hooks_dir.join(Phase::Root.dir()));
    runner.run(guest, &PhaseRun::new(Phase::Root, &scripts))?;
    guest.script(&scripts::ROOT_D_FINISH, &[])?;
    mount_aux(guest)?;
    // Relative, so it holds inside the chroot and out.
    let hooks = format!("{}/hooks", IN_TARGET_AUX.rsplit('/').next().unwrap_or_default());
    guest.sh(r#"ln -sfn "$1" "$MICRODIB_SYSROOT$2""#, &[&hooks, paths::IN_TARGET_D])?;
    Ok(())
}

/// After post-root.d, the image itself at the sysroot: the layer makes it and the tree moves
/// in, or virt-dib's remount.
pub fn enter_image(
    guest: &mut dyn Guest,
    image: &ImagePlan,
    runner: &mut PhaseRunner<'_>,
    layer: Option<&mut BlockLayer>,
    root: &RootMount,
) -> Result<(), EngineError> {
    match layer {
        Some(layer) => {
            let mut mkfs_opts = if image.fs_type == "ext4" { "-i 4096 -J size=64".to_owned() } else { String::new() };
            if let Some(o) = &image.mkfs_options {
                mkfs_opts = format!("{mkfs_opts} {o}").trim().to_owned();
            }
            let params = block_layer::Params {
                fs_type: image.fs_type.clone(),
                root_label: runner.vars.root_label.clone(),
                size_bytes: image.size,
                mkfs_opts,
            };
            layer.enter_image(guest, &params, runner.reporter)?;
            for (k, v) in &layer.exported {
                if k == "IMAGE_BLOCK_DEVICE" {
                    runner.vars.block_device = v.clone();
                }
            }
            runner.vars.layer_vars = layer.exported.clone();
        }
        None => {
            guest.script(&scripts::REMOUNT_ROOT, &root.args())?;
        }
    }
    mount_aux(guest)
}

/// `--extra-packages`: install-packages in the chroot right after pre-install.d, through the
/// logging wrapper (TARGET_DIR is the aux root, so no environment.d is sourced, as in virt-dib).
pub fn install_packages(guest: &mut dyn Guest, runner: &PhaseRunner<'_>, pkgs: &[String]) -> Result<(), EngineError> {
    let list = pkgs.join(" ");
    runner.reporter.message(&format!("Installing: {list}"));
    runner.append_log(guest, &format!("Installing {list}...\n"))?;
    let log = format!("{IN_TARGET_AUX}/perm/{}", runner.log_name);
    let wrapper = format!("{IN_TARGET_AUX}/run-and-log.sh");
    let argv = [wrapper.as_str(), log.as_str(), "-", IN_TARGET_AUX, "install-packages.sh", "", "0"];
    let env = runner.vars.script_env(&Context::Chroot);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let status = guest
        .stream(&Streamed { argv: &argv, env: &env, chroot: Some(SYSROOT) }, &mut |_, d| {
            runner.reporter.script_output(d)
        })
        .map_err(|e| e.during("installing packages"))?;
    if status != crate::guest::ExitStatus::Code(0) {
        return Err(EngineError::Invalid(format!("installing the extra packages failed: {}", status_text(&status))));
    }
    if runner.vars.debug >= 1 {
        runner.reporter.debug("package installation completed");
    }
    Ok(())
}

/// Whether cleanup.d left anything in NAME.d.
pub fn named_dir_has_files(guest: &mut dyn Guest, image_name: &str) -> Result<bool, EngineError> {
    let listing = guest.sh(r#"sync; ls -A "$1""#, &[&paths::aux(&format!("out/{image_name}.d"))])?;
    Ok(!listing.trim().is_empty())
}

/// virt-dib's clean-up of the image, remounted: /tmp emptied, logs truncated.
pub fn clean_image(guest: &mut dyn Guest, root: &RootMount) -> Result<(), EngineError> {
    guest.script(&scripts::REMOUNT_ROOT, &root.args())?;
    guest.script(&scripts::CLEAN_IMAGE, &[])?;
    Ok(())
}

/// After a failed step, with the VM still up: what the image holds so far reaches the disk, so
/// a disk kept with --no-delete-on-failure shows it. Best effort: the build fails anyway.
pub fn abandon(guest: &mut dyn Guest) {
    let _ = guest.script(&scripts::ABANDON, &[]);
}

/// After the outputs: freed blocks handed back (virtio-blk discard punches holes, so the raw
/// disk stays sparse and the disk-based writers skip them), the root unmounted, the helper
/// drive and loop devices let go.
pub fn finish(guest: &mut dyn Guest, layer: Option<&BlockLayer>) -> Result<(), EngineError> {
    guest.sh(r#"fstrim "$MICRODIB_SYSROOT" 2>/dev/null || true; sync"#, &[])?;
    match layer {
        Some(layer) => layer.finish(guest)?,
        None => {
            guest.sh(r#"umount -R "$MICRODIB_SYSROOT""#, &[])?;
        }
    }
    guest.script(&scripts::FINISH_APPLIANCE, &[])?;
    Ok(())
}
