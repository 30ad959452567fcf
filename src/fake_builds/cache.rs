//! The phase cache in whole builds: what a rebuild reuses after each kind of change, what it
//! says, and that what it makes is what the first build made.

use std::collections::BTreeMap;
use std::path::Path;

use super::{FakeBuild, Outcome};
use crate::guest::fake::{FakeFile, FakeVm, Run};
use crate::guest::paths::SYSROOT;
use crate::guest::ExitStatus;

/// The element's scripts in the guest, in the order they run; finalise.d's comes after every
/// checkpoint.
const SCRIPTS: [&str; 6] = [
    "root.d/20-root",
    "pre-install.d/20-pre",
    "install.d/20-install",
    "post-install.d/20-post",
    "post-root.d/20-post-root",
    "finalise.d/20-final",
];

/// Every guest script of a build, in order, when nothing is reused.
fn everything() -> Vec<String> {
    let mut all = vec!["root.d/10-fake-os".to_owned()];
    all.extend(SCRIPTS.iter().map(|s| (*s).to_owned()));
    all
}

/// The scripts from `first` on.
fn from(first: &str) -> Vec<String> {
    let at = SCRIPTS.iter().position(|s| *s == first).unwrap();
    SCRIPTS[at..].iter().map(|s| (*s).to_owned()).collect()
}

/// A build whose element has a script in every phase, each leaving a file in the image that
/// says what it saw, and an extra-data.d script that copies a host file into it.
struct Layered {
    build: FakeBuild,
}

impl Layered {
    fn new() -> Layered {
        Layered::on(FakeBuild::new(&["layered"]))
    }

    fn on(build: FakeBuild) -> Layered {
        let host_input = build.dir.0.join("host-input");
        std::fs::write(&host_input, "first\n").unwrap();
        let extra = format!("#!/bin/bash\ncp {} \"$TMP_MOUNT_PATH/from-host\"\n", host_input.display());
        let mut files: Vec<(String, String)> =
            SCRIPTS.iter().map(|s| ((*s).to_owned(), "#!/bin/sh\n".to_owned())).collect();
        files.push(("extra-data.d/20-extra".into(), extra));
        files.push(("package-installs.yaml".into(), "vim:\n".into()));
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
        build.element("layered", &files);
        for script in SCRIPTS {
            let (phase, name) = script.split_once('/').unwrap();
            let file = format!("/{}", name);
            build.vm.on_script(phase, name, move |run: &mut Run<'_>| {
                let uuid = run.env.get("DIB_IMAGE_ROOT_FS_UUID").cloned().unwrap_or_default();
                run.write_in_target(&file, format!("root fs {uuid}\n").as_bytes());
                ExitStatus::Code(0)
            });
        }
        Layered { build }
    }

    fn edit(&self, rel: &str, text: &str) {
        self.build.element("layered", &[(rel, text)]);
    }

    fn host_input(&self, text: &str) {
        std::fs::write(self.build.dir.0.join("host-input"), text).unwrap();
    }

    fn run(&self) -> Outcome {
        let outcome = self.build.run();
        outcome.succeeded();
        outcome
    }

    /// The guest scripts the last run ran.
    fn ran(&self) -> Vec<String> {
        self.build.vm.elements_run()
    }

    fn image(&self) -> BTreeMap<String, FakeFile> {
        image(&self.build.vm)
    }
}

/// The image as the last build left it: the sysroot's files.
fn image(vm: &FakeVm) -> BTreeMap<String, FakeFile> {
    vm.0.borrow()
        .tree
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{SYSROOT}/")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn said(outcome: &Outcome, text: &str) {
    assert!(outcome.said.contains(text), "{text:?} not said in:\n{}", outcome.said);
}

/// The cache's entries: (phase, key) of each.
fn entries(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir.join("entries")) else { return Vec::new() };
    let mut v: Vec<String> = rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn a_rebuild_with_nothing_changed_reuses_every_checkpoint_and_makes_the_same_image() {
    let l = Layered::new();
    let cold = l.run();
    assert_eq!(l.ran(), everything());
    let first = l.image();
    assert!(first.contains_key(&format!("{SYSROOT}/from-host")), "{first:?}");
    assert_eq!(entries(&l.build.cache_dir()).len(), 6, "one checkpoint per boundary");
    assert!(!cold.records.iter().any(|r| r.contains("\"cache-hit\"")), "{:?}", cold.records);

    let warm = l.run();
    assert_eq!(l.ran(), from("finalise.d/20-final"));
    assert_eq!(l.image(), first, "the rebuilt image differs");
    for phase in ["root.d", "pre-install.d", "install.d", "post-install.d", "post-root.d"] {
        said(&warm, &format!("{phase}: reused from the cache ("));
        assert!(
            warm.records.iter().any(|r| r.contains("\"cache-hit\"") && r.contains(&format!("\"phase\": \"{phase}\""))),
            "no cache-hit record for {phase}: {:?}",
            warm.records
        );
    }
    said(&warm, "built 0 s ago; --no-cache rebuilds)");
    said(&warm, "install.d (reused)");
    assert_eq!(entries(&l.build.cache_dir()).len(), 6, "nothing new stored");
}

