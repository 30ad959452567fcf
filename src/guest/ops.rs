//! `GuestOps`: what the build asks of the build VM, as operations (run a script, run a command
//! with its output streamed, send or fetch a tree as tar, append to a file). The only code that
//! sends anything to the agent; every byte coming back is bounded (`capture`).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use microdib_proto::client::{AgentClient, ExitStatus};
use microdib_proto::ProtoError;

use super::capture::{Answer, Tail, ANSWER_MAX, MESSAGE_MAX};
use super::paths::script_env;
use super::scripts::Script;
use crate::vmbackend::{BuildVm, VmError};

/// A guest operation that did not work.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The agent connection failed (the VM died, or the agent broke the protocol).
    #[error("lost the build VM{during}: {source}")]
    Lost { during: String, source: ProtoError },
    /// The build VM has been shut down already.
    #[error("the build VM is shut down")]
    ShutDown,
    /// A command ran and failed; `stderr_tail` is the end of what it said, and when it said
    /// nothing the command is named instead.
    #[error("{} ({})", failed_text(.cmd, .stderr_tail), status_text(.status))]
    Failed { cmd: String, status: ExitStatus, stderr_tail: String },
    /// A command printed more than the host reads as its answer.
    #[error("a command in the build VM printed more than {} MiB", .0 >> 20)]
    TooMuchOutput(usize),
    /// The host side of an operation (a pipe, host tar) failed.
    #[error("{what}: {source}")]
    Host { what: String, source: std::io::Error },
}

impl GuestError {
    /// The same error, for a `Lost` one saying what was going on.
    pub fn during(self, what: &str) -> GuestError {
        match self {
            GuestError::Lost { source, .. } => GuestError::Lost { during: format!(" while {what}"), source },
            other => other,
        }
    }
}

/// What a failed command said, or `cmd failed` when it said nothing.
fn failed_text(cmd: &str, stderr_tail: &str) -> String {
    if stderr_tail.is_empty() {
        format!("{cmd} failed")
    } else {
        stderr_tail.to_owned()
    }
}

/// `exit status N` / `killed by signal N`.
pub fn status_text(s: &ExitStatus) -> String {
    match s {
        ExitStatus::Code(c) => format!("exit status {c}"),
        ExitStatus::Signal(sig) => format!("killed by signal {sig}"),
    }
}

fn lost(source: ProtoError) -> GuestError {
    GuestError::Lost { during: String::new(), source }
}

/// Success, or the failure of `cmd` with the end of what it said.
fn checked(status: ExitStatus, cmd: impl FnOnce() -> String, said: &Tail) -> Result<(), GuestError> {
    match status {
        ExitStatus::Code(0) => Ok(()),
        status => Err(GuestError::Failed { cmd: cmd(), status, stderr_tail: said.text() }),
    }
}

/// A command run with its output streamed (element scripts, package installs).
pub struct Streamed<'a> {
    pub argv: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// Run chrooted into this directory (with /proc, /sys and /dev bound there).
    pub chroot: Option<&'a str>,
}

