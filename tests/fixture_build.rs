//! One full build of the fixture elements per backend, with every output format: what only a
//! real build VM shows (each context's environment as the guest's wrapper sets it, the build log
//! on the helper drive, extra-data.d's changes reaching the image, the image clean-up, mkfs) and
//! every format checked against the others. Phase and script order, --envvar, failures and
//! reporting are tested against a fake build VM in src/fake_builds.

use std::collections::BTreeMap;

mod common;
use common::*;

on_each_backend!(
    /// On our own VMM it is the one full build that exercises vmm/'s devices.
    builds_the_fixture_os_with_every_phase, builds_the_fixture_os_with_every_phase_on_our_kvm => every_phase_build
);

const FORMATS: [&str; 6] = ["raw", "qcow2", "tar", "tgz", "vhd", "squash"];

/// What a build writes: every format, or (our VMM's build) what the VM's devices carry, the disk
/// and the tar stream. The other writers and the checksums are host code both backends share,
/// and nested (hack/nested-run) they would run emulated: minutes for nothing the first build
/// does not check.
#[derive(Clone, Copy, PartialEq)]
enum Outputs {
    Every,
    DiskAndStream,
}

fn every_phase_build(vm: BuildVm) {
    let outputs = if vm == BuildVm::OurKvm { Outputs::DiskAndStream } else { Outputs::Every };
    let build = FixtureBuild::new(&["fixture-os", "dumper"]).on(vm);
    // A helper drive of our own: the build log and HOME land on it.
    let helper = build.path("helper.img");
    make_ext4(&helper, "512M");
    let events = build.path("events");
    let machine_readable = format!("--machine-readable=file:{}", events.display());
    // docker import is the host's job: a stand-in records what it was given.
    let docker_log = build.path("docker.log");
    let docker = format!(r#"echo "$1 $3 entries=$(tar -tf "$2" | grep -c .)" > '{}'"#, docker_log.display());
    let build = match outputs {
        Outputs::Every => build
            .stand_in("docker", &docker)
            .options(&["--formats", "raw,tar,qcow2,tgz,vhd,squashfs,docker", "--docker-target", "microdib/fixture:1"])
            .options(&["--checksum"]),
        Outputs::DiskAndStream => build.options(&["--formats", "raw,tar"]),
    };
    let r = build
        // Host variables: only extra-data.d (and DIB_ENV, for DIB_*) may see them.
        .env("HOST_ONLY", "1")
        .env("DIB_FROM_HOST", "x")
        .options(&["--envvar", "FROM_USER=yes", "--envvar", "ARCH=overridden", "--mkfs-options", "-m 0"])
        .options(&["--drive", helper.to_str().unwrap(), "--drive-format", "raw"])
        .options(&[&machine_readable])
        .options(&["--extra-packages", "vim,less", "--extra-packages", "tree"])
        .run();
    r.succeeded();
    r.said("microdib: Expanded elements: base dumper fixture-os");
    // virt-dib's progress messages in its order: formats made from the mounted file system
    // (alphabetically), the unmount, file formats, then checksums.
    let (before_unmount, after_unmount): (&[&str], &[&str]) = match outputs {
        Outputs::Every => (
            &[
                "Importing the image to docker as ‘microdib/fixture:1’",
                "Compressing the image as squashfs",
                "Compressing the image as tar",
                "Compressing the image as tar.gz",
            ],
            &["Converting to qcow2", "Converting to VHD", "Generating checksums for "],
        ),
        Outputs::DiskAndStream => (&["Compressing the image as tar"], &[]),
    };
    let start = ["Preparing auxiliary data", "Opening the disks", "Setting up the destination root"];
    let middle = ["Installing: vim less tree", "Extracting data out of the image"];
    let messages = [&start[..], &middle, before_unmount, &["Umounting the disks"], after_unmount, &["Done"]];
    r.progress_in_order(&messages.concat());
    assert!(r.progress().contains(&"Running: extra-data.d/90-dump"));
    // Output of a script in the chroot comes through the real agent.
    r.said("dumper: install.d ran").said("dumper: extra-data.d ran");
    // What install.d left running is killed after its phase, and named.
    let killed = r.stdout.lines().find(|l| l.starts_with("microdib: install.d left sleep (pid "));
    assert!(killed.is_some_and(|l| l.ends_with(") running: killed")), "{}", r.stdout);
    let mut expected: Vec<String> = vec!["img.d".into()];
    match outputs {
        Outputs::Every => {
            for f in FORMATS {
                expected.extend([format!("img.{f}"), format!("img.{f}.md5"), format!("img.{f}.sha256")]);
            }
        }
        Outputs::DiskAndStream => expected.extend(["img.raw".into(), "img.tar".into()]),
    }
    expected.sort();
    assert_eq!(r.outputs(), expected, "outputs (and no temporary ones)");
    assert!(r.processes_left().is_empty(), "the build VM outlived the build: {:?}", r.processes_left());
    check_contexts(&r, outputs);
    check_extra_data_d(&r);
    check_helper_drive(&r, &helper);
    check_image(&r);
    check_tar(&r);
    if outputs == Outputs::Every {
        check_formats(&r, &docker_log);
    }
    // Record kinds the fake builds do not look for (those and the schema: src/fake_builds/reporting.rs).
    let records = std::fs::read_to_string(&events).unwrap();
    let kinds: Vec<String> = records
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    for kind in ["info", "output", "written"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} record in {kinds:?}");
    }
}

