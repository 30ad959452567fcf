//! The Debian package's metadata (Cargo.toml `[package.metadata.deb]`, built by hack/package):
//! its `Recommends:` is the appliance list and every file it names exists or is made by
//! hack/package. The example built from the installed layout: tests/unprivileged.rs.

mod common;

use common::installed::{assets, expand, field, metadata};
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
