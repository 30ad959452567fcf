//! diskimage-builder's own elements from its PyPI package, unmodified: dib-run-parts,
//! install-static, manifests and package-installs (with dpkg, base and what they pull in) on a
//! Debian 12 root made by debootstrap on the host (hack/dib-rootfs), with `--extra-packages`
//! through apt from the local repository inside that root. microdib runs as a user without
//! root or sudo rights (tests/common/unprivileged.rs), from copies in /tmp.

mod common;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::unprivileged::{StagedMicrodib, USER_PATH};
use common::*;

#[test]
fn real_diskimage_builder_elements_build_a_debian_image() {
    let [rootfs, dib, python] = dib_rootfs();
    let staged = StagedMicrodib::new("dib");
    let who = staged.builder;
    // The whole venv, so that its python finds its site-packages beside it (pyvenv.cfg).
    let venv = Path::new(&python).parent().and_then(Path::parent).expect("the venv's python is VENV/bin/python");
    let venv_copy = staged.stage.copy(venv, "venv");
    let python = venv_copy.join(Path::new(&python).strip_prefix(venv).unwrap());
    let dib = venv_copy.join(Path::new(&dib).strip_prefix(venv).unwrap());
    // package-installs' host step imports yaml with this python: as the builder too.
    let home = staged.stage.path("home");
    let user_env = [("HOME", home.as_os_str()), ("PATH", USER_PATH.as_ref())];
    let imports = who.command(&user_env, &python).args(["-c", "import yaml"]).output().unwrap();
    let said = text(&imports.stderr);
    assert!(imports.status.success(), "the builder cannot run the venv's python {}: {said}", python.display());

    let build = FixtureBuild::as_user(&staged, &["debian-rootfs", "dib-run-parts", "install-static", "manifests"]);
    // The Debian root reaches the build through the image cache on a helper drive.
    let cache = build.path("helper/home/.cache/image-create");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(&rootfs, cache.join("microdib-debian-rootfs.tar.gz")).unwrap();
    let helper = build.path("helper.img");
    tool("mkfs.ext4", &["-q", "-F", "-d", build.path("helper").to_str().unwrap(), helper.to_str().unwrap(), "1G"]);
    // --skip-base: diskimage-builder's base wants open-iscsi and friends, which the local
    // repository does not carry.
    let r = build
        .lib(dib.join("lib"))
        .element_dirs(&[dib.join("elements"), staged.elements.clone()])
        .name("deb")
        .options(&["--python", python.to_str().unwrap(), "--size", "1536M", "--formats", "raw", "--skip-base"])
        .options(&["--drive", helper.to_str().unwrap(), "--extra-packages", "less"])
        .run();
    r.succeeded();
    let owner = std::fs::metadata(r.output("deb.raw")).unwrap().uid();
    assert_eq!(owner, who.uid, "the image is not the builder's: microdib ran as someone else");
    let progress = r.progress();
    for m in [
        "Running: root.d/10-unpack-rootfs",
        "Running: extra-data.d/20-manifest-dir",
        "Running: extra-data.d/99-squash-package-install",
        "Running: install.d/01-package-installs",
        "Running: install.d/10-install-static-files",
        "Installing: less",
        "Done",
    ] {
        assert!(progress.contains(&m), "no message {m:?} in {progress:?}");
    }
    let image = r.image();
    for f in ["/etc/microdib-static.conf", "/usr/bin/tree", "/usr/bin/less", "/usr/bin/dib-run-parts"] {
        assert!(image.stat(f).is_some(), "no {f} in the image");
    }
    assert_eq!(
        image.file("/etc/microdib-static.conf").as_deref(),
        Some("installed by diskimage-builder's install-static element\n")
    );
    let status = image.file("/var/lib/dpkg/status").unwrap_or_default();
    let installed: Vec<&str> = status
        .split("\n\n")
        .filter(|p| p.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|p| p.lines().find_map(|l| l.strip_prefix("Package: ")))
        .collect();
    for p in ["tree", "less", "python3-dib-utils", "dib-utils"] {
        assert!(installed.contains(&p), "{p} is not installed");
    }
    // manifests: the image's /etc/dib-manifests, copied into NAME.d by its cleanup.d.
    assert!(image.stat("/etc/dib-manifests/dib_arguments").is_some());
    let named: Vec<String> = std::fs::read_dir(r.output("deb.d/dib-manifests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(named.iter().any(|n| n.starts_with("dib-manifest-dpkg-")), "no dpkg manifest in deb.d: {named:?}");
    assert_eq!(image.ls("/tmp"), Vec::<String>::new());
}