/// The environment, directory and programs each context gives its scripts, as the dumper
/// element recorded them in NAME.d.
fn check_contexts(r: &BuildResult, outputs: Outputs) {
    let checksum = if outputs == Outputs::Every { "1" } else { "" };
    let env: BTreeMap<&str, BTreeMap<String, String>> = all_phases().into_iter().map(|p| (p, r.env_of(p))).collect();
    let var = |phase: &str, name: &str| env[phase].get(name).cloned().unwrap_or_default();
    const AUX: &str = "/sysroot/tmp/in_target.aux";
    for p in ["block-device.d", "post-root.d", "pre-finalise.d", "cleanup.d"] {
        assert_eq!(var(p, "TARGET_ROOT"), "/sysroot", "{p}");
        assert_eq!(var(p, "HOME"), format!("{AUX}/perm/home"), "{p}");
        assert_eq!(var(p, "PATH"), format!("{AUX}/fake-bin:{AUX}/hooks/bin:/sbin:/usr/sbin:/bin:/usr/bin"), "{p}");
    }
    assert_eq!(var("root.d", "TARGET_ROOT"), "/sysroot/subroot");
    assert_eq!(var("root.d", "TMP_MOUNT_PATH"), "/sysroot/subroot");
    for p in CHROOT_PHASES {
        assert_eq!(var(p, "TARGET_ROOT"), "", "{p}");
        assert_eq!(var(p, "HOME"), "/tmp/in_target.aux/perm/home", "{p}");
        assert_eq!(r.named(&format!("{p}.pwd")), "/\n", "{p}");
    }
    // cleanup.d runs in NAME.d: its relative file lands there.
    assert_eq!(r.named("cleanup.d.pwd"), format!("{AUX}/out/img.d\n"));
    assert_eq!(r.named("relative-output"), "made by cleanup.d\n");
    for p in ["root.d", "install.d", "finalise.d", "cleanup.d"] {
        for (name, want) in [
            ("IMAGE_ELEMENT", "base dumper fixture-os"),
            ("ARCH", "amd64"),
            ("FIXTURE_OS_ENV", "from-environment-d"),
            ("DIB_DEFAULT_INSTALLTYPE", "source"),
            ("DIB_NO_TMPFS", "1"),
            ("IMAGE_BLOCK_DEVICE", "/dev/loop0"),
        ] {
            assert_eq!(var(p, name), want, "{p} {name}");
        }
    }
    for p in ["block-device.d", "root.d", "pre-install.d", "install.d", "finalise.d", "cleanup.d"] {
        for (name, want) in [
            ("DIB_DEBUG_TRACE", "0"),
            ("FS_TYPE", "ext4"),
            ("DIB_CHECKSUM", checksum),
            ("DIB_ROOT_LABEL", "cloudimg-rootfs"),
            ("DIB_OFFLINE", ""),
        ] {
            assert_eq!(var(p, name), want, "{p} {name}");
        }
    }
    // lib/die is sourced outside the chroot only.
    for p in all_phases() {
        let outside = !CHROOT_PHASES.contains(&p);
        assert_eq!(var(p, "DIE_SOURCED"), if outside { "1" } else { "" }, "{p}");
    }
    assert_eq!(r.named("install.d.dibenv"), "1\n", "DIB_FROM_HOST through DIB_ENV");
    // The host steps among the phases: --extra-packages right after pre-install.d, and
    // install-packages runs without environment.d.
    assert_eq!(
        r.named("phases"),
        "block-device.d root.d extra-data.d pre-install.d extra-packages install.d post-install.d post-root.d \
         pre-finalise.d finalise.d cleanup.d "
    );
    assert_eq!(r.named("install-packages.envd"), "no-env-d\n");
    // Fake sudo and dib-run-parts outside the chroot only; /tmp/in_target.d from after root.d.
    let outside = format!("{AUX}/fake-bin/sudo\n{AUX}/fake-bin/dib-run-parts\nno-in-target-link\n");
    assert_eq!(r.named("pre-finalise.d.path"), outside);
    assert_eq!(r.named("root.d.path"), outside);
    assert_eq!(r.named("install.d.path"), "no-sudo\nno-dib-run-parts\nin_target.aux/hooks\n");
}

