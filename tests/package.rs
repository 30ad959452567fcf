//! The Debian package's layout (Cargo.toml `[package.metadata.deb]`, built by hack/package):
//! its `Recommends:` is the appliance list, every file it names exists or is made by
//! hack/package, and microdib installed in that layout (staged under a temporary prefix, as
//! `dpkg -i` would lay it out) finds its kernel and agent there and builds the example with no
//! source tree and no MICRODIB_* variables.

mod common;

use std::path::PathBuf;

use common::installed::{assets, expand, field, metadata, stage};
use common::*;

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
