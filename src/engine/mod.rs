//! A build, in virt-dib's order (notes §4, §6-§8): host preparation, the build VM, the phases
//! (block-device.d, mkfs, root.d, extra-data.d, pre-install.d, extra packages, install.d,
//! post-install.d, post-root.d, remount, pre-finalise.d, finalise.d, cleanup.d), `NAME.d`, the
//! image clean-up, then the outputs and checksums.

pub mod appliance;
pub mod block_layer;
pub mod capture;
pub mod env;
pub mod extra_data;
pub mod helper_drive;
pub mod host_view;
pub mod name_lock;
pub mod named_dir;
pub mod outputs;
pub mod phases;
pub mod signals;
pub mod workspace;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::plan::BuildPlan;
use crate::elements::{self, hooks, scripts::phase_scripts, ElementIndex};
use crate::guest;
use crate::report::Reporter;
use crate::vmbackend::{self, Backend, BuildVm, DiskFormat, VmDisk, VmSpec};
use block_layer::BlockLayer;
use env::{BuildVars, Context, HostPaths, SYSROOT};
use extra_data::ExtraData;
use outputs::OutputPlan;
use phases::{block_device_from_output, guest_sh, PhaseRunner};
use workspace::Workspace;

/// How a build ends when it does not succeed.
#[derive(Debug)]
pub enum BuildError {
    /// Reported as `prog: error: <text>`, exit status 1.
    Error(String),
    /// Exit with this status and no message (an extra-data.d script's own status).
    Exit(i32),
    /// A stop signal arrived.
    Signal(&'static str),
}

impl From<vmbackend::VmError> for BuildError {
    fn from(e: vmbackend::VmError) -> Self {
        BuildError::Error(e.to_string())
    }
}

impl From<String> for BuildError {
    fn from(s: String) -> Self {
        BuildError::Error(s)
    }
}

/// Size of the throwaway helper drive, as virt-dib made it.
const HELPER_SIZE: u64 = 5 << 30;

/// A random (version 4) UUID for the root file system.
pub fn random_uuid() -> String {
    let b = crate::stamp::random_uuid_bytes();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// UTC now as YYYYMMDD-HHMMSS, for the log name.
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Runs a whole build.
pub fn run(c: &BuildPlan, r: &Reporter) -> Result<(), BuildError> {
    signals::install();
    let result = run_inner(c, r);
    signals::watch_vm(None);
    match (result, signals::caught()) {
        (_, Some(sig)) => Err(BuildError::Signal(sig)),
        (res, None) => res,
    }
}

fn run_inner(c: &BuildPlan, r: &Reporter) -> Result<(), BuildError> {
    signals::check()?;
    // Where the build VM runs: this host's KVM, or qemu's software emulation.
    let backend = Backend::choose(c.vm.accel, |why| r.info(why))?;
    let ws = Workspace::create()?;
    let image_name = Path::new(&c.image.name).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(c.image.name.clone());
    let requested = requested_elements(c);
    r.info(&format!("Elements: {}", requested.join(" ")));
    if c.debug >= 1 {
        r.debug(&format!("tmpdir: {}", ws.dir.display()));
        r.debug(&format!("element paths: {}", c.elements.paths.join(":")));
    }
    let idx = ElementIndex::load(&c.elements.paths);
    if c.debug >= 1 {
        for (name, dir) in &idx.shadowed {
            r.debug(&format!("element {name} (in {}) already present", dir.display()));
        }
    }
    if c.debug >= 1 {
        r.debug("loaded elements:");
        for (name, el) in &idx.elements {
            r.debug(&format!("  {name} => {}", el.dir.display()));
            for (phase, scripts) in el.hooks() {
                r.debug(&format!("\t{phase:<20} {}", scripts.join(" ")));
            }
        }
        r.debug("");
    }
    let expanded = elements::resolve(&idx, &requested, &c.elements.exclude_elements).map_err(|e| e.to_string())?;
    let expanded_list: Vec<String> = expanded.iter().cloned().collect();
    r.info(&format!("Expanded elements: {}", expanded_list.join(" ")));
    let user_vars = env::resolve_envvars(&c.envvars, |k| std::env::var(k).ok());
    let names: Vec<&str> = user_vars.iter().rev().map(|(k, _)| k.as_str()).collect();
    r.info(&format!("Carried environment variables: {}", names.join(" ")));
    if c.debug >= 1 {
        r.debug("carried over envvars:");
        if user_vars.is_empty() {
            r.debug("  (none)");
        }
        for (k, v) in user_vars.iter().rev() {
            r.debug(&format!("  {k}={v}"));
        }
        r.debug("");
    }
    let ramdisk = c.elements.ramdisk || expanded.contains("ironic-agent");
    let arch = c.elements.arch.clone();
    let block_config = user_vars.iter().find(|(k, _)| k == "DIB_BLOCK_DEVICE_CONFIG").map(|(_, v)| v.as_str());
    let mut block_layer = match ramdisk {
        true => None,
        false => BlockLayer::plan(
            &idx,
            &expanded,
            &c.lib_dir,
            &arch,
            block_config,
        )?,
    };

    r.message("Preparing auxiliary data");
    ws.write_aux(&image_name, &c.extra_packages)?;
    let hooks_dir = ws.aux().join("hooks");
    hooks::build(&hooks_dir, &expanded, &idx, &c.elements.exclude_scripts, &c.elements.install_type).map_err(|e| e.to_string())?;
    let owners = script_owners(&idx, &expanded);
    if c.debug >= 1 && crate::host::which("tree").is_some() {
        // virt-dib showed the workspace it had prepared; quietly skipped without tree.
        let _ = signals::command("tree").arg("-ps").arg(&ws.dir).status();
    }
    let log_name = format!("{}-{}.log", r.prog(), utc_stamp());
    let image_cache = image_cache_dir(&c.image_cache)?;
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let vars = BuildVars {
        user_vars,
        arch,
        image_name: image_name.clone(),
        elements: expanded_list.clone(),
        offline: c.vm.passt.is_none(),
        root_label: c.image.root_label.clone(),
        root_uuid: random_uuid(),
        dib_args: env::dib_args(&argv),
        dib_env: env::dib_env(
            std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())),
        ),
        debug: c.debug,
        fs_type: c.image.fs_type.clone(),
        checksum: c.outputs.checksum,
        block_device: "/dev/loop0".into(),
        layer_vars: Vec::new(),
    };
    let extra_data = extra_data_plan(c, &ws, &hooks_dir, &idx, &expanded, &vars, &image_cache);
    if c.debug >= 1 {
        r.debug(&format!("DIB args:\n{}\n", vars.dib_args));
        r.debug(&format!("DIB envvars:\n{}", vars.dib_env));
    }