/// Every phase the guest runs, in order.
fn all_phases() -> Vec<&'static str> {
    "block-device.d root.d pre-install.d install.d post-install.d post-root.d pre-finalise.d finalise.d cleanup.d"
        .split(' ')
        .collect()
}
const CHROOT_PHASES: [&str; 4] = ["pre-install.d", "install.d", "post-install.d", "finalise.d"];

/// extra-data.d on the host: the host's environment and the image's root in TMP_MOUNT_PATH.
fn check_extra_data_d(r: &BuildResult) {
    let env = r.env_of("extra-data.d");
    let var = |name: &str| env.get(name).cloned().unwrap_or_default();
    let mount = var("TMP_MOUNT_PATH");
    assert!(mount.starts_with('/') && mount.ends_with("/extra-data.d"), "{mount}");
    assert_eq!(var("TMP_HOOKS_PATH"), format!("{mount}/tmp/in_target.aux/hooks"));
    assert_eq!(var("TMPDIR"), format!("{mount}/tmp"));
    assert_eq!(var("_LIB"), fixtures().join("lib").display().to_string());
    assert_eq!(var("ELEMENTS_PATH"), fixtures().join("elements").display().to_string());
    assert!(var("DIB_IMAGE_CACHE").ends_with("/cache"));
    for (name, want) in [
        ("TARGET_ROOT", ""),
        ("FROM_USER", "yes"),
        ("ARCH", "amd64"),
        ("FIXTURE_OS_ENV", "from-environment-d"),
        ("IMAGE_ELEMENT", "base dumper fixture-os"),
        ("HOST_ONLY", "1"),
        ("DIE_SOURCED", "1"),
        ("HOME", &std::env::var("HOME").unwrap_or_default()),
    ] {
        assert_eq!(var(name), want, "extra-data.d {name}");
    }
    assert_eq!(r.named("extra-data.d.pwd"), format!("{}\n", workspace().display()));
    let python = var("DIB_PYTHON_EXEC");
    assert!(std::process::Command::new(&python).arg("-c").arg("pass").status().is_ok_and(|s| s.success()), "{python}");
    // The fake sudo, then get_image_element_array's and IMAGE_ELEMENT_YAML's views of the
    // elements' paths.
    let el = |e: &str| fixtures().join("elements").join(e).display().to_string();
    let elements = ["base", "dumper", "fixture-os"];
    let path = r.named("extra-data.d.path");
    let lines: Vec<&str> = path.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with('/') && l.ends_with("/fake-bin/sudo")), "{path}");
    let array = elements.map(|e| format!("[{e}]='{}'", el(e))).join(" ");
    let yaml = format!("{{{}}}", elements.map(|e| format!("{e}: '{}'", el(e))).join(", "));
    assert!(lines.contains(&array.as_str()) && lines.contains(&yaml.as_str()), "{path}");
}