/// What the build asks of the build VM. `GuestOps` does it through the agent; the engine's
/// tests script it (`guest::fake`), so engine behaviour is testable without a VM.
pub trait Guest {
    /// Runs one of the guest's scripts with `args`; its standard output.
    fn script(&mut self, script: &Script, args: &[&str]) -> Result<String, GuestError>;
    /// Runs a one-line shell command (no guest path in it: the `MICRODIB_*` variables are set).
    fn sh(&mut self, line: &str, args: &[&str]) -> Result<String, GuestError>;
    /// Runs a command, handing its output to `on_output(is_stderr, bytes)` as it arrives.
    fn stream(&mut self, cmd: &Streamed<'_>, on_output: &mut dyn FnMut(bool, &[u8])) -> Result<ExitStatus, GuestError>;
    /// Appends `text` to the guest file `path`.
    fn append(&mut self, path: &str, text: &[u8]) -> Result<(), GuestError>;
    /// Unpacks the tar stream `input` into the guest directory `dest`.
    fn receive_tar(&mut self, dest: &str, input: &mut (dyn Read + Send)) -> Result<(), GuestError>;
    /// Packs the guest tree `tree` into a tar stream handed to `sink` as it comes (GNU tar,
    /// numeric owners, sparse files kept sparse, `excludes` left out). `metadata` adds what
    /// the image outputs keep and reproduce: xattrs, ACLs, name order.
    fn send_tree(
        &mut self,
        tree: &TreeTar<'_>,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), GuestError>;
    /// Removes `paths` (guest paths) recursively.
    fn remove(&mut self, paths: &[String]) -> Result<(), GuestError>;

    /// Sends the host directory `src` into the guest directory `dest` (made if missing), every
    /// file owned by root.
    fn send_dir(&mut self, src: &Path, dest: &str) -> Result<(), GuestError> {
        self.sh(r#"mkdir -p "$1""#, &[dest])?;
        let host = |what: &str| {
            let what = format!("{what} {}", src.display());
            move |source| GuestError::Host { what, source }
        };
        let mut tar = crate::host::command("tar")
            .args(["--owner=root", "--group=root", "-C"])
            .arg(src)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(host("cannot run tar for"))?;
        let Some(mut out) = tar.stdout.take() else {
            return Err(host("no output from tar for")(std::io::Error::other("no pipe")));
        };
        let sent = self.receive_tar(dest, &mut out);
        drop(out);
        let packed = tar.wait().map_err(host("tar failed for"))?;
        sent?;
        match packed.success() {
            true => Ok(()),
            false => Err(host("tar failed for")(std::io::Error::other(packed.to_string()))),
        }
    }
}

/// How a build VM ended on its own (not shut down by the build).
pub struct VmEnded {
    pub how: String,
    /// The end of its console and of what its VMM said, for the message.
    pub console: String,
}

/// The build VM as a whole build drives it: its operations, how it ended, its shutdown.
pub trait BuildGuest: Guest {
    /// How the VM ended by itself, if it did.
    fn ended(&self) -> Option<VmEnded>;
    /// Syncs, powers the VM off and waits for it to end.
    fn shut_down(self: Box<Self>) -> Result<(), VmError>;
}

impl BuildGuest for GuestOps {
    fn ended(&self) -> Option<VmEnded> {
        self.vm.ended().map(|end| VmEnded { how: end.to_string(), console: self.vm.console_tail() })
    }

    fn shut_down(self: Box<Self>) -> Result<(), VmError> {
        self.vm.shutdown()
    }
}

/// The build VM, seen as the operations the build needs.
pub struct GuestOps {
    vm: BuildVm,
}

impl GuestOps {
    pub fn new(vm: BuildVm) -> GuestOps {
        GuestOps { vm }
    }

    fn agent(&mut self) -> Result<&mut AgentClient, GuestError> {
        self.vm.agent().ok_or(GuestError::ShutDown)
    }

    /// Runs `argv` (outside the target) with the guest scripts' environment; its standard
    /// output, or an error with the end of what it said. `name` names it in errors.
    fn capture(&mut self, argv: &[&str], name: &str) -> Result<String, GuestError> {
        self.vm.trace_command(argv);
        let mut out = Answer::new(ANSWER_MAX);
        let mut out_tail = Tail::new(MESSAGE_MAX);
        let mut err = Tail::new(MESSAGE_MAX);
        let status = self
            .agent()?
            .run(argv, &script_env(), Some("/"), |is_err, d| {
                if is_err {
                    err.feed(d)
                } else {
                    out.feed(d);
                    out_tail.feed(d);
                }
            })
            .map_err(lost)?;
        // What it printed on stderr, or without any, the end of its stdout.
        checked(status, || name.to_owned(), if err.text().is_empty() { &out_tail } else { &err })?;
        out.text().ok_or(GuestError::TooMuchOutput(ANSWER_MAX))
    }
}

impl Guest for GuestOps {
    fn script(&mut self, script: &Script, args: &[&str]) -> Result<String, GuestError> {
        let mut argv = vec!["/bin/sh", "-c", script.text, script.name];
        argv.extend_from_slice(args);
        self.capture(&argv, script.name)
    }

    fn sh(&mut self, line: &str, args: &[&str]) -> Result<String, GuestError> {
        debug_assert!(!line.contains('\n'), "guest shell longer than a line belongs in scripts/");
        let mut argv = vec!["/bin/sh", "-c", line, "sh"];
        argv.extend_from_slice(args);
        self.capture(&argv, line)
    }

    fn stream(&mut self, cmd: &Streamed<'_>, on_output: &mut dyn FnMut(bool, &[u8])) -> Result<ExitStatus, GuestError> {
        self.vm.trace_command(cmd.argv);
        let agent = self.agent()?;
        match cmd.chroot {
            None => agent.run(cmd.argv, cmd.env, Some("/"), on_output),
            Some(root) => agent.run_chrooted(cmd.argv, cmd.env, Some("/"), root, on_output),
        }
        .map_err(lost)
    }

    fn append(&mut self, path: &str, text: &[u8]) -> Result<(), GuestError> {
        let argv = ["/bin/sh", "-c", r#"cat >> "$1""#, "sh", path];
        let mut err = Tail::new(MESSAGE_MAX);
        let status = self.agent()?.run_with_input(&argv, &[], None, text, |_, d| err.feed(d)).map_err(lost)?;
        checked(status, || format!("append to {path}"), &err)
    }

    fn receive_tar(&mut self, dest: &str, input: &mut (dyn Read + Send)) -> Result<(), GuestError> {
        let mut err = Tail::new(MESSAGE_MAX);
        let status = self.agent()?.tar_in(dest, input, |_, d| err.feed(d)).map_err(lost)?;
        checked(status, || format!("tar -x -C {dest}"), &err)
    }

    fn send_tree(
        &mut self,
        tree: &TreeTar<'_>,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), GuestError> {
        let mut argv = vec!["tar", "-C", tree.root, "-c", "-f", "-", "--numeric-owner", "--sparse"];
        if tree.metadata {
            // --sort=name: the same tree gives the same stream, and so the same outputs.
            argv.extend(["--sort=name", "--xattrs", "--xattrs-include=*", "--acls"]);
        }
        let excludes: Vec<String> = tree.excludes.iter().map(|e| format!("--exclude={e}")).collect();
        argv.extend(excludes.iter().map(String::as_str));
        argv.push(".");
        self.vm.trace_command(&argv);
        let mut err = Tail::new(MESSAGE_MAX);
        let mut sink_err = None;
        let status = self
            .agent()?
            .run(&argv, &script_env(), Some("/"), |is_err, d| {
                if is_err {
                    err.feed(d);
                } else if sink_err.is_none() {
                    sink_err = sink(d).err();
                }
            })
            .map_err(lost)?;
        if let Some(source) = sink_err {
            return Err(GuestError::Host { what: format!("cannot take the tar stream of {}", tree.root), source });
        }
        checked(status, || argv.join(" "), &err)
    }

    fn remove(&mut self, paths: &[String]) -> Result<(), GuestError> {
        for chunk in paths.chunks(256) {
            let mut argv = vec!["rm", "-rf", "--"];
            argv.extend(chunk.iter().map(String::as_str));
            self.capture(&argv, "rm -rf")?;
        }
        Ok(())
    }
}

/// A guest tree to send as tar (`Guest::send_tree`).
pub struct TreeTar<'a> {
    pub root: &'a str,
    /// tar `--exclude` patterns, relative to the root (`./proc/*`).
    pub excludes: &'a [String],
    pub metadata: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_says_what_failed_even_when_it_said_nothing() {
        let failed = |tail: &str| GuestError::Failed {
            cmd: "mkfs.ext4 /dev/vdb".into(),
            status: ExitStatus::Code(1),
            stderr_tail: tail.into(),
        };
        assert_eq!(failed("").to_string(), "mkfs.ext4 /dev/vdb failed (exit status 1)");
        assert_eq!(failed("mkfs.ext4: no such device").to_string(), "mkfs.ext4: no such device (exit status 1)");
    }
}
