//! microdib's first promise, no root needed: the example builds as a user with no sudo rights
//! who cannot read root's files (sudo's 0440 `/etc/sudoers`, among the appliance packages'
//! files), and /etc stays as it was. CI runs as root: the build then runs as a system user made
//! for it, through setpriv (util-linux), from copies of what it needs that the user can read.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The system user the build runs as when the tests run as root.
const USER: &str = "microdib-unpriv";

/// Who runs the build: a user and its group.
#[derive(Clone, Copy)]
struct Builder {
    uid: u32,
    gid: u32,
}

fn euid() -> u32 {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// `id OPTION USER` as a number.
fn id(option: &str) -> Option<u32> {
    let out = Command::new("id").args([option, USER]).output().expect("cannot run id");
    out.status.success().then(|| text(&out.stdout).trim().parse().expect("id printed a number"))
}

/// The unprivileged system user (made if missing), or None when the tests run as a normal user
/// already: then the build runs as that user.
fn builder() -> Option<Builder> {
    if euid() != 0 {
        return None;
    }
    if id("-u").is_none() {
        let made = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", USER])
            .output()
            .expect("cannot run useradd (the passwd package)");
        assert!(made.status.success(), "useradd {USER}: {}", text(&made.stderr));
    }
    let b = Builder { uid: id("-u").unwrap(), gid: id("-g").unwrap() };
    assert_ne!(b.uid, 0, "{USER} is root");
    Some(b)
}

/// Copies `src` (a file or a tree) to `dest` with `cp -a`: modes kept, readable by everyone.
fn copy(src: &Path, dest: &Path) {
    let out = Command::new("cp").arg("-a").arg(src).arg(dest).output().expect("cannot run cp");
    assert!(out.status.success(), "cp -a {} {}: {}", src.display(), dest.display(), text(&out.stderr));
}

/// A directory `who` owns (its home, its outputs).
fn own_dir(path: &Path, who: Option<Builder>) {
    std::fs::create_dir_all(path).unwrap();
    if let Some(b) = who {
        std::os::unix::fs::chown(path, Some(b.uid), Some(b.gid)).unwrap();
    }
}

/// What the build needs, laid out where the builder can read it: $TMPDIR or the target
/// directory may be root's own, /tmp never is.
struct Stage {
    dir: PathBuf,
    microdib: PathBuf,
    kernel: PathBuf,
    agent: PathBuf,
    lib: PathBuf,
    elements: PathBuf,
    home: PathBuf,
    out: PathBuf,
}

impl Stage {
    fn new(who: Option<Builder>) -> Stage {
        let dir = PathBuf::from("/tmp").join(format!("microdib-unprivileged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Stage {
            microdib: dir.join("microdib"),
            kernel: dir.join("vmlinuz"),
            agent: dir.join("microdib-agent"),
            lib: dir.join("lib"),
            elements: dir.join("elements"),
            home: dir.join("home"),
            out: dir.join("out"),
            dir,
        };
        copy(Path::new(env!("CARGO_BIN_EXE_microdib")), &s.microdib);
        copy(&kernel(), &s.kernel);
        copy(&guest_agent(), &s.agent);
        copy(&fixtures().join("lib"), &s.lib);
        copy(&workspace().join("examples/elements"), &s.elements);
        std::fs::set_permissions(&s.kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
        own_dir(&s.home, who);
        own_dir(&s.out, who);
        s
    }

    /// The example's build (hack/example-build's command, with --debug 1 for the appliance's
    /// notes), as `who`, with only the environment a user's shell would give it.
    fn build_command(&self, who: Option<Builder>) -> Command {
        let mut cmd = match who {
            Some(b) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", b.uid)).arg(format!("--regid={}", b.gid)).arg("--clear-groups");
                c.arg(&self.microdib);
                c
            }
            None => Command::new(&self.microdib),
        };
        cmd.arg("-B").arg(&self.lib).arg("-p").arg(&self.elements);
        cmd.args(["--skip-base", "--name"]).arg(self.out.join("hello-boot"));
        cmd.args(["--size", "256M", "--formats", "qcow2", "--checksum", "--debug", "1", "hello-boot"]);
        cmd.current_dir(&self.dir).env_clear().envs([
            ("HOME", self.home.as_os_str()),
            ("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".as_ref()),
            ("MICRODIB_KERNEL", self.kernel.as_os_str()),
            ("MICRODIB_AGENT", self.agent.as_os_str()),
            ("HELLO_BOOT_KERNEL", self.kernel.as_os_str()),
            ("MICRODIB_LOG", "vmm=info,warn".as_ref()),
        ]);
        cmd
    }
}

/// The mode, owner and contents of a host file, to see that the build left it alone.
fn state(path: &str) -> (u32, u32, i64, Vec<u8>) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.mode(), m.uid(), m.mtime(), std::fs::read(path).unwrap())
}

#[test]
fn a_user_without_sudo_rights_builds_the_example() {
    // The case that failed: a root-only file among the appliance's. hack/setup installs sudo.
    let sudoers = std::fs::metadata("/etc/sudoers").expect("/etc/sudoers: install sudo (hack/setup does)");
    assert_eq!(sudoers.mode() & 0o7777, 0o440, "/etc/sudoers is not Debian's 0440");
    let before = (state("/etc/sudoers"), state("/etc/sudoers.d/README"));
    let who = builder();
    let stage = Stage::new(who);

    let _turn = native_kvm().is_err().then(|| EMULATED.lock().unwrap_or_else(|p| p.into_inner()));
    let out = shown(stage.build_command(who).output().expect("cannot run the build (setpriv: util-linux)"));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "the build failed:\n{said}");
    assert_eq!((state("/etc/sudoers"), state("/etc/sudoers.d/README")), before, "/etc/sudoers* changed");

    // The appliance left out what this user cannot read, and said so at --debug.
    for f in ["/etc/sudoers", "/etc/sudoers.d/README"] {
        let note = format!("appliance: left out {f} (this user cannot read it)");
        assert!(said.lines().any(|l| l == note), "no {note:?} in:\n{said}");
    }
    assert!(said.lines().any(|l| l.starts_with("hello-boot: kernel ")), "extra-data.d did not run:\n{said}");

    // The image is the builder's, a qcow2, and its checksum file holds its sha256.
    let image = stage.out.join("hello-boot.qcow2");
    let meta = std::fs::metadata(&image).unwrap_or_else(|e| panic!("{}: {e}\n{said}", image.display()));
    assert_eq!(meta.uid(), who.map_or_else(euid, |b| b.uid), "the image's owner");
    let bytes = std::fs::read(&image).unwrap();
    assert_eq!(&bytes[..4], b"QFI\xfb", "not a qcow2 image");
    use sha2::Digest;
    let sha256: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let sum_file = std::fs::read_to_string(stage.out.join("hello-boot.qcow2.sha256")).unwrap();
    assert!(sum_file.starts_with(&sha256), "{sum_file} is not the image's sha256 {sha256}");
    assert!(stage.out.join("hello-boot.qcow2.md5").is_file());
    std::fs::remove_dir_all(&stage.dir).unwrap();
}