/// The build log and HOME (the image cache) on the helper drive.
fn check_helper_drive(r: &BuildResult, helper: &std::path::Path) {
    let drive = Ext4::at(helper);
    let logs: Vec<String> =
        drive.ls("/").into_iter().filter(|n| n.starts_with("microdib-") && n.ends_with(".log")).collect();
    assert_eq!(logs.len(), 1, "build logs on the helper: {logs:?}");
    let log = drive.file(&format!("/{}", logs[0])).unwrap();
    for line in
        ["Running install.d/90-dump...", "Installing vim less tree...", "fixture install-packages: vim less tree"]
    {
        assert!(log.lines().any(|l| l == line), "no {line:?} in the build log:\n{log}");
    }
    assert!(drive.ls("/home/.cache").contains(&"image-create".to_owned()), "no image cache on the helper");
    // --extra-packages: the element's install-packages, in the chroot.
    r.said("fixture install-packages: vim less tree");
}

/// The image: extra-data.d's changes, the clean-up, the file system as mkfs made it.
fn check_image(r: &BuildResult) {
    let image = r.image();
    assert_eq!(image.file("/etc/from-host").as_deref(), Some("made on the host\n"));
    assert_eq!(image.stat("/etc/from-host").map(|s| s.uid), Some(0), "a new file from the host is root's");
    assert_eq!(image.file("/etc/group").as_deref(), Some("root:x:0:\nhostgrp:x:1234:\n"));
    assert_eq!(image.stat("/etc/group").map(|s| s.mode).as_deref(), Some("0644"));
    assert_eq!(image.file("/etc/from-hook").as_deref(), Some("from a hook extra-data.d added\n"));
    assert_eq!(image.stat("/etc/delete-me"), None);
    assert_eq!(image.file("/etc/base-marker").as_deref(), Some("base element ran\n"));
    assert_eq!(image.file("/etc/extra-packages").as_deref(), Some("vim less tree\n"));
    // The clean-up: logs emptied, /tmp emptied, /root's build log gone.
    assert_eq!(image.stat("/var/log/fixture.log").map(|s| s.size), Some(0));
    assert_eq!(image.ls("/tmp"), Vec::<String>::new());
    assert_eq!(image.ls("/root"), ["notes.txt"]);
    // mkfs: virt-dib's `-i 4096 -J size=64` for ext4, then --mkfs-options; the UUID scripts saw.
    let sb = image.superblock();
    assert_eq!(sb["Filesystem volume name"], "cloudimg-rootfs");
    assert_eq!(sb["Inode count"], "65536");
    assert_eq!(sb["Reserved block count"], "0");
    assert_eq!(sb["Total journal size"], "64M");
    let uuid = r.env_of("root.d").get("DIB_IMAGE_ROOT_FS_UUID").cloned().unwrap_or_default();
    assert_eq!(uuid.len(), 36, "{uuid:?}");
    assert_eq!(sb["Filesystem UUID"], uuid);
    let raw = r.output("img.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 256 << 20);
    // Blocks of a deleted file are trimmed: no trace of it in the raw disk.
    let marker =
        std::process::Command::new("grep").args(["-a", "-c", "MICRODIB-TRIM-MARKER"]).arg(&raw).output().unwrap();
    assert_eq!(text(&marker.stdout).trim(), "0");
}

/// The tar stream of the image's root, against the image.
fn check_tar(r: &BuildResult) {
    let tar = r.output("img.tar").display().to_string();
    assert_eq!(tool("tar", &["-xOf", &tar, "./etc/os-release"]), "PRETTY_NAME=\"microdib fixture OS\"\n");
    assert_eq!(tool("tar", &["-xOf", &tar, "./etc/from-host"]), "made on the host\n");
}

/// Each format against the raw disk or the tar, the docker import and the checksums.
fn check_formats(r: &BuildResult, docker_log: &std::path::Path) {
    let out = |f: &str| r.output(f).display().to_string();
    let (raw, tar, tgz, qcow2, vhd, squash) =
        (out("img.raw"), out("img.tar"), out("img.tgz"), out("img.qcow2"), out("img.vhd"), out("img.squash"));
    let tar_entries = tool("tar", &["-tf", &tar]).lines().count();
    // Compressed qcow2 clusters are data with no offset of their own in qemu-img's map.
    let map = tool("qemu-img", &["map", "--output=json", &qcow2]);
    assert!(map.lines().any(|l| l.contains("\"data\": true") && !l.contains("\"offset\"")), "qcow2 not compressed");
    assert!(tool_ok("qemu-img", &["compare", "-q", "-f", "qcow2", "-F", "raw", &qcow2, &raw]), "qcow2 differs");
    assert!(tool_ok("qemu-img", &["check", "-q", &qcow2]));
    assert!(tool_ok("qemu-img", &["compare", "-q", "-f", "vpc", "-F", "raw", &vhd, &raw]), "vhd differs");
    let info = tool("qemu-img", &["info", &vhd]);
    assert!(info.lines().any(|l| l == "file format: vpc"), "{info}");
    assert!(info.lines().any(|l| l == format!("virtual size: 256 MiB ({} bytes)", 256 << 20)), "{info}");
    assert!(tool_ok("gunzip", &["-t", &tgz]));
    assert_eq!(tool("tar", &["-tzf", &tgz]).lines().count(), tar_entries);
    assert!(tool_ok("sh", &["-c", "gunzip -c \"$0\" | cmp -s - \"$1\"", &tgz, &tar]), "tgz is not the tar");
    // squashfs against the tar: both unpacked, then compared entry by entry (owners, modes,
    // links, content, xattrs); squashfs leaves /dev empty as virt-dib's mksquashfs did.
    let (x_tar, x_squash) = (r.path("x-tar"), r.path("x-squash"));
    std::fs::create_dir(&x_tar).unwrap();
    let x_tar = x_tar.to_str().unwrap();
    tool("tar", &["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", &tar, "-C", x_tar]);
    for dev in std::fs::read_dir(format!("{x_tar}/dev")).unwrap() {
        let dev = dev.unwrap().path();
        std::fs::remove_dir_all(&dev).or_else(|_| std::fs::remove_file(&dev)).unwrap();
    }
    let x_squash = x_squash.to_str().unwrap();
    tool("unsquashfs", &["-q", "-n", "-d", x_squash, &squash]);
    let manifest = |dir: &str| tool(env!("CARGO_BIN_EXE_microdib-dev"), &["tree-manifest", dir]);
    assert_eq!(manifest(x_tar), manifest(x_squash), "squashfs differs from the tar");
    assert!(tool("unsquashfs", &["-s", &squash]).contains("Compression xz"));
    for unpacked in [x_tar, x_squash] {
        assert_eq!(xattr(&format!("{unpacked}/etc/os-release"), "user.microdib"), "kept", "{unpacked}");
    }
    let docker = std::fs::read_to_string(docker_log).unwrap();
    assert_eq!(docker, format!("import microdib/fixture:1 entries={tar_entries}\n"));
    let dir = r.output("");
    for f in FORMATS {
        for sum in ["sha256sum", "md5sum"] {
            let list = format!("img.{f}.{}", &sum[..sum.len() - 3]);
            let checked = std::process::Command::new(sum).arg("-c").arg(&list).current_dir(&dir).output().unwrap();
            assert!(checked.status.success(), "{list}: {}", text(&checked.stdout));
        }
    }
    for sums in ["img.raw.md5", "img.qcow2.sha256"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(r.output(sums)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o640, "{sums}");
    }
}
