//! The host's half before the build VM starts, in virt-dib's order: the elements (resolved and
//! shown), the carried environment, the block-device layer's plan, the aux tree with the merged
//! hooks, the build's variables and extra-data.d's plan.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::block_layer::BlockLayer;
use super::env::{self, BuildVars, HostPaths};
use super::extra_data::ExtraData;
use super::phases::ScriptOwners;
use super::workspace::Workspace;
use super::{block_layer, EngineError};
use crate::elements::{self, hooks, scripts::phase_scripts, ElementIndex};
use crate::plan::BuildPlan;
use crate::report::Reporter;

/// Elements whose builds write no image.
const NO_IMAGE_ELEMENTS: &[&str] = &["ironic-agent", "no-final-image"];

/// What the host prepared for one build.
pub struct Prepared {
    /// `--name`'s file name: NAME.d, the image name the elements see.
    pub image_name: String,
    /// No disk image is made (`--ramdisk`, or an element that says so).
    pub ramdisk: bool,
    /// diskimage-builder's block-device layer, when an element provides it.
    pub block_layer: Option<BlockLayer>,
    /// The merged hooks tree in the aux tree.
    pub hooks_dir: PathBuf,
    /// (phase, script, element) of every copied script.
    pub owners: ScriptOwners,
    pub vars: BuildVars,
    pub extra_data: ExtraData,
}

/// Resolves the elements and writes the aux tree the appliance receives.
pub fn prepare(c: &BuildPlan, r: &Reporter, ws: &Workspace) -> Result<Prepared, EngineError> {
    let name = Path::new(&c.image.name).file_name().map(|n| n.to_string_lossy().into_owned());
    let image_name = name.unwrap_or(c.image.name.clone());
    let requested = requested_elements(c);
    r.info(&format!("Elements: {}", requested.join(" ")));
    if c.debug >= 1 {
        r.debug(&format!("tmpdir: {}", ws.dir.display()));
        r.debug(&format!("element paths: {}", c.elements.paths.join(":")));
    }
    let idx = ElementIndex::load(&c.elements.paths);
    if c.debug >= 1 {
        show_index(r, &idx);
    }
    let expanded = elements::resolve(&idx, &requested, &c.elements.exclude_elements)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
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
    // virt-dib's ironic-agent (gone from diskimage-builder) and diskimage-builder's
    // no-final-image mean the same: the build's results are in NAME.d, no image is written.
    let ramdisk = c.elements.ramdisk || NO_IMAGE_ELEMENTS.iter().any(|e| expanded.contains(*e));
    let arch = c.elements.arch.clone();
    let block_config = user_vars.iter().find(|(k, _)| k == "DIB_BLOCK_DEVICE_CONFIG").map(|(_, v)| v.as_str());
    let block_layer = match ramdisk {
        true => None,
        false => BlockLayer::plan(&idx, &expanded, &c.lib_dir, &arch, block_config)?,
    };

    r.message("Preparing auxiliary data");
    ws.write_aux(&image_name, &c.extra_packages)?;
    let hooks_dir = ws.aux().join("hooks");
    hooks::build(&hooks_dir, &expanded, &idx, &c.elements.exclude_scripts, &c.elements.install_type)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    let owners = script_owners(&idx, &expanded);
    if c.debug >= 1 && crate::host::which("tree").is_some() {
        // virt-dib showed the workspace it had prepared; quietly skipped without tree.
        let _ = crate::host::command("tree").arg("-ps").arg(&ws.dir).status();
    }
    std::fs::create_dir_all(&c.image_cache)
        .map_err(EngineError::host(format!("cannot create {}", c.image_cache.display())))?;
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let host_env =
        std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()));
    let vars = BuildVars {
        user_vars,
        arch,
        image_name: image_name.clone(),
        elements: expanded_list,
        offline: c.vm.network.is_none(),
        root_label: c.image.root_label.clone(),
        root_uuid: crate::stamp::random_uuid(),
        dib_args: env::dib_args(&argv),
        dib_env: env::dib_env(host_env),
        debug: c.debug,
        fs_type: c.image.fs_type.clone(),
        checksum: c.outputs.checksum,
        block_device: "/dev/loop0".into(),
        layer_vars: Vec::new(),
    };
    let extra_data = extra_data_plan(c, ws, &hooks_dir, &idx, &expanded, &vars);
    if c.debug >= 1 {
        r.debug(&format!("DIB args:\n{}\n", vars.dib_args));
        r.debug(&format!("DIB envvars:\n{}", vars.dib_env));
    }
    Ok(Prepared { image_name, ramdisk, block_layer, hooks_dir, owners, vars, extra_data })
}

/// --debug: where each element was found and its hooks.
fn show_index(r: &Reporter, idx: &ElementIndex) {
    for (name, dir) in &idx.shadowed {
        r.debug(&format!("element {name} (in {}) already present", dir.display()));
    }
    r.debug("loaded elements:");
    for (name, el) in &idx.elements {
        r.debug(&format!("  {name} => {}", el.dir.display()));
        for (phase, scripts) in el.hooks() {
            r.debug(&format!("\t{phase:<20} {}", scripts.join(" ")));
        }
    }
    r.debug("");
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
fn script_owners(idx: &ElementIndex, expanded: &BTreeSet<String>) -> ScriptOwners {
    let mut v = ScriptOwners::default();
    for name in expanded {
        let Some(el) = idx.get(name) else { continue };
        let Ok(entries) = std::fs::read_dir(&el.dir) else { continue };
        for e in entries.flatten() {
            let phase = e.file_name().to_string_lossy().into_owned();
            if phase.ends_with(".d") && e.path().is_dir() {
                for s in phase_scripts(&e.path()) {
                    v.add(&phase, &s, name);
                }
            }
        }
    }
    v
}

/// extra-data.d's scripts (from the host copy of the hooks) and its host environment.
fn extra_data_plan(
    c: &BuildPlan,
    ws: &Workspace,
    hooks_dir: &Path,
    idx: &ElementIndex,
    expanded: &BTreeSet<String>,
    vars: &BuildVars,
) -> ExtraData {
    let mount = ws.dir.join("extra-data.d");
    let paths = HostPaths {
        mount: mount.display().to_string(),
        lib: c.lib_dir.display().to_string(),
        image_cache: c.image_cache.display().to_string(),
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