#[test]
fn a_restored_build_goes_on_with_the_root_file_system_it_was_made_with() {
    let l = Layered::new();
    l.run();
    let uuid_then = l.build.vm.file(&format!("{SYSROOT}/20-install")).unwrap().data;
    l.run();
    // finalise.d ran now, on the checkpoint's file system: it sees that file system's UUID.
    let finalise = l.build.vm.file(&format!("{SYSROOT}/20-final")).unwrap().data;
    assert_eq!(finalise, uuid_then);
}

#[test]
fn editing_a_finalise_d_script_reuses_every_checkpoint() {
    let l = Layered::new();
    l.run();
    l.edit("finalise.d/20-final", "#!/bin/sh\necho edited\n");
    l.run();
    assert_eq!(l.ran(), from("finalise.d/20-final"));
}

#[test]
fn editing_a_script_builds_its_phase_and_what_follows_again() {
    for edited in &SCRIPTS[..5] {
        let l = Layered::new();
        l.run();
        let first = l.image();
        l.edit(edited, "#!/bin/sh\necho edited\n");
        let warm = l.run();
        let expected = match *edited {
            "root.d/20-root" => everything(),
            _ => from(edited),
        };
        assert_eq!(l.ran(), expected, "after editing {edited}");
        assert_eq!(l.image().keys().collect::<Vec<_>>(), first.keys().collect::<Vec<_>>(), "after editing {edited}");
        said(&warm, "changed since the last build: aux");
    }
}

#[test]
fn a_changed_static_file_of_an_element_builds_everything_again() {
    let l = Layered::new();
    l.run();
    l.edit("package-installs.yaml", "vim:\nemacs:\n");
    let warm = l.run();
    assert_eq!(l.ran(), everything());
    said(&warm, "no checkpoint after root.d to reuse (changed since the last build: aux)");
    assert!(
        warm.records.iter().any(|r| r.contains("\"cache-miss\"")
            && r.contains("\"reason\": \"changed\"")
            && r.contains("\"changed\": \"aux\"")),
        "{:?}",
        warm.records
    );
}

#[test]
fn a_changed_or_added_variable_builds_everything_again() {
    let mut l = Layered::new();
    l.build.options(&["--envvar", "MY_SETTING=1"]);
    l.run();
    l.run();
    assert_eq!(l.ran(), from("finalise.d/20-final"), "the same variable again");
    l.build.options(&["--envvar", "MY_SETTING=2"]);
    let changed = l.run();
    assert_eq!(l.ran(), everything());
    said(&changed, "changed since the last build: env");
    l.build.options(&["--envvar", "MY_SETTING=2", "--envvar", "DIB_ANOTHER=x"]);
    l.run();
    assert_eq!(l.ran(), everything(), "an added variable");
}

#[test]
fn extra_data_d_always_runs_and_what_it_changed_decides_what_follows() {
    let l = Layered::new();
    l.run();
    l.host_input("second\n");
    let warm = l.run();
    assert_eq!(l.ran(), from("pre-install.d/20-pre"), "root.d reused, the rest built on the new host file");
    said(&warm, "root.d: reused from the cache");
    said(&warm, "no checkpoint after extra-data.d to reuse (changed since the last build: extra-data)");
    assert_eq!(l.build.vm.file(&format!("{SYSROOT}/from-host")).unwrap().data, b"second\n");
    // The host file as it was: everything reused again.
    l.host_input("first\n");
    l.run();
    assert_eq!(l.ran(), from("finalise.d/20-final"));
    assert_eq!(l.build.vm.file(&format!("{SYSROOT}/from-host")).unwrap().data, b"first\n");
}

