//! The environment of element scripts in each context (virt-dib's table, notes §5.6): outside
//! the chroot in the appliance (block-device.d, root.d, post-root.d, pre-finalise.d,
//! cleanup.d), inside the chroot (pre-install.d, install.d, post-install.d, finalise.d,
//! install-packages), and on the host (extra-data.d).

use std::collections::BTreeMap;

/// Where a script runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// In the appliance, outside the target; `sysroot` is TARGET_ROOT (`/sysroot`, or
    /// `/sysroot/subroot` for root.d).
    Outside { sysroot: String },
    /// chroot into the target.
    Chroot,
}

// The appliance's own PATH (scripts outside the chroot see it after the hooks' bin), where
// the target is mounted in the appliance, and the aux tree as the target sees it.
use crate::guest::paths::{GUEST_PATH as APPLIANCE_PATH, IN_TARGET_AUX as AUX, SYSROOT};

/// What every script of a build shares.
#[derive(Debug, Clone, Default)]
pub struct BuildVars {
    /// `--envvar` resolved: (name, value) in command-line order.
    pub user_vars: Vec<(String, String)>,
    pub arch: String,
    pub image_name: String,
    pub elements: Vec<String>,
    pub offline: bool,
    pub root_label: String,
    pub root_uuid: String,
    pub dib_args: String,
    pub dib_env: String,
    pub debug: i64,
    pub fs_type: String,
    pub checksum: bool,
    pub block_device: String,
    /// What diskimage-builder's block-device layer reported (IMAGE_BLOCK_DEVICES,
    /// DIB_BOOT_LABEL, ...), once it has made the image; empty before and without it.
    pub layer_vars: Vec<(String, String)>,
}

/// `IMAGE_BLOCK_DEVICE_WITHOUT_PART`: `/dev/loop0p1` -> `/dev/loop0`; anything else unchanged.
pub fn without_partition(dev: &str) -> String {
    let trimmed = dev.trim_end_matches(|c: char| c.is_ascii_digit());
    if let Some(base) = trimmed.strip_suffix('p') {
        let digits = base.len() - base.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if base[..base.len() - digits].ends_with("loop") {
            return base.to_owned();
        }
    }
    dev.to_owned()
}

/// `--envvar` values in command-line order: `VAR` takes the host's value (dropped when unset),
/// `VAR=VALUE` sets it. A repeated name stays in the list (virt-dib shows every one); when the
/// variables are set, the first occurrence wins (`BuildVars::user_env`).
pub fn resolve_envvars(specs: &[String], host: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for spec in specs {
        let (name, value) = match spec.split_once('=') {
            Some((n, v)) => (n.to_owned(), v.to_owned()),
            None => match host(spec) {
                Some(v) => (spec.clone(), v),
                None => continue,
            },
        };
        out.push((name, value));
    }
    out
}

/// `DIB_ARGS`: argv[0] as is, then each argument single-quoted.
pub fn dib_args(argv: &[String]) -> String {
    let mut parts = Vec::new();
    if let Some(first) = argv.first() {
        parts.push(first.clone());
    }
    parts.extend(argv.iter().skip(1).map(|a| crate::shell::quote(a)));
    parts.join(" ")
}

/// `DIB_ENV`: the host's `DIB_*` variables as `NAME=value` lines.
pub fn dib_env(host: impl Iterator<Item = (String, String)>) -> String {
    host.filter(|(k, _)| k.starts_with("DIB_")).map(|(k, v)| format!("{k}={v}\n")).collect()
}

impl BuildVars {
    /// The `--envvar` variables as set: the first occurrence of a name wins.
    pub fn user_env(&self) -> BTreeMap<String, String> {
        self.user_vars.iter().rev().cloned().collect()
    }

