//! Builds by a user without root or sudo rights. When the tests run as root, that user is a
//! system user made for them and reached through setpriv (util-linux); what it needs is copied
//! to /tmp, since root's home and the target directory may be closed to it and /tmp never is.
//! Its commands get only the environment a user's shell would give, never the tests' own.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{fixtures, guest_agent, kernel, microdib_vars, text, tool};

/// The system user builds run as when the tests run as root.
pub const USER: &str = "microdib-unpriv";

/// PATH as a user's login shell sets it.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Who runs a build: the unprivileged system user when the tests run as root, else the user
/// running them.
#[derive(Debug, Clone, Copy)]
pub struct Builder {
    pub uid: u32,
    pub gid: u32,
    /// Whether the builder is another user than the tests' (reached through setpriv).
    other: bool,
}

/// The tests' effective user and group (/proc/self belongs to them).
fn effective_ids() -> (u32, u32) {
    let m = std::fs::metadata("/proc/self").unwrap();
    (m.uid(), m.gid())
}

/// `id OPTION USER` as a number; None if there is no such user.
fn id(option: &str) -> Option<u32> {
    let out = Command::new("id").args([option, USER]).output().expect("cannot run id");
    out.status.success().then(|| text(&out.stdout).trim().parse().expect("id printed a number"))
}

impl Builder {
    /// The builder, the system user made first if missing.
    pub fn get() -> Builder {
        let (uid, gid) = effective_ids();
        if uid != 0 {
            return Builder { uid, gid, other: false };
        }
        if id("-u").is_none() {
            let made = Command::new("useradd")
                .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin", USER])
                .output()
                .expect("cannot run useradd (the passwd package)");
            assert!(made.status.success(), "useradd {USER}: {}", text(&made.stderr));
        }
        let b = Builder { uid: id("-u").unwrap(), gid: id("-g").unwrap(), other: true };
        assert_ne!(b.uid, 0, "{USER} is root");
        b
    }

    /// The command line that runs `program` as the builder with `env` as its whole environment
    /// (arguments follow it).
    pub fn argv(&self, env: &[(&str, &OsStr)], program: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if self.other {
            argv.push("setpriv".into());
            argv.push(format!("--reuid={}", self.uid).into());
            argv.push(format!("--regid={}", self.gid).into());
            argv.push("--clear-groups".into());
        }
        // env(1) would read a program path holding `=` as one more variable.
        assert!(!program.as_os_str().to_string_lossy().contains('='), "{}: a path with '='", program.display());
        argv.extend(["env".into(), "-i".into()]);
        for (name, value) in env {
            let mut assignment = OsString::from(format!("{name}="));
            assignment.push(value);
            argv.push(assignment);
        }
        argv.push(program.into());
        argv
    }

    /// `program` as the builder, with `env` as its whole environment.
    pub fn command(&self, env: &[(&str, &OsStr)], program: &Path) -> Command {
        let argv = self.argv(env, program);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }

    /// A new directory of the builder's (a home, an output directory).
    pub fn own_dir(&self, path: &Path) {
        std::fs::create_dir_all(path).unwrap();
        self.take(path);
    }

    /// Gives the builder `path` and everything below it, as its own working directory would be.
    pub fn take(&self, path: &Path) {
        if self.other {
            tool("chown", &["-R", &format!("{}:{}", self.uid, self.gid), path.to_str().unwrap()]);
        }
    }
}

/// A directory in /tmp every user can read, for what a build as the builder needs; removed when
/// dropped, unless the test failed (what it holds shows why).
pub struct Stage {
    pub dir: PathBuf,
}

impl Stage {
    pub fn new(purpose: &str) -> Stage {
        let dir = PathBuf::from("/tmp").join(format!("microdib-{purpose}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Stage { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies `src` (a file or a tree; modes and links kept) to `name` in the stage, readable by
    /// every user.
    pub fn copy(&self, src: &Path, name: &str) -> PathBuf {
        let dest = self.path(name);
        tool("cp", &["-a", src.to_str().unwrap(), dest.to_str().unwrap()]);
        tool("chmod", &["-R", "a+rX", dest.to_str().unwrap()]);
        dest
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// microdib, its guest kernel and agent, and the fixtures' library and elements, staged where
/// the builder can read them.
pub struct StagedMicrodib {
    pub builder: Builder,
    pub stage: Stage,
    pub microdib: PathBuf,
    pub kernel: PathBuf,
    pub agent: PathBuf,
    pub lib: PathBuf,
    pub elements: PathBuf,
}

impl StagedMicrodib {
    pub fn new(purpose: &str) -> StagedMicrodib {
        let stage = Stage::new(purpose);
        StagedMicrodib {
            builder: Builder::get(),
            microdib: stage.copy(Path::new(env!("CARGO_BIN_EXE_microdib")), "microdib"),
            kernel: stage.copy(&kernel(), "vmlinuz"),
            agent: stage.copy(&guest_agent(), "microdib-agent"),
            lib: stage.copy(&fixtures().join("lib"), "lib"),
            elements: stage.copy(&fixtures().join("elements"), "elements"),
            stage,
        }
    }

    /// microdib's environment as the builder with `home`: a user's shell's, and the staged
    /// kernel and agent.
    pub fn env(&self, home: &Path) -> Vec<(String, OsString)> {
        let mut env = vec![("HOME".to_owned(), home.into()), ("PATH".to_owned(), USER_PATH.into())];
        env.extend(microdib_vars(&self.kernel, &self.agent).into_iter().map(|(k, v)| (k, v.into())));
        env
    }
}
