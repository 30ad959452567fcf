//! diskimage-builder's block-device layer, as disk-image-create drives it: when an element
//! provides `block-device` (block-device-mbr, -gpt, -efi), partitioning, mkfs and mounts are
//! done by diskimage-builder's own Python code (`diskimage_builder.block_device`, shipped next
//! to the `-B` library) run inside the appliance, on the target disk. The tree is built on a
//! scratch disk until post-install.d, then copied into the mounted image, as disk-image-create
//! copies its build directory. Without such an element, virt-dib's bare file system is made.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::EngineError;
use crate::elements::ElementIndex;
use crate::guest::paths::{self, BLOCK_PYTHON, BLOCK_WORK};
use crate::guest::{scripts, Guest};
use crate::report::Reporter;

/// The virtual element the layer's elements provide.
pub const PROVIDED: &str = "block-device";
/// Python modules the layer imports, besides the standard library.
const MODULES: &[&str] = &["yaml", "_yaml", "networkx", "stevedore"];

/// disk-image-create's `_arg_defaults_hack`: `vm` on the command line without any
/// `block-device-*` element gets the old default partitioning (EFI on arm64).
pub fn default_element(cmdline_elements: &[String], arch: &str) -> Option<&'static str> {
    let vm = cmdline_elements.iter().any(|e| e == "vm");
    let chosen = cmdline_elements.iter().any(|e| e.starts_with("block-device-"));
    (vm && !chosen).then_some(if matches!(arch, "arm64" | "aarch64") { "block-device-efi" } else { "block-device-mbr" })
}

/// The layer's plan for one build.
pub struct BlockLayer {
    /// The Python package directory (`<site-packages>/diskimage_builder`).
    package: PathBuf,
    /// config.yaml's text.
    config: String,
    /// Variables the layer reports after `create`, for finalise.d and cleanup.d.
    pub exported: Vec<(String, String)>,
}

impl BlockLayer {
    /// Some if an element of the build provides `block-device`. `lib` is `-B`; `user_config` is
    /// DIB_BLOCK_DEVICE_CONFIG from --envvar (`file://PATH` or inline YAML).
    pub fn plan(
        idx: &ElementIndex,
        expanded: &BTreeSet<String>,
        lib: &Path,
        arch: &str,
        user_config: Option<&str>,
    ) -> Result<Option<BlockLayer>, EngineError> {
        let providers: Vec<&String> = expanded
            .iter()
            .filter(|e| idx.get(e).is_some_and(|el| el.provides().iter().any(|p| p == PROVIDED)))
            .collect();
        let Some(first) = providers.first() else { return Ok(None) };
        let package = lib.parent().filter(|p| p.join("block_device/cmd.py").is_file()).ok_or_else(|| {
            EngineError::Invalid(format!(
                "element {first} needs diskimage-builder's block-device layer, but {} is not inside a diskimage_builder package (no block_device/cmd.py next to it)",
                lib.display()
            ))
        })?;
        let config = match user_config.filter(|c| !c.is_empty()) {
            Some(c) => match c.strip_prefix("file://") {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(EngineError::host(format!("DIB_BLOCK_DEVICE_CONFIG: cannot read {path}")))?,
                None => c.to_owned(),
            },
            None => element_config(idx, expanded, arch).unwrap_or_else(|| FALLBACK_CONFIG.to_owned()),
        };
        Ok(Some(BlockLayer { package: package.to_owned(), config, exported: Vec::new() }))
    }

