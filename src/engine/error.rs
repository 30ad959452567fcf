//! How a build ends when it does not succeed: one error type for the engine's boundary. Its
//! text is the message after `prog: error:`; `Exit` and `Signal` end the build without one.

use crate::guest::GuestError;
use crate::vmbackend::VmError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The build VM could not start, or ended badly.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The build VM stopped while the build needed it.
    #[error("the build VM stopped: {end}{console}")]
    VmStopped { end: String, console: String },
    /// A guest operation failed (the agent was lost, or a command failed).
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A named step in the guest failed.
    #[error("{step}: {source}")]
    Step { step: String, source: GuestError },
    /// An element script failed.
    #[error(transparent)]
    Script(Box<ScriptFailed>),
    /// A script whose standard output is its answer said too much.
    #[error("{phase}/{script} printed more than {mib} MiB on its standard output, which is read as its answer")]
    AnswerTooLong { phase: String, script: String, mib: usize },
    /// Nothing to boot: no kernel, no agent.
    #[error(transparent)]
    Appliance(#[from] super::appliance::ApplianceError),
    /// The appliance (the build VM's root, made from host packages) could not be built.
    #[error("cannot build the appliance: {}", crate::vmbackend::error_chain(.0))]
    ApplianceBuild(#[from] initramfs::appliance::ApplianceError),
    /// A host file or process operation.
    #[error("{what}: {source}")]
    Host { what: String, source: std::io::Error },
    /// The elements, the hooks, the block-device configuration, the image's data or the
    /// outputs are not what the build can use; the text says which and why.
    #[error("{0}")]
    Invalid(String),
    /// Exit with this status and no message (an extra-data.d script's own status).
    #[error("exit status {0}")]
    Exit(i32),
    /// A stop signal arrived.
    #[error("stopped by {0}")]
    Signal(&'static str),
}

/// An element script that failed, and what it said last.
#[derive(Debug, thiserror::Error)]
#[error("{phase}/{script} (element {element}) failed: {status}\nlast lines of its output:\n{tail}\n{log_hint}")]
pub struct ScriptFailed {
    pub phase: String,
    pub script: String,
    pub element: String,
    pub status: String,
    pub tail: String,
    pub log_hint: String,
}

impl From<String> for EngineError {
    fn from(s: String) -> Self {
        EngineError::Invalid(s)
    }
}

impl EngineError {
    /// `what` failed on the host with `source`.
    pub fn host(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let what = what.into();
        move |source| EngineError::Host { what, source }
    }

    /// A guest operation that is a named step (`making the ext4 file system failed`).
    pub fn step(step: impl Into<String>) -> impl FnOnce(GuestError) -> EngineError {
        let step = step.into();
        move |source| EngineError::Step { step, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// microdib prints an engine error's text alone: the appliance's reason must be in it.
    #[test]
    fn an_appliance_build_error_carries_its_reason() {
        let e = EngineError::from(initramfs::appliance::ApplianceError::SquashfsIo {
            what: "writing /cache/root.sqfs".into(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "cannot read /etc/sudoers: denied"),
        });
        assert_eq!(
            e.to_string(),
            "cannot build the appliance: cannot build the squashfs root: writing /cache/root.sqfs: cannot read /etc/sudoers: denied"
        );
    }
}