    r.message("Opening the disks");
    let plan = OutputPlan::new(&c.image.name, &c.outputs, ramdisk, &ws.dir)?;
    plan.create_target_disk(c.image.size)?;
    let helper = match &c.vm.drive {
        Some(d) => VmDisk {
            path: d.path.clone(),
            format: helper_drive::drive_format(&d.path, d.format.as_deref())
                .map_err(|e| BuildError::Error(e.to_string()))?,
            read_only: false,
            serial: guest::HELPER_SERIAL.into(),
            scratch: false,
        },
        None => throwaway_disk(ws.dir.join("helper.raw"), HELPER_SIZE, guest::HELPER_SERIAL)?,
    };
    let mut disks = vec![
        VmDisk {
            path: plan.target_disk.clone(),
            format: DiskFormat::Raw,
            read_only: false,
            serial: guest::TARGET_SERIAL.into(),
            scratch: false,
        },
        helper,
    ];
    if block_layer.is_some() {
        // The tree is built here until the block-device layer has made the image's file systems.
        disks.push(throwaway_disk(ws.dir.join("build.raw"), c.image.size, guest::BUILD_SERIAL)?);
    }
    let kernel = appliance::find_kernel()?;
    let agent = appliance::find_agent()?;
    let files =
        initramfs::appliance::build_or_cached(&agent, &appliance::cache_root().join("appliance"), |m| r.info(m))
            .map_err(|e| format!("cannot build the appliance: {}", vmbackend::error_chain(&e)))?;
    let spec = VmSpec {
        kernel,
        initrd: files.initrd,
        root: files.root,
        disks,
        memory_mib: c.vm.memory_mib,
        vcpus: c.vm.vcpus,
        vsock: ws.dir.join("vsock"),
        console: ws.dir.join("console.log"),
        network: c.vm.passt.clone().map(|passt| vmbackend::NetworkSpec { passt, log: ws.dir.join("passt.log") }),
        workdir: ws.dir.clone(),
    };
    signals::check()?;
    let mut vm = BuildVm::start(&backend, spec)?;
    // A signal while it boots stops it too.
    signals::watch_vm(Some(vm.stop_switch()));
    vm.wait_for_agent()?;
    let ready = r.elapsed();
    vm.trace = c.trace;
    if c.debug >= 1 {
        let vmm = match vm.vmm_pid() {
            Some(pid) => format!("qemu pid {pid}"),
            None => "microdib's own VMM".to_owned(),
        };
        r.debug(&format!("build VM: {} ({vmm}); its agent answered {ready:.2} s after microdib started", vm.backend()));
        if let Some(pid) = vm.passt_pid() {
            r.debug(&format!("network: passt (pid {pid})"));
        }
    }
    let log_hint = if let Some(d) = &c.vm.drive {
        format!("The build log is {log_name} at the root of the helper drive {}.", d.path.display())
    } else {
        "The full output is in the build log, on the throwaway helper drive (use --drive to keep it).".to_owned()
    };
    let runner = PhaseRunner { reporter: r, vars, log_name, owners, log_hint };
    let result =
        guest_build(c, &mut vm, runner, &ws, &plan, &hooks_dir, &image_name, &extra_data, block_layer.as_mut());
    if let Err(e) = result {
        if let Some(end) = vm.ended() {
            if signals::caught().is_none() {
                return Err(BuildError::Error(format!("the build VM stopped: {end}{}", vm.console_tail())));
            }
        }
        return Err(e);
    }
    r.message("Umounting the disks");
    vm.shutdown()?;
    signals::watch_vm(None);
    signals::check()?;
    plan.finish(r)?;
    r.message("Done");
    Ok(())
}

