//! The Debian package's layout (Cargo.toml `[package.metadata.deb]`, built by hack/package):
//! its `Recommends:` is the appliance list, every file it names exists or is made by
//! hack/package, and microdib installed in that layout (staged under a temporary prefix, as
//! `dpkg -i` would lay it out) finds its kernel and agent there and builds the example with no
//! source tree and no MICRODIB_* variables.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// One `[src, dest, mode]` line of the package's assets.
struct Asset {
    src: String,
    dest: String,
    mode: u32,
}

fn metadata() -> String {
    let toml = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let start = toml.find("[package.metadata.deb]").expect("no [package.metadata.deb] in Cargo.toml");
    let rest = &toml[start + 1..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_owned()
}

fn field(meta: &str, key: &str) -> String {
    let line = meta.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key}"));
    line.split_once(" = ").unwrap().1.trim_matches('"').to_owned()
}

fn assets(meta: &str) -> Vec<Asset> {
    meta.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[\""))
        .map(|l| {
            let parts: Vec<&str> = l.split('"').collect();
            Asset { src: parts[1].into(), dest: parts[3].into(), mode: u32::from_str_radix(parts[5], 8).unwrap() }
        })
        .collect()
}

#[test]
fn recommends_is_the_appliance_list_and_every_asset_exists() {
    let meta = metadata();
    let recommends: Vec<String> = field(&meta, "recommends").split(", ").map(str::to_owned).collect();
    let mut listed = initramfs::appliance::parse_package_list(initramfs::appliance::DEFAULT_PACKAGES);
    let mut sorted = recommends.clone();
    sorted.sort();
    listed.sort();
    assert_eq!(sorted, listed, "Cargo.toml's recommends and initramfs/data/appliance-packages.txt differ");
    let depends = field(&meta, "depends");
    assert!(depends.contains("passt") && depends.contains("qemu-system-x86"), "{depends}");
    let assets = assets(&meta);
    assert!(assets.len() >= 10, "assets not parsed");
    for a in &assets {
        if a.src.starts_with("target/") {
            continue; // made by cargo and hack/package
        }
        let found = expand(&workspace(), &a.src);
        assert!(!found.is_empty(), "asset {} matches nothing", a.src);
    }
    // The two files microdib looks for beside its executable, and the example.
    let dests: Vec<&str> = assets.iter().map(|a| a.dest.as_str()).collect();
    for d in ["usr/bin/", "usr/lib/microdib/vmlinuz", "usr/lib/microdib/microdib-agent", "usr/share/microdib/"] {
        assert!(dests.contains(&d), "{d} not installed");
    }
}

/// The files `pattern` (relative to `root`; `*` only, as in the assets) names, with their path
/// below the pattern's last literal directory (how cargo-deb places a glob's matches).
fn expand(root: &Path, pattern: &str) -> Vec<(PathBuf, PathBuf)> {
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal = parts.iter().take_while(|p| !p.contains('*')).count();
    let base = root.join(parts[..literal].join("/"));
    let mut found = vec![(base.clone(), PathBuf::new())];
    for p in &parts[literal..] {
        let mut next = vec![];
        for (dir, rel) in found {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            for n in names.into_iter().filter(|n| glob_match(p, n)) {
                next.push((dir.join(&n), rel.join(&n)));
            }
        }
        found = next;
    }
    found.retain(|(p, _)| p.exists() && (literal < parts.len() || p.is_file()));
    found
}

fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post),
    }
}

/// Lays the package out under `prefix` as dpkg would (the built binaries standing in for
/// target/release and target/package).
fn stage(prefix: &Path) {
    for a in assets(&metadata()) {
        let sources: Vec<(PathBuf, PathBuf)> = match a.src.as_str() {
            "target/release/microdib" => vec![(PathBuf::from(env!("CARGO_BIN_EXE_microdib")), PathBuf::new())],
            "target/package/vmlinuz" => vec![(kernel(), PathBuf::new())],
            s if s.ends_with("/microdib-agent") => vec![(guest_agent(), PathBuf::new())],
            s if s.starts_with("target/") => continue, // the gzipped man page
            s => expand(&workspace(), s),
        };
        for (src, rel) in sources {
            let dest = if a.dest.ends_with('/') {
                let name = if rel.as_os_str().is_empty() { PathBuf::from(src.file_name().unwrap()) } else { rel };
                prefix.join(&a.dest).join(name)
            } else {
                prefix.join(&a.dest)
            };
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&src, &dest).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(a.mode)).unwrap();
        }
    }
}

#[test]
fn installed_layout_builds_the_example_without_the_source_tree() {
    let prefix = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("installed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&prefix);
    stage(&prefix);
    let _ = appliance(); // the installed agent is the same binary: the cached appliance serves it
    let script = r#"set -u
unset MICRODIB_KERNEL MICRODIB_AGENT
export PATH="$PREFIX/usr/bin:$PATH"
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
cd "$d"
microdib --version | sed 's/^/version: /'
ex=$PREFIX/usr/share/microdib/examples
microdib -B "$ex/lib" -p "$ex/elements" --skip-base --size 256M --formats qcow2 --debug 1 \
  --name "$d/hello" --image-cache "$d/cache" hello-boot > "$d/log" 2>&1
echo "status=$?"
grep -e '^guest ' -e '^appliance: ' -e 'hello-boot: kernel' -e 'error' "$d/log" | sed 's/^/log: /'
qemu-img check -q "$d/hello.qcow2" && echo "qcow2: ok"
"#;
    let out = run_emulated_here(script, &[("PREFIX", prefix.to_str().unwrap())]);
    let s = text(&out.stdout);
    let lib = prefix.join("usr/lib/microdib");
    let has = |l: String| assert!(s.lines().any(|x| x == l), "missing {l:?} in:\n{s}");
    has(format!("version: guest kernel: {}/vmlinuz (installed)", lib.display()));
    has(format!("version: guest agent: {}/microdib-agent (installed)", lib.display()));
    has("status=0".into());
    has(format!("log: guest kernel: {}/vmlinuz (installed)", lib.display()));
    // --debug 1 names the appliance too (the one the test harness cached for this agent).
    assert!(s.lines().any(|l| l.starts_with("log: appliance: ") && l.ends_with(" (cached)")), "{s}");
    // The example's own kernel defaults to the installed one, found through PATH.
    assert!(s.lines().any(|l| l.starts_with("log: hello-boot: kernel ")), "{s}");
    has("qcow2: ok".into());
    std::fs::remove_dir_all(&prefix).unwrap();
}