    /// The host directories to copy into the appliance's PYTHON_DIR: (source, name there).
    fn python_tree(&self) -> Result<Vec<(PathBuf, String)>, EngineError> {
        let site = self.package.parent().unwrap_or(Path::new("/"));
        let mut out = vec![(self.package.clone(), "diskimage_builder".to_owned())];
        // stevedore finds the layer's plugins through the package's entry points.
        let dist = std::fs::read_dir(site)
            .map_err(EngineError::host(format!("cannot read {}", site.display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("diskimage_builder-") && n.ends_with(".dist-info"))
            .ok_or_else(|| EngineError::Invalid(format!("no diskimage_builder-*.dist-info in {}", site.display())))?;
        out.push((site.join(&dist), dist));
        for m in MODULES {
            let p = site.join(m);
            if p.is_dir() {
                out.push((p, (*m).to_owned()));
            } else if *m != "_yaml" {
                return Err(EngineError::Invalid(format!(
                    "diskimage-builder's block-device layer needs the Python module {m} beside it in {}",
                    site.display()
                )));
            }
        }
        Ok(out)
    }

    /// Copies the layer's code into the appliance and mounts the scratch disk at the sysroot
    /// for root.d to post-install.d (formatted first, unless a checkpoint filled it).
    pub fn prepare(&self, guest: &mut dyn Guest, scratch: Scratch) -> Result<(), EngineError> {
        for (src, name) in self.python_tree()? {
            guest.send_dir(&src, &format!("{BLOCK_PYTHON}/{name}"))?;
        }
        let (build, target) = (paths::disk(paths::BUILD_SERIAL), paths::disk(paths::TARGET_SERIAL));
        let state = match scratch {
            Scratch::Fresh => "fresh",
            Scratch::Restored => "restored",
        };
        guest.script(&scripts::BLOCK_LAYER_PREPARE, &[&build, &target, state])?;
        Ok(())
    }

    /// After post-install.d: partition and format the target disk through the layer, mount it,
    /// copy the tree built at the sysroot into it and bind it there instead. `params` is the
    /// rest of params.yaml (root-fs-type, root-label, image-size, root-fs-opts).
    pub fn enter_image(&mut self, guest: &mut dyn Guest, params: &Params, r: &Reporter) -> Result<(), EngineError> {
        let yaml = format!(
            "config: {BLOCK_WORK}/config.yaml\nimage-dir: {BLOCK_WORK}/image\nroot-fs-type: {}\nroot-label: {}\nmount-base: {BLOCK_WORK}/mnt\nbuild-dir: {BLOCK_WORK}\nimage-size: {}KiB\nroot-fs-opts: {}\n",
            yaml_string(&params.fs_type),
            yaml_string(&params.root_label),
            params.size_bytes / 1024,
            yaml_string(&params.mkfs_opts),
        );
        guest.script(&scripts::BLOCK_LAYER_CONFIG, &[&self.config, &yaml])?;
        r.message("Partitioning the disk (diskimage-builder's block-device layer)");
        self.layer(guest, &["init"])?;
        // `create` partitions, makes the file systems and mounts them under mount-base.
        self.layer(guest, &["create"])?;
        let mut exported = Vec::new();
        for (var, symbol) in [
            ("IMAGE_BLOCK_DEVICE", "image-block-device"),
            ("IMAGE_BLOCK_DEVICES", "image-block-devices"),
            ("DIB_ROOT_LABEL", "root-label"),
            ("DIB_ROOT_FSTYPE", "root-fstype"),
            ("DIB_BOOT_LABEL", "boot-label"),
            ("DIB_MOUNTPOINTS", "mount-points"),
        ] {
            let value = self.layer(guest, &["getval", symbol])?;
            exported.push((var.to_owned(), value.trim_end_matches('\n').to_owned()));
        }
        exported.push(("DIB_IMAGE_SIZE".to_owned(), (params.size_bytes / 1024).to_string()));
        exported.push(("DIB_BLOCK_DEVICE_PARAMS_YAML".to_owned(), format!("{BLOCK_WORK}/params.yaml")));
        self.exported = exported;
        // fstab goes to <build-dir>/built/etc/fstab: the tree, through the symlink.
        self.layer(guest, &["writefstab"])?;
        r.message("Copying the tree into the image");
        guest.script(&scripts::BLOCK_LAYER_ENTER, &[])?;
        Ok(())
    }

    /// After the outputs: unmount (the layer trims each file system), detach, forget.
    pub fn finish(&self, guest: &mut dyn Guest) -> Result<(), EngineError> {
        guest.sh(r#"set -e; sync; umount -R "$MICRODIB_SYSROOT""#, &[])?;
        self.layer(guest, &["umount"])?;
        self.layer(guest, &["cleanup"])?;
        Ok(())
    }

    /// Runs `python3 -m diskimage_builder.block_device.cmd ARGS` in the appliance; its stdout.
    fn layer(&self, guest: &mut dyn Guest, args: &[&str]) -> Result<String, EngineError> {
        guest
            .script(&scripts::BLOCK_LAYER, args)
            .map_err(EngineError::step(format!("block-device layer `{}` failed", args.join(" "))))
    }
}

/// The scratch disk as the build finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scratch {
    /// Empty: formatted for root.d.
    Fresh,
    /// A phase checkpoint's file system, restored into it.
    Restored,
}

/// What params.yaml says besides the layer's own paths.
pub struct Params {
    pub fs_type: String,
    pub root_label: String,
    pub size_bytes: u64,
    pub mkfs_opts: String,
}

/// A YAML single-quoted scalar (user text such as a label stays text).
fn yaml_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// disk-image-create's fallback when no element has a config: one loop image, no partitions.
const FALLBACK_CONFIG: &str = "- local_loop:\n    name: image0\n";

/// The first element (by name) with block-device-ARCH.yaml, else block-device-default.yaml.
fn element_config(idx: &ElementIndex, expanded: &BTreeSet<String>, arch: &str) -> Option<String> {
    let arch_file = match arch {
        "ppc64le" | "ppc64el" => "block-device-ppc64el.yaml".to_owned(),
        a => format!("block-device-{a}.yaml"),
    };
    expanded.iter().filter_map(|e| idx.get(e)).find_map(|el| {
        [arch_file.as_str(), "block-device-default.yaml"]
            .iter()
            .find_map(|f| std::fs::read_to_string(el.dir.join(f)).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn params_are_yaml_strings() {
        assert_eq!(yaml_string("img: it's"), "'img: it''s'");
        assert_eq!(yaml_string(""), "''");
    }

    #[test]
    fn vm_without_a_block_device_element_gets_disk_image_creates_default() {
        assert_eq!(default_element(&v(&["debian-minimal", "vm"]), "amd64"), Some("block-device-mbr"));
        assert_eq!(default_element(&v(&["debian-minimal", "vm"]), "arm64"), Some("block-device-efi"));
        assert_eq!(default_element(&v(&["vm", "block-device-gpt"]), "amd64"), None);
        assert_eq!(default_element(&v(&["debian-minimal"]), "amd64"), None);
    }
}