/// extra-data.d's scripts (from the host copy of the hooks) and its host environment.
#[allow(clippy::too_many_arguments)]
fn extra_data_plan(
    c: &BuildPlan,
    ws: &Workspace,
    hooks_dir: &Path,
    idx: &ElementIndex,
    expanded: &BTreeSet<String>,
    vars: &BuildVars,
    image_cache: &Path,
) -> ExtraData {
    let mount = ws.dir.join("extra-data.d");
    let paths = HostPaths {
        mount: mount.display().to_string(),
        lib: c.lib_dir.display().to_string(),
        image_cache: image_cache.display().to_string(),
        python: c.python.display().to_string(),
        elements_path: c.elements.paths.join(":"),
        aux: ws.aux().display().to_string(),
    };
    let mut env = vars.host_env(&paths, &std::env::var("PATH").unwrap_or_default());
    env.insert("VIRT_DIB_OURPATH".into(), ws.dir.display().to_string());
    let dirs: Vec<(String, String)> =
        expanded.iter().filter_map(|e| idx.get(e).map(|el| (e.clone(), el.dir.display().to_string()))).collect();
    ExtraData {
        scripts: phase_scripts(&hooks_dir.join("extra-data.d")),
        hooks: hooks_dir.to_owned(),
        max_bytes: c.image.size,
        mount,
        element_info: env::element_info(&dirs),
        env,
        wrapper: ws.aux().join("run-part-extra.sh"),
    }
}

