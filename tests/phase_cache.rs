//! The phase cache with a real build VM: a build stores a checkpoint at each boundary, and a
//! rebuild after a finalise.d edit restores the one after root.d before the VM opens the disk
//! and the one after post-root.d in place (the guest unmounts, the host rewrites the disk it
//! has open, the guest mounts again), then writes the image the first build wrote but for
//! what the edit changed. Each rule of what invalidates what is tested against a fake build VM
//! in src/fake_builds/cache.rs.

use std::path::Path;

mod common;
use common::*;

on_each_backend!(
    a_rebuild_after_a_finalise_d_edit_reuses_every_checkpoint,
    a_rebuild_after_a_finalise_d_edit_reuses_every_checkpoint_on_our_kvm => rebuild_after_finalise_edit
);

const ELEMENTS: [&str; 2] = ["fixture-os", "layers"];

/// The fixture OS with a script in install.d, post-root.d and finalise.d, each leaving a file.
fn layered(build: FixtureBuild, vm: BuildVm, cache: &Path, finalise: &str) -> FixtureBuild {
    build
        .on(vm)
        .element(
            "layers",
            &[
                ("install.d/20-install", "#!/bin/bash\nset -e\necho installed > /installed\n"),
                (
                    "post-root.d/20-post-root",
                    "#!/bin/bash\nset -e\necho \"$DIB_IMAGE_ROOT_FS_UUID\" > \"$TARGET_ROOT/uuid-at-post-root\"\n",
                ),
                ("finalise.d/20-final", finalise),
            ],
        )
        .options(&["--formats", "raw", "--no-network", "--cache-dir", cache.to_str().unwrap()])
}

const FINALISE: &str =
    "#!/bin/bash\nset -e\necho \"$DIB_IMAGE_ROOT_FS_UUID\" > /uuid-at-finalise\necho first > /final\n";
const FINALISE_EDITED: &str =
    "#!/bin/bash\nset -e\necho \"$DIB_IMAGE_ROOT_FS_UUID\" > /uuid-at-finalise\necho edited > /final\n";

fn rebuild_after_finalise_edit(vm: BuildVm) {
    // Where the builds' directories are, so a nested build reaches it too.
    let caches = tempfile::Builder::new().prefix("microdib-phases-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cache = caches.path().join("phases");
    let cold = layered(FixtureBuild::new(&ELEMENTS), vm, &cache, FINALISE).run();
    cold.succeeded();
    let cold_image = cold.image();
    assert_eq!(cold_image.file("/final").as_deref(), Some("first\n"));
    let cold_files = cold_image.ls("/");
    let entries = std::fs::read_dir(cache.join("entries")).unwrap().count();
    assert_eq!(entries, 6, "one checkpoint per boundary:\n{}", cold.stdout);

    let warm = layered(cold.rebuild(&ELEMENTS), vm, &cache, FINALISE_EDITED).run();
    warm.succeeded();
    for phase in ["root.d", "pre-install.d", "install.d", "post-install.d", "post-root.d"] {
        assert!(
            warm.stdout
                .lines()
                .chain(warm.stderr.lines())
                .any(|l| l.contains(&format!("{phase}: reused from the cache ("))),
            "{phase} not reused:\n{}\n{}",
            warm.stdout,
            warm.stderr
        );
    }
    assert!(!warm.progress().contains(&"Running: install.d/20-install"), "{:?}", warm.progress());
    assert!(warm.progress().contains(&"Running: finalise.d/20-final"), "{:?}", warm.progress());
    let image = warm.image();
    assert_eq!(image.file("/final").as_deref(), Some("edited\n"));
    assert_eq!(image.file("/installed").as_deref(), Some("installed\n"), "install.d's work is not in the image");
    // The restored file system is the first build's, and the build goes on with its UUID.
    let uuid = image.file("/uuid-at-post-root").unwrap();
    assert_eq!(image.file("/uuid-at-finalise"), Some(uuid.clone()));
    assert_eq!(image.superblock().get("Filesystem UUID").map(|u| format!("{u}\n")), Some(uuid));
    assert_eq!(image.ls("/"), cold_files, "the rebuilt image holds other files");
    assert_eq!(std::fs::read_dir(cache.join("entries")).unwrap().count(), 6, "nothing new stored");
}