#[test]
fn another_disk_layout_builds_everything_again() {
    for layout in
        [&["--size", "96M"][..], &["--mkfs-options", "-m 0"], &["--fs-type", "xfs"], &["--root-label", "other"]]
    {
        let mut l = Layered::new();
        l.run();
        l.build.option(layout);
        let warm = l.run();
        assert_eq!(l.ran(), everything(), "with {layout:?}");
        let miss =
            warm.said.lines().find(|l| l.contains("no checkpoint after root.d to reuse (changed")).unwrap_or_default();
        assert!(miss.contains("layout"), "with {layout:?}: {}", warm.said);
    }
}

#[test]
fn another_element_set_or_other_tools_reuse_nothing() {
    let l = Layered::on(FakeBuild::new(&["layered", "extra"]));
    l.build.element("extra", &[("README.rst", "x\n")]);
    l.run();
    let mut other = FakeBuild::new(&["layered"]);
    other.option(&["--cache-dir", &l.build.cache_dir().display().to_string()]);
    let other = Layered::on(other);
    other.run();
    assert_eq!(other.ran(), everything(), "another element set");

    let mut l = Layered::new();
    l.run();
    l.build.tools = "another guest kernel".into();
    let warm = l.run();
    assert_eq!(l.ran(), everything(), "other tools");
    said(&warm, "changed since the last build: tools");
}

#[test]
fn no_cache_builds_everything_and_stores_nothing() {
    let mut l = Layered::new();
    l.build.option(&["--no-cache"]);
    l.run();
    l.run();
    assert_eq!(l.ran(), everything());
    assert!(!l.build.cache_dir().exists(), "--no-cache made the cache");

    let mut l = Layered::new();
    l.run();
    l.build.option(&["--no-cache"]);
    let unused = l.run();
    assert_eq!(l.ran(), everything());
    assert!(!unused.said.contains("reused"), "{}", unused.said);
}

#[test]
fn entries_older_than_max_age_are_not_used() {
    let mut l = Layered::new();
    l.run();
    l.build.option(&["--cache-max-age", "0"]);
    let warm = l.run();
    assert_eq!(l.ran(), everything());
    said(&warm, "older than --cache-max-age");
    assert!(warm.records.iter().any(|r| r.contains("\"reason\": \"expired\"")), "{:?}", warm.records);
}

#[test]
fn a_damaged_entry_is_dropped_with_a_warning_and_built_again() {
    let l = Layered::new();
    l.run();
    let first = l.image();
    // The checkpoint after post-root.d: its disk flipped where the image's files are.
    let dir = l.build.cache_dir().join("entries");
    let post_root = entries(&l.build.cache_dir())
        .into_iter()
        .find(|k| std::fs::read_to_string(dir.join(k).join("manifest")).unwrap().contains("phase post-root.d"))
        .unwrap();
    let disk = dir.join(&post_root).join("disk");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[600] ^= 0xff;
    std::fs::write(&disk, bytes).unwrap();
    let warm = l.run();
    said(&warm, "the phase cache's entry after post-root.d was dropped");
    assert_eq!(l.ran(), from("post-root.d/20-post-root"), "the checkpoint before it was reused");
    assert_eq!(l.image(), first);
    assert!(entries(&l.build.cache_dir()).contains(&post_root), "stored again");
}

#[test]
fn two_builds_sharing_one_cache_at_once_both_succeed() {
    let shared = crate::testing::TempDir::new("shared-phase-cache");
    let cache = shared.0.join("phases").display().to_string();
    let builds: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut build = FakeBuild::new(&["layered"]);
                build.option(&["--cache-dir", &cache]);
                let l = Layered::on(build);
                l.run();
                l.ran()
            })
        })
        .collect();
    for b in builds {
        assert_eq!(b.join().unwrap(), everything());
    }
    let mut build = FakeBuild::new(&["layered"]);
    build.option(&["--cache-dir", &cache]);
    let l = Layered::on(build);
    // Another build directory, so another host file path in extra-data.d's script: reused up
    // to root.d only.
    l.run();
    assert_eq!(l.ran(), from("pre-install.d/20-pre"));
}

#[test]
fn the_cache_stays_within_its_size_bound() {
    let mut l = Layered::new();
    l.build.option(&["--cache-max-size", "100K"]);
    l.run();
    let dir = l.build.cache_dir().join("entries");
    let bytes: u64 = entries(&l.build.cache_dir())
        .iter()
        .flat_map(|k| std::fs::read_dir(dir.join(k)).unwrap())
        .map(|f| std::os::unix::fs::MetadataExt::blocks(&f.unwrap().metadata().unwrap()) * 512)
        .sum();
    assert!(bytes <= 100 << 10, "{bytes} bytes stored");
    assert!(!entries(&l.build.cache_dir()).is_empty(), "the newest entries stay");
}
