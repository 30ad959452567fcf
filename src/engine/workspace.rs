//! The build's host-side scratch space: `$TMPDIR/microdib.XXXXXX`, removed when the build ends
//! (success, failure or signal), and the aux tree inside it that the appliance receives.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::EngineError;
use crate::guest::wrappers::{
    DIB_RUN_PARTS_MISSING, FAKE_SUDO, INSTALL_PACKAGES, RUN_AND_LOG, RUN_PART, RUN_PART_EXTRA,
};

/// A temporary directory removed on drop.
pub struct Workspace {
    pub dir: PathBuf,
}

impl Workspace {
    pub fn create() -> Result<Workspace, EngineError> {
        let base = std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
        let template = base.join("microdib.XXXXXX");
        let mut bytes = template.as_os_str().as_encoded_bytes().to_vec();
        bytes.push(0);
        // SAFETY: mkdtemp rewrites the XXXXXX of a NUL-terminated buffer we own.
        let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if p.is_null() {
            let what = format!("cannot create a temporary directory in {}", base.display());
            return Err(EngineError::host(what)(std::io::Error::last_os_error()));
        }
        bytes.pop();
        // SAFETY: the bytes came from an OsStr and mkdtemp only replaced ASCII characters.
        let dir = PathBuf::from(unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(bytes) });
        Ok(Workspace { dir })
    }

    /// `in_target.aux`: what the appliance sees at /tmp/in_target.aux.
    pub fn aux(&self) -> PathBuf {
        self.dir.join("in_target.aux")
    }

    /// Writes the wrappers, fake sudo, dib-run-parts, the output and mount-point directories,
    /// and install-packages.sh when packages are asked for.
    pub fn write_aux(&self, image_name: &str, extra_packages: &[String]) -> Result<(), EngineError> {
        let aux = self.aux();
        let w = |rel: &str, text: &str| write_executable(&aux.join(rel), text);
        for d in ["hooks/environment.d", "fake-bin", "perm", &format!("out/{image_name}.d")] {
            std::fs::create_dir_all(aux.join(d))
                .map_err(EngineError::host(format!("cannot create {}", aux.join(d).display())))?;
        }
        w("run-part.sh", RUN_PART)?;
        w("run-part-extra.sh", RUN_PART_EXTRA)?;
        w("run-and-log.sh", RUN_AND_LOG)?;
        w("fake-bin/sudo", FAKE_SUDO)?;
        // The host's dib-run-parts if it has one, as virt-dib did.
        match crate::host::which("dib-run-parts") {
            Some(p) => crate::elements::hooks::copy_tree(&p, &aux.join("fake-bin/dib-run-parts"))
                .map_err(|e| EngineError::Invalid(e.to_string()))?,
            None => w("fake-bin/dib-run-parts", DIB_RUN_PARTS_MISSING)?,
        }
        if !extra_packages.is_empty() {
            w("install-packages.sh", INSTALL_PACKAGES)?;
            let list = aux.join("extra-packages");
            std::fs::write(&list, extra_packages.join(" "))
                .map_err(EngineError::host(format!("cannot write {}", list.display())))?;
        }
        Ok(())
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        // extra-data.d scripts may have left directories the user cannot write.
        super::host_view::make_removable(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn write_executable(path: &Path, text: &str) -> Result<(), EngineError> {
    let err = |e| EngineError::host(format!("cannot write {}", path.display()))(e);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_lives_and_dies() {
        let w = Workspace::create().unwrap();
        let dir = w.dir.clone();
        assert!(dir.file_name().unwrap().to_str().unwrap().starts_with("microdib."));
        w.write_aux("img", &["vim".into(), "less".into()]).unwrap();
        for f in ["run-part.sh", "run-and-log.sh", "fake-bin/sudo", "fake-bin/dib-run-parts", "install-packages.sh"] {
            let m = std::fs::metadata(w.aux().join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o111, 0o111, "{f}");
        }
        assert!(w.aux().join("out/img.d").is_dir() && w.aux().join("perm").is_dir());
        drop(w);
        assert!(!dir.exists());
    }

    /// The fake sudo: same user, scrubbed environment unless -E, TMPDIR always gone, and only
    /// the options virt-dib's accepted.
    #[test]
    fn fake_sudo_behaves_like_virt_dibs() {
        let w = Workspace::create().unwrap();
        w.write_aux("img", &[]).unwrap();
        let sudo = w.aux().join("fake-bin/sudo");
        let run = |args: &[&str]| {
            std::process::Command::new(&sudo).args(args).env("KEEP_ME", "1").env("TMPDIR", "/x").output().unwrap()
        };
        let out = run(&["sh", "-c", "echo ${KEEP_ME:-gone} ${TMPDIR:-unset} $(whoami)"]);
        let me = String::from_utf8(std::process::Command::new("whoami").output().unwrap().stdout).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("gone unset {me}"));
        let out = run(&["-E", "-H", "sh", "-c", "echo ${KEEP_ME:-gone} ${TMPDIR:-unset}"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1 unset\n");
        let out = run(&["-u", "nobody-at-all", "true"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("cannot use the sudo user nobody-at-all, only root and"));
        let out = run(&["-x", "true"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("fake-sudo: invalid option -- 'x'"));
        // root and the current user are both accepted (no user change happens either way).
        assert_eq!(run(&["-u", "root", "true"]).status.code(), Some(0));
        assert_eq!(run(&["-u", me.trim(), "true"]).status.code(), Some(0));
    }
}