    /// The whole environment of a script in `ctx` (nothing else is inherited).
    pub fn script_env(&self, ctx: &Context) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        // What the appliance's own environment gives every command; --envvar may replace it.
        for (k, v) in [("LC_ALL", "C"), ("SHELL", "/bin/sh"), ("TERM", "dumb"), ("PATH", APPLIANCE_PATH)] {
            env.insert(k.to_owned(), v.to_owned());
        }
        // User variables next: the system ones below win over them, as in virt-dib.
        env.extend(self.user_env());
        let base_path = env.get("PATH").cloned().unwrap_or_default();
        let (ms, sysroot) = match ctx {
            Context::Outside { sysroot } => (SYSROOT, sysroot.as_str()),
            Context::Chroot => ("", ""),
        };
        let aux = format!("{ms}{AUX}");
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        set("HOME", format!("{aux}/perm/home"));
        set("TMP", format!("{ms}/tmp"));
        set("TMPDIR", format!("{ms}/tmp"));
        set("TMP_DIR", format!("{ms}/tmp"));
        set("TMP_MOUNT_PATH", sysroot.to_owned());
        set("TARGET_ROOT", sysroot.to_owned());
        set("TMP_HOOKS_PATH", format!("{aux}/hooks"));
        set("_LIB", format!("{aux}/lib"));
        set("_PREFIX", format!("{aux}/elements"));
        // diskimage-builder's lib/common-defaults and ramdisk builds (the ramdisk element's
        // post-install.d, under `set -u`) expand these; disk-image-create leaves the first
        // unexported and the second unset. The ramdisk is written to TMP_IMAGE_PATH first.
        set("_BASE_ELEMENT_DIR", format!("{aux}/elements"));
        set("TMP_IMAGE_PATH", format!("{aux}/image.raw"));
        set("ARCH", self.arch.clone());
        set("IMAGE_NAME", self.image_name.clone());
        set("IMAGE_ELEMENT", self.elements.join(" "));
        set("DIB_OFFLINE", if self.offline { "1" } else { "" }.to_owned());
        set("DIB_ROOT_LABEL", self.root_label.clone());
        set("DIB_IMAGE_ROOT_FS_UUID", self.root_uuid.clone());
        set("DIB_IMAGE_CACHE", format!("{aux}/perm/home/.cache/image-create"));
        set("TMP_BUILD_DIR", aux.clone());
        set("TMP_IMAGE_DIR", aux.clone());
        set("DIB_MANIFEST_SAVE_DIR", format!("{aux}/out/{}.d", self.image_name));
        set("IMAGE_BLOCK_DEVICE", self.block_device.clone());
        set("IMAGE_BLOCK_DEVICE_WITHOUT_PART", without_partition(&self.block_device));
        set("DIB_ARGS", self.dib_args.clone());
        set("DIB_ENV", self.dib_env.clone());
        set("DIB_DEBUG_TRACE", self.debug.to_string());
        set("DIB_NO_TMPFS", "1".into());
        set("FS_TYPE", self.fs_type.clone());
        set("DIB_CHECKSUM", if self.checksum { "1" } else { "" }.to_owned());
        for (k, v) in &self.layer_vars {
            set(k, v.clone());
        }
        let path = match ctx {
            Context::Outside { .. } => format!("{aux}/fake-bin:{aux}/hooks/bin:{base_path}"),
            Context::Chroot => {
                format!("{aux}/hooks/bin:{base_path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            }
        };
        set("PATH", path);
        env
    }
}

/// What only the host knows, for extra-data.d.
#[derive(Debug, Clone, Default)]
pub struct HostPaths {
    /// The host view of the image (`TMP_MOUNT_PATH`).
    pub mount: String,
    /// The `-B` directory.
    pub lib: String,
    pub image_cache: String,
    pub python: String,
    /// `-p` paths as given, joined by `:`.
    pub elements_path: String,
    /// The host copy of the aux tree (for fake-bin).
    pub aux: String,
}

impl BuildVars {
    /// What extra-data.d gets on top of the host environment (notes §5.2, §5.6 column H):
    /// `--envvar` values first, then PATH with the fake sudo, then diskimage-builder's variables.
    pub fn host_env(&self, h: &HostPaths, host_path: &str) -> BTreeMap<String, String> {
        let mut env = self.user_env();
        let base_path = env.get("PATH").cloned().unwrap_or_else(|| host_path.to_owned());
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        set("PATH", format!("{}/fake-bin:{base_path}", h.aux));
        set("TMP_MOUNT_PATH", h.mount.clone());
        set("TMP_HOOKS_PATH", format!("{}{AUX}/hooks", h.mount));
        set("TMPDIR", format!("{}/tmp", h.mount));
        set("TMP_DIR", format!("{}/tmp", h.mount));
        set("_LIB", h.lib.clone());
        set("ARCH", self.arch.clone());
        set("IMAGE_NAME", self.image_name.clone());
        set("IMAGE_ELEMENT", self.elements.join(" "));
        set("ELEMENTS_PATH", h.elements_path.clone());
        set("DIB_OFFLINE", if self.offline { "1" } else { "" }.to_owned());
        set("DIB_ROOT_LABEL", self.root_label.clone());
        set("DIB_IMAGE_ROOT_FS_UUID", self.root_uuid.clone());
        set("DIB_IMAGE_CACHE", h.image_cache.clone());
        set("DIB_ARGS", self.dib_args.clone());
        set("DIB_ENV", self.dib_env.clone());
        set("DIB_DEBUG_TRACE", self.debug.to_string());
        set("FS_TYPE", self.fs_type.clone());
        set("DIB_CHECKSUM", if self.checksum { "1" } else { "" }.to_owned());
        set("DIB_PYTHON_EXEC", h.python.clone());
        env
    }
}

/// The element information extra-data.d scripts get: `IMAGE_ELEMENT_YAML` and the exported
/// bash function `get_image_element_array`, as shell text for the wrapper to evaluate.
pub fn element_info(elements: &[(String, String)]) -> String {
    use crate::shell::quote;
    let mut sorted = elements.to_vec();
    sorted.sort();
    let yaml: Vec<String> = sorted.iter().map(|(e, d)| format!("{e}: {}", quote(d))).collect();
    let array: Vec<String> = sorted.iter().map(|(e, d)| format!("[{e}]={}", quote(d))).collect();
    format!(
        "export IMAGE_ELEMENT_YAML={}\nfunction get_image_element_array {{\n  echo {}\n}}\nexport -f get_image_element_array\n",
        quote(&format!("{{{}}}", yaml.join(", "))),
        quote(&array.join(" "))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BuildVars {
        BuildVars {
            user_vars: vec![("FOO".into(), "1".into()), ("ARCH".into(), "user".into())],
            arch: "amd64".into(),
            image_name: "img".into(),
            elements: vec!["base".into(), "myos".into()],
            root_label: "cloudimg-rootfs".into(),
            root_uuid: "u-u-i-d".into(),
            fs_type: "ext4".into(),
            block_device: "/dev/loop0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn outside_and_chroot_values() {
        let a = vars().script_env(&Context::Outside { sysroot: "/sysroot/subroot".into() });
        assert_eq!(a["TARGET_ROOT"], "/sysroot/subroot");
        assert_eq!(a["TMP_MOUNT_PATH"], "/sysroot/subroot");
        assert_eq!(a["HOME"], "/sysroot/tmp/in_target.aux/perm/home");
        assert_eq!(a["TMPDIR"], "/sysroot/tmp");
        assert_eq!(a["DIB_MANIFEST_SAVE_DIR"], "/sysroot/tmp/in_target.aux/out/img.d");
        assert_eq!(a["_BASE_ELEMENT_DIR"], "/sysroot/tmp/in_target.aux/elements");
        assert_eq!(a["TMP_IMAGE_PATH"], "/sysroot/tmp/in_target.aux/image.raw");
        assert_eq!(a["DIB_IMAGE_CACHE"], "/sysroot/tmp/in_target.aux/perm/home/.cache/image-create");
        assert_eq!(
            a["PATH"],
            "/sysroot/tmp/in_target.aux/fake-bin:/sysroot/tmp/in_target.aux/hooks/bin:/sbin:/usr/sbin:/bin:/usr/bin"
        );
        assert_eq!(a["IMAGE_ELEMENT"], "base myos");
        assert_eq!(a["DIB_NO_TMPFS"], "1");
        assert_eq!(a["DIB_OFFLINE"], "");
        // --envvar cannot override a system variable, but comes through otherwise.
        assert_eq!((a["ARCH"].as_str(), a["FOO"].as_str()), ("amd64", "1"));
        assert_eq!(a["LC_ALL"], "C");
        // A PATH given with --envvar is the base the hooks' directories go in front of.
        let mut v = vars();
        v.user_vars.push(("PATH".into(), "/opt/bin".into()));
        v.user_vars.push(("TERM".into(), "xterm".into()));
        let a = v.script_env(&Context::Outside { sysroot: "/sysroot".into() });
        assert_eq!(a["PATH"], "/sysroot/tmp/in_target.aux/fake-bin:/sysroot/tmp/in_target.aux/hooks/bin:/opt/bin");
        assert_eq!(a["TERM"], "xterm");
        let c = vars().script_env(&Context::Chroot);
        assert_eq!(c["TARGET_ROOT"], "");
        assert_eq!(c["TMP_HOOKS_PATH"], "/tmp/in_target.aux/hooks");
        assert_eq!(c["TMPDIR"], "/tmp");
        assert_eq!(
            c["PATH"],
            "/tmp/in_target.aux/hooks/bin:/sbin:/usr/sbin:/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
    }

    #[test]
    fn envvar_resolution() {
        let host = |k: &str| (k == "SET").then(|| "from-host".to_owned());
        let specs: Vec<String> = ["A=1", "SET", "UNSET", "A=2", "B=x=y"].iter().map(|s| s.to_string()).collect();
        let user_vars = resolve_envvars(&specs, host);
        assert_eq!(
            user_vars,
            vec![
                ("A".into(), "1".into()),
                ("SET".into(), "from-host".into()),
                ("A".into(), "2".into()),
                ("B".into(), "x=y".into())
            ]
        );
        // Set, the first occurrence wins (virt-dib: `--envvar FOO=1 --envvar FOO=2` gives 1).
        let v = BuildVars { user_vars, ..Default::default() };
        assert_eq!(v.user_env()["A"], "1");
        assert_eq!(v.script_env(&Context::Chroot)["A"], "1");
    }

    #[test]
    fn args_env_and_partitions() {
        let argv: Vec<String> = ["virt-dib", "-B", "/x y", "it's"].iter().map(|s| s.to_string()).collect();
        assert_eq!(dib_args(&argv), "virt-dib '-B' '/x y' 'it'\\''s'");
        let host =
            vec![("DIB_A".to_owned(), "1".to_owned()), ("PATH".into(), "/bin".into()), ("DIB_B".into(), "x".into())];
        assert_eq!(dib_env(host.into_iter()), "DIB_A=1\nDIB_B=x\n");
        assert_eq!(without_partition("/dev/loop0p1"), "/dev/loop0");
        assert_eq!(without_partition("/dev/loop12p3"), "/dev/loop12");
        assert_eq!(without_partition("/dev/loop0"), "/dev/loop0");
        assert_eq!(without_partition("/dev/vda1"), "/dev/vda1");
        assert_eq!(without_partition("/dev/mapper/loop0p1"), "/dev/mapper/loop0");
    }

    #[test]
    fn element_info_defines_the_yaml_and_the_array_function() {
        let info = element_info(&[("b".into(), "/p/it's b".into()), ("a".into(), "/p/a".into())]);
        let script = format!("{info}\nbash -c 'echo \"$IMAGE_ELEMENT_YAML\"; get_image_element_array; eval declare -A e=($(get_image_element_array)); echo \"${{e[b]}}\"'");
        let out = std::process::Command::new("bash").arg("-c").arg(script).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "{a: '/p/a', b: '/p/it'\\''s b'}\n[a]='/p/a' [b]='/p/it'\\''s b'\n/p/it's b\n"
        );
    }

    #[test]
    fn offline_and_checksum_flags() {
        let mut v = vars();
        v.offline = true;
        v.checksum = true;
        let env = v.script_env(&Context::Chroot);
        assert_eq!((env["DIB_OFFLINE"].as_str(), env["DIB_CHECKSUM"].as_str()), ("1", "1"));
        v.offline = false;
        v.checksum = false;
        let env = v.script_env(&Context::Chroot);
        assert_eq!((env["DIB_OFFLINE"].as_str(), env["DIB_CHECKSUM"].as_str()), ("", ""));
    }

    #[test]
    fn host_values_override_envvars_and_keep_the_host_path() {
        let mut v = vars();
        v.user_vars = vec![("ARCH".into(), "mine".into()), ("FROM_USER".into(), "1".into())];
        let h = HostPaths { mount: "/w/extra-data.d".into(), aux: "/w/in_target.aux".into(), ..Default::default() };
        let env = v.host_env(&h, "/usr/bin:/bin");
        assert_eq!(env["PATH"], "/w/in_target.aux/fake-bin:/usr/bin:/bin");
        assert_eq!(env["ARCH"], v.arch);
        assert_eq!(env["FROM_USER"], "1");
        assert_eq!(env["TMP_HOOKS_PATH"], "/w/extra-data.d/tmp/in_target.aux/hooks");
        for absent in ["TARGET_ROOT", "HOME", "TMP", "DIB_MANIFEST_SAVE_DIR", "IMAGE_BLOCK_DEVICE", "DIB_NO_TMPFS"] {
            assert!(!env.contains_key(absent), "{absent}");
        }
    }
}
