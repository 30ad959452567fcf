//! What the build VM boots: the guest kernel and the agent the appliance (agent initramfs +
//! squashfs root built from host packages) is made around. The VM itself is `crate::vmbackend`.

use std::path::{Path, PathBuf};

use crate::host::cache_root;

/// Why the build VM has nothing to boot.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("no guest kernel in {0}: build it with hack/build-kernel (or set MICRODIB_KERNEL)")]
    NoKernel(PathBuf),
    #[error("cannot find my own executable: {0}")]
    NoExe(std::io::Error),
    #[error("the guest agent is not built: run hack/setup (or set MICRODIB_AGENT)")]
    NoAgent,
}

/// The guest kernel: $MICRODIB_KERNEL, else the newest one hack/build-kernel cached.
pub fn find_kernel() -> Result<PathBuf, ApplianceError> {
    if let Some(k) = std::env::var_os("MICRODIB_KERNEL") {
        return Ok(PathBuf::from(k));
    }
    let dir = cache_root().join("kernel");
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bzImage"))
        .filter_map(|p| std::fs::metadata(&p).and_then(|m| m.modified()).ok().map(|t| (t, p)))
        .max();
    newest.map(|(_, p)| p).ok_or(ApplianceError::NoKernel(dir))
}

/// The guest agent binary: $MICRODIB_AGENT, else where the workspace builds it
/// (target/guest/x86_64-unknown-linux-musl/release/microdib-agent, beside target/release).
pub fn find_agent() -> Result<PathBuf, ApplianceError> {
    if let Some(a) = std::env::var_os("MICRODIB_AGENT") {
        return Ok(PathBuf::from(a));
    }
    let exe = std::env::current_exe().map_err(ApplianceError::NoExe)?;
    let candidate =
        exe.parent().and_then(Path::parent).map(|t| t.join("guest/x86_64-unknown-linux-musl/release/microdib-agent"));
    match candidate {
        Some(p) if p.exists() => Ok(p),
        _ => Err(ApplianceError::NoAgent),
    }
}