/// `--image-cache`, or `$HOME/.cache/image-create`, created as virt-dib did at startup.
pub fn image_cache_dir(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir.to_owned())
}

/// A sparse raw disk of `size` bytes in the workspace (gone with it), with serial `id`.
fn throwaway_disk(path: PathBuf, size: u64, serial: &str) -> Result<VmDisk, BuildError> {
    let f = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.set_len(size).map_err(|e| format!("cannot size {}: {e}", path.display()))?;
    Ok(VmDisk { path, format: DiskFormat::Raw, read_only: false, serial: serial.into(), scratch: true })
}

/// The elements asked for: virt-dib's (ramdisk element, base, the command line), plus the block
/// device element disk-image-create adds for `vm`.
fn requested_elements(c: &BuildPlan) -> Vec<String> {
    let e = &c.elements;
    let mut named = e.named.clone();
    if let Some(extra) = block_layer::default_element(&e.named, &e.arch) {
        named.push(extra.to_owned());
    }
    elements::requested(&named, e.skip_base, e.ramdisk.then_some(e.ramdisk_element.as_str()))
}

/// Which element each copied script came from.
fn script_owners(idx: &ElementIndex, expanded: &BTreeSet<String>) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for name in expanded {
        let Some(el) = idx.get(name) else { continue };
        let Ok(entries) = std::fs::read_dir(&el.dir) else { continue };
        for e in entries.flatten() {
            let phase = e.file_name().to_string_lossy().into_owned();
            if phase.ends_with(".d") && e.path().is_dir() {
                for s in phase_scripts(&e.path()) {
                    v.push((phase.clone(), s, name.clone()));
                }
            }
        }
    }
    v
}

