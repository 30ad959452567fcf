//! What the build VM boots: the guest kernel and the agent the appliance (agent initramfs +
//! squashfs root built from host packages) is made around. The VM itself is `crate::vmbackend`.

use std::path::{Path, PathBuf};

use crate::host::cache_root;

/// Why the build VM has nothing to boot.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error(
        "no guest kernel: not in {installed} (the package's) nor in {cache} (hack/build-kernel's); set MICRODIB_KERNEL"
    )]
    NoKernel { installed: PathBuf, cache: PathBuf },
    #[error("cannot find my own executable: {0}")]
    NoExe(std::io::Error),
    #[error(
        "no guest agent: not in {installed} (the package's) nor in {built} (hack/setup builds it); set MICRODIB_AGENT"
    )]
    NoAgent { installed: PathBuf, built: PathBuf },
}

/// Where a file the build VM boots was found, in the order looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `$MICRODIB_KERNEL` / `$MICRODIB_AGENT`.
    Variable,
    /// The installed layout: `../lib/microdib/` beside the executable (`/usr/bin` → `/usr/lib`).
    Installed,
    /// A source tree: hack/build-kernel's cache, the agent cargo built in `target/guest`.
    SourceTree,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Variable => "from the environment",
            Origin::Installed => "installed",
            Origin::SourceTree => "source tree",
        }
    }
}

/// The installed layout's directory for the executable `exe`: `<prefix>/lib/microdib`.
fn installed_dir(exe: &Path) -> PathBuf {
    let prefix = exe.parent().and_then(Path::parent).unwrap_or(Path::new("/usr"));
    prefix.join("lib/microdib")
}

/// The guest kernel: $MICRODIB_KERNEL, the installed `vmlinuz`, else the newest one
/// hack/build-kernel cached.
pub fn find_kernel() -> Result<(PathBuf, Origin), ApplianceError> {
    if let Some(k) = std::env::var_os("MICRODIB_KERNEL") {
        return Ok((PathBuf::from(k), Origin::Variable));
    }
    let exe = std::env::current_exe().map_err(ApplianceError::NoExe)?;
    let installed = installed_dir(&exe).join("vmlinuz");
    if installed.is_file() {
        return Ok((installed, Origin::Installed));
    }
    let dir = cache_root().join("kernel");
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bzImage"))
        .filter_map(|p| std::fs::metadata(&p).and_then(|m| m.modified()).ok().map(|t| (t, p)))
        .max();
    match newest {
        Some((_, p)) => Ok((p, Origin::SourceTree)),
        None => Err(ApplianceError::NoKernel { installed, cache: dir }),
    }
}

/// The guest agent binary: $MICRODIB_AGENT, the installed one, else where the workspace builds
/// it (target/guest/x86_64-unknown-linux-musl/release/microdib-agent, beside target/release).
pub fn find_agent() -> Result<(PathBuf, Origin), ApplianceError> {
    if let Some(a) = std::env::var_os("MICRODIB_AGENT") {
        return Ok((PathBuf::from(a), Origin::Variable));
    }
    let exe = std::env::current_exe().map_err(ApplianceError::NoExe)?;
    let installed = installed_dir(&exe).join("microdib-agent");
    if installed.is_file() {
        return Ok((installed, Origin::Installed));
    }
    let built = exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("guest/x86_64-unknown-linux-musl/release/microdib-agent"))
        .unwrap_or_default();
    match built.is_file() {
        true => Ok((built, Origin::SourceTree)),
        false => Err(ApplianceError::NoAgent { installed, built }),
    }
}

/// `guest kernel: PATH (installed)`: what `--version` and `--debug 1` say of a file found.
pub fn found_line(what: &str, path: &Path, origin: Origin) -> String {
    format!("{what}: {} ({})", path.display(), origin.describe())
}

/// One line each for the kernel and the agent this microdib would boot (`--version`).
pub fn describe() -> Vec<String> {
    let line = |what: &str, found: Result<(PathBuf, Origin), ApplianceError>| match found {
        Ok((p, o)) => found_line(what, &p, o),
        Err(e) => format!("{what}: none ({e})"),
    };
    vec![line("guest kernel", find_kernel()), line("guest agent", find_agent())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_layout_is_beside_the_executable() {
        assert_eq!(installed_dir(Path::new("/usr/bin/microdib")), Path::new("/usr/lib/microdib"));
        assert_eq!(installed_dir(Path::new("/opt/m/bin/microdib")), Path::new("/opt/m/lib/microdib"));
    }
}