/// The part of the build that happens in the VM.
#[allow(clippy::too_many_arguments)]
fn guest_build(
    c: &BuildPlan,
    vm: &mut BuildVm,
    mut runner: PhaseRunner<'_>,
    ws: &Workspace,
    plan: &OutputPlan,
    hooks_dir: &Path,
    image_name: &str,
    extra_data: &ExtraData,
    mut block_layer: Option<&mut BlockLayer>,
) -> Result<(), BuildError> {
    let r = runner.reporter;
    let mut serials = vec![guest::TARGET_SERIAL, guest::HELPER_SERIAL];
    if block_layer.is_some() {
        serials.push(guest::BUILD_SERIAL);
    }
    guest_sh(vm, guest::NAME_DISKS_SH, &serials)?;
    let (target, helper) = (guest::disk(guest::TARGET_SERIAL), guest::disk(guest::HELPER_SERIAL));
    // The aux tree lives in a tmpfs in the appliance, bound into the target at /tmp/in_target.aux;
    // the helper drive is mounted inside it at perm/.
    guest_sh(vm, "mkdir -p /run/microdib/aux /sysroot && mount -t tmpfs -o mode=0755 aux /run/microdib/aux", &[])?;
    tar_in(vm, &ws.aux(), "/run/microdib/aux")?;
    tar_in(vm, &c.lib_dir, "/run/microdib/aux/lib")?;
    let helper_setup = if c.vm.drive.is_some() {
        // A partitioned helper: its first partition; otherwise the whole disk.
        r#"dev=$(readlink -f "$1"); name=${dev##*/}
           part=$(ls -d /sys/block/$name/$name* 2>/dev/null | sort -V | head -n1); [ -z "$part" ] || dev=/dev/${part##*/}
           mount "$dev" /run/microdib/aux/perm || { echo "cannot mount the helper drive ($dev): it needs a file system" >&2; exit 1; }"#
    } else {
        r#"mkfs.ext2 -q -F "$1" >/dev/null && mount "$1" /run/microdib/aux/perm"#
    };
    guest_sh(
        vm,
        &format!("set -e\n{helper_setup}\nmkdir -p /run/microdib/aux/perm/home/.cache/image-create"),
        &[&helper],
    )?;

    // block-device.d, before any file system exists. Its scripts, root.d's and cleanup.d's are
    // the ones copied at the start (as in virt-dib); the other phases are read again from the
    // image just before they run, since earlier scripts may add some.
    let mut block_device = target.clone();
    if let Some(layer) = block_layer.as_deref() {
        // diskimage-builder's block-device layer makes the disk later; the tree starts on the
        // scratch disk.
        r.message("Setting up the destination root");
        layer.prepare(vm, SYSROOT)?;
        guest_sh(vm, "mkdir -p /sysroot/tmp", &[])?;
    } else {
        guest_sh(vm, "set -e; mount -t tmpfs -o mode=0755 sysroot /sysroot; mkdir -p /sysroot/tmp", &[])?;
        mount_aux(vm)?;
        let loop_dev = guest_sh(vm, r#"losetup --show -f "$1""#, &[&target])?;
        block_device = loop_dev.lines().next().filter(|l| !l.is_empty()).unwrap_or(&target).to_owned();
        runner.vars.block_device = block_device.clone();
        let scripts = phase_scripts(&hooks_dir.join("block-device.d"));
        let out = runner.run(vm, "block-device.d", &outside(SYSROOT), &scripts, None, true)?;
        if !scripts.is_empty() {
            block_device = block_device_from_output(&out, &block_device)?;
            runner.vars.block_device = block_device.clone();
        }
        guest_sh(vm, "sync; umount -R /sysroot", &[])?;

        r.message("Setting up the destination root");
        make_filesystem(vm, &c.image, &runner.vars, &block_device)?;
        guest_sh(vm, r#"set -e; mount "$1" /sysroot; mkdir -p /sysroot/tmp"#, &[&block_device])?;
    }
    mount_aux(vm)?;
    // How the image's root is mounted at /sysroot again after it was unmounted there.
    let remount = match block_layer.as_deref() {
        Some(layer) => layer.remount_script(),
        None => r#"mount "$1" /sysroot"#.to_owned(),
    };
    guest_sh(vm, "mkdir /sysroot/subroot", &[])?;
    let scripts = phase_scripts(&hooks_dir.join("root.d"));
    runner.run(vm, "root.d", &outside("/sysroot/subroot"), &scripts, None, false)?;
    guest_sh(
        vm,
        r#"set -e; sync; umount -R /sysroot/tmp/in_target.aux; rm -rf /sysroot/tmp /sysroot/subroot/lost+found
           for e in /sysroot/subroot/* /sysroot/subroot/.[!.]* /sysroot/subroot/..?*; do
               if [ -e "$e" ] || [ -L "$e" ]; then mv "$e" /sysroot/; fi
           done
           rmdir /sysroot/subroot
           [ -d /sysroot/tmp ] || { echo "root.d left no /tmp in the image" >&2; exit 1; }"#,
        &[],
    )?;
    mount_aux(vm)?;
    guest_sh(vm, "ln -sfn in_target.aux/hooks /sysroot/tmp/in_target.d", &[])?;
    extra_data.run(vm, &runner)?;

    for phase in ["pre-install.d", "install.d", "post-install.d"] {
        let scripts = runner.guest_scripts(vm, phase)?;
        runner.run(vm, phase, &Context::Chroot, &scripts, None, false)?;
        if phase == "pre-install.d" && !c.extra_packages.is_empty() {
            install_packages(vm, &runner, &c.extra_packages)?;
        }
    }
    let scripts = runner.guest_scripts(vm, "post-root.d")?;
    runner.run(vm, "post-root.d", &outside(SYSROOT), &scripts, None, false)?;

    match block_layer.as_deref_mut() {
        Some(layer) => {
            // disk-image-create's turn: the layer makes and mounts the image, the tree moves in.
            let mut mkfs_opts = if c.image.fs_type == "ext4" { "-i 4096 -J size=64".to_owned() } else { String::new() };
            if let Some(o) = &c.image.mkfs_options {
                mkfs_opts = format!("{mkfs_opts} {o}").trim().to_owned();
            }
            let params = block_layer::Params {
                fs_type: c.image.fs_type.clone(),
                root_label: runner.vars.root_label.clone(),
                size_bytes: c.image.size,
                mkfs_opts,
            };
            layer.enter_image(vm, SYSROOT, &params, runner.reporter)?;
            for (k, v) in &layer.exported {
                if k == "IMAGE_BLOCK_DEVICE" {
                    runner.vars.block_device = v.clone();
                }
            }
            runner.vars.layer_vars = layer.exported.clone();
        }
        None => {
            // Remount, as virt-dib does between post-install.d and finalise.d.
            guest_sh(vm, &format!("set -e; sync; umount -R /sysroot; {remount}"), &[&block_device])?;
        }
    }
    mount_aux(vm)?;
    let scripts = runner.guest_scripts(vm, "pre-finalise.d")?;
    runner.run(vm, "pre-finalise.d", &outside(SYSROOT), &scripts, None, false)?;
    let scripts = runner.guest_scripts(vm, "finalise.d")?;
    runner.run(vm, "finalise.d", &Context::Chroot, &scripts, None, false)?;
    let scripts = phase_scripts(&hooks_dir.join("cleanup.d"));
    let out_dir = format!("/sysroot/tmp/in_target.aux/out/{image_name}.d");
    runner.run(vm, "cleanup.d", &outside(SYSROOT), &scripts, Some(&out_dir), false)?;

    guest_sh(vm, "sync", &[])?;
    let listing = guest_sh(vm, r#"ls -A "$1""#, &[&format!("/run/microdib/aux/out/{image_name}.d")])?;
    if !listing.trim().is_empty() {
        r.message("Extracting data out of the image");
        plan.extract_named_dir(vm)?;
    }
    // Final clean-up of the image.
    guest_sh(
        vm,
        &format!(
            r#"set -e; sync; umount -R /sysroot; {remount}
           find /sysroot/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +
           [ -d /sysroot/var/log ] || {{ echo "the image has no /var/log" >&2; exit 1; }}
           find /sysroot/var/log -type f -exec truncate -s 0 {{}} +
           if [ -d /sysroot/root ]; then find /sysroot/root -type f -name '*.log' -delete; fi"#
        ),
        &[&block_device],
    )?;
    plan.filesystem_outputs(vm, r, &ws.dir)?;
    // fstrim hands freed blocks back (virtio-blk discard punches holes), so the raw disk stays
    // sparse and the disk-based writers skip them.
    guest_sh(vm, "fstrim /sysroot 2>/dev/null || true; sync", &[])?;
    match block_layer.as_deref() {
        Some(layer) => layer.finish(vm, SYSROOT)?,
        None => {
            guest_sh(vm, "umount -R /sysroot", &[])?;
        }
    }
    guest_sh(vm, "set -e; umount /run/microdib/aux/perm; losetup -D; sync", &[])?;
    Ok(())
}

fn outside(sysroot: &str) -> Context {
    Context::Outside { sysroot: sysroot.to_owned() }
}

fn mount_aux(vm: &mut BuildVm) -> Result<(), BuildError> {
    guest_sh(
        vm,
        "mkdir -p /sysroot/tmp/in_target.aux && mount --rbind /run/microdib/aux /sysroot/tmp/in_target.aux",
        &[],
    )
    .map(|_| ())
}

/// mkfs with virt-dib's options, then the label and (for ext*) the UUID.
fn make_filesystem(vm: &mut BuildVm, c: &crate::plan::ImagePlan, vars: &BuildVars, dev: &str) -> Result<(), BuildError> {
    let fs = &c.fs_type;
    let mut cmd = format!("mkfs -t {}", crate::shell::quote(fs));
    if fs == "ext4" {
        cmd.push_str(" -i 4096 -J size=64");
    }
    if let Some(o) = &c.mkfs_options {
        // Word-split by the shell, as virt-dib's was.
        cmd.push(' ');
        cmd.push_str(o);
    }
    cmd.push_str(&format!(" {} >/dev/null", crate::shell::quote(dev)));
    let (label, q) = (crate::shell::quote(&vars.root_label), crate::shell::quote(dev));
    let label_cmd = match fs.as_str() {
        f if f.starts_with("ext") => {
            format!("e2label {q} {label} && tune2fs -U {} {q} >/dev/null", crate::shell::quote(&vars.root_uuid))
        }
        "xfs" => format!("xfs_admin -L {label} {q} >/dev/null"),
        "btrfs" => format!("btrfs filesystem label {q} {label}"),
        "vfat" | "fat" | "msdos" => format!("fatlabel {q} {label}"),
        "ntfs" => format!("ntfslabel {q} {label}"),
        other => {
            format!("echo {} >&2; exit 1", crate::shell::quote(&format!("cannot set a label on a {other} file system")))
        }
    };
    guest_sh(vm, &format!("set -e\n{cmd}\n{label_cmd}"), &[])
        .map_err(|e| match e {
            BuildError::Error(m) => BuildError::Error(format!("making the {fs} file system failed: {m}")),
            other => other,
        })
        .map(|_| ())
}

/// `--extra-packages`: install-packages in the chroot right after pre-install.d, through the
/// logging wrapper (TARGET_DIR is the aux root, so no environment.d is sourced, as in virt-dib).
fn install_packages(vm: &mut BuildVm, runner: &PhaseRunner<'_>, pkgs: &[String]) -> Result<(), BuildError> {
    let list = pkgs.join(" ");
    runner.reporter.message(&format!("Installing: {list}"));
    runner.append_log(vm, &format!("Installing {list}...\n"))?;
    let log = format!("{}/perm/{}", env::AUX, runner.log_name);
    let argv = [&format!("{}/run-and-log.sh", env::AUX), log.as_str(), "-", env::AUX, "install-packages.sh", "", "0"];
    let argv: Vec<&str> = argv.iter().map(|a| a.as_ref()).collect();
    let env = runner.vars.script_env(&Context::Chroot);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let quiet = runner.reporter.quiet();
    vm.trace_command(&argv);
    let status = vm
        .agent()?
        .run_chrooted(&argv, &env, Some("/"), SYSROOT, |_, d| {
            if !quiet {
                use std::io::Write;
                let _ = std::io::stdout().write_all(d);
            }
        })
        .map_err(|e| format!("lost the build VM while installing packages: {e}"))?;
    if status != microdib_proto::client::ExitStatus::Code(0) {
        return Err(BuildError::Error(format!(
            "installing the extra packages failed: {}",
            phases::status_text(&status)
        )));
    }
    if runner.vars.debug >= 1 {
        runner.reporter.debug("package installation completed");
    }
    Ok(())
}

/// Sends a host directory into the appliance as a tar stream owned by root.
pub(super) fn tar_in(vm: &mut BuildVm, src: &Path, dest: &str) -> Result<(), BuildError> {
    use std::process::Stdio;
    guest_sh(vm, r#"mkdir -p "$1""#, &[dest])?;
    let mut tar = signals::command("tar")
        .args(["--owner=root", "--group=root", "-C"])
        .arg(src)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let Some(out) = tar.stdout.take() else { return Err("tar has no output".to_owned().into()) };
    let mut errors = capture::Tail::new(capture::MESSAGE_MAX);
    let status = vm.agent()?.tar_in(dest, out, |_, d| errors.feed(d));
    let host = tar.wait().map_err(|e| format!("tar failed: {e}"))?;
    let status = status.map_err(|e| format!("copying {} into the build VM failed: {e}", src.display()))?;
    if !host.success() || status != microdib_proto::client::ExitStatus::Code(0) {
        return Err(BuildError::Error(format!(
            "copying {} into the build VM failed: {}",
            src.display(),
            errors.text()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_stamps() {
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, random_uuid());
        let s = utc_stamp();
        assert_eq!(s.len(), 15, "{s}");
        assert!(s.starts_with("20") && &s[8..9] == "-");
    }
}
