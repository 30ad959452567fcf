//! extra-data.d: runs on the host, as the invoking user, with the host environment, in
//! microdib's cwd, on a host view of the image (`host_view`) that is written back when the phase
//! ends. A failing script ends the build with its own exit status and no message (virt-dib).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::cache::Digest;
use crate::guest::ExitStatus;

use super::host_view::{self, make_removable, HostView};
use super::phases::{profiling_table, Phase, PhaseRunner, PhaseTimes};
use super::EngineError;
use crate::guest::paths::{IN_TARGET_AUX, SYSROOT};
use crate::guest::{Guest, GuestError, TreeTar};
use crate::report::Stream;

const PHASE: &str = Phase::ExtraData.dir();

/// The host side of extra-data.d for one build.
pub struct ExtraData {
    /// The scripts, in run order (from the host copy of the hooks, as virt-dib did).
    pub scripts: Vec<String>,
    /// The host's own copy of the hooks: the scripts and environment.d run from a copy of it in
    /// the view, never from the guest's (which root.d could have changed).
    pub hooks: PathBuf,
    /// Where the view is unpacked (`TMP_MOUNT_PATH`).
    pub mount: PathBuf,
    /// The shell text defining the element information (`env::element_info`).
    pub element_info: String,
    /// Variables set over the inherited environment.
    pub env: BTreeMap<String, String>,
    /// The wrapper in the host aux tree.
    pub wrapper: PathBuf,
    /// Most file data the view may take on the host: the size of the disk the root is on (the
    /// image cannot hold more, whatever its stream says).
    pub max_bytes: u64,
}

impl ExtraData {
    /// Unpacks the image, runs the scripts, writes their changes back. Returns the digest of
    /// what they changed in the image (the phase cache's input for what follows).
    pub fn run(&self, guest: &mut dyn Guest, runner: &PhaseRunner<'_>) -> Result<Digest, EngineError> {
        if self.scripts.is_empty() {
            return Ok(Digest::of(b""));
        }
        let r = runner.reporter;
        r.info("Preparing the image's root for extra-data.d on the host");
        let view = self.unpack(guest)?;
        let result = self.run_scripts(runner, view.root());
        let written = result.and_then(|()| write_back(guest, &view));
        make_removable(view.root());
        let _ = std::fs::remove_dir_all(view.root());
        written
    }

    fn unpack(&self, guest: &mut dyn Guest) -> Result<HostView, EngineError> {
        std::fs::create_dir_all(&self.mount)
            .map_err(EngineError::host(format!("cannot create {}", self.mount.display())))?;
        let (reader, mut writer) = std::io::pipe().map_err(EngineError::host("cannot make a pipe"))?;
        let mount = self.mount.clone();
        let budget = self.max_bytes;
        let unpacker = std::thread::spawn(move || HostView::unpack(&mount, reader, budget));
        // The helper drive stays out (it is the guest's cache, DIB_IMAGE_CACHE on the host), and
        // so do the guest's hooks: the host's own take their place below. --sparse (always): a
        // 200 GiB sparse file in the image stays a few blocks on the host.
        let excludes = [format!(".{IN_TARGET_AUX}/perm"), format!("./{}", host_view::host_only().display())];
        let tree = TreeTar { root: SYSROOT, excludes: &excludes, metadata: false };
        let sent = guest.send_tree(&tree, &mut |d| std::io::Write::write_all(&mut writer, d));
        drop(writer);
        let mut view =
            unpacker.join().map_err(|_| EngineError::Invalid("the extra-data.d unpacker panicked".into()))?;
        match sent {
            // The view stops reading at the archive's end (tar pads its last record after it),
            // or when it refuses the stream: then its own result says what happened.
            Err(GuestError::Host { .. }) | Ok(()) => {}
            Err(e @ GuestError::Lost { .. }) => return Err(e.into()),
            Err(e) => return Err(EngineError::step("cannot read the image's root for extra-data.d")(e)),
        }
        let extra = |e| EngineError::Invalid(format!("extra-data.d: {e}"));
        if let Ok(v) = &mut view {
            v.add_host_hooks(&self.hooks).map_err(extra)?;
        }
        view.map_err(extra)
    }

    fn run_scripts(&self, runner: &PhaseRunner<'_>, mount: &Path) -> Result<(), EngineError> {
        let r = runner.reporter;
        let info = mount.with_file_name("element-info");
        std::fs::write(&info, &self.element_info)
            .map_err(EngineError::host(format!("cannot write {}", info.display())))?;
        let target_dir = mount.join(format!("{}/hooks/{PHASE}", IN_TARGET_AUX.trim_start_matches('/')));
        let quiet = r.quiet();
        let mut times = PhaseTimes::start(r, PHASE);
        for script in &self.scripts {
            runner.stop.check()?;
            times.script_start(r, script);
            let started = Instant::now();
            let mut cmd = crate::host::command("bash");
            cmd.arg(&self.wrapper).arg(&info).arg(&target_dir).arg(script).envs(&self.env).stdin(Stdio::null());
            // Its own process group: a signal to microdib stops what the script started too.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(EngineError::host(format!("cannot run bash for {PHASE}/{script}")))?;
            runner.stop.watch_child(child.id());
            let (out, err) = (child.stdout.take(), child.stderr.take());
            // What it prints goes through the reporter as it comes (silenced by -q).
            let status = std::thread::scope(|s| {
                s.spawn(|| out.map(|o| pass_on(o, |d| r.script_output(d))));
                s.spawn(|| {
                    err.map(|e| {
                        pass_on(e, |d| {
                            if !quiet {
                                r.write(Stream::Err, d)
                            }
                        })
                    })
                });
                let status = child.wait();
                // Whatever it left running in its group would hold the pipes open: stopped.
                // SAFETY: kill(2) on the process group the script led.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
                status
            });
            runner.stop.watch_child(0);
            let status = status.map_err(EngineError::host(format!("cannot wait for {PHASE}/{script}")))?;
            let secs = started.elapsed().as_secs_f64();
            let shown = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                (Some(c), _) => ExitStatus::Code(c),
                (None, Some(s)) => ExitStatus::Signal(s),
                (None, None) => ExitStatus::Code(1),
            };
            times.script_end(r, script, secs, &shown);
            if runner.vars.debug >= 1 {
                r.debug(&format!("\n{script} completed after {secs:.3} s"));
            }
            runner.stop.check()?;
            match shown {
                ExitStatus::Code(0) => {}
                ExitStatus::Code(c) => return Err(EngineError::Exit(c)),
                ExitStatus::Signal(s) => {
                    return Err(EngineError::Invalid(format!("{PHASE}/{script}: sub-process killed by signal ({s})")))
                }
            }
        }
        times.end(r, &runner.summary);
        // virt-dib prints this table on stdout, not in the log, for extra-data.d.
        if runner.vars.debug >= 1 {
            r.script_output(profiling_table(&times).as_bytes());
        }
        Ok(())
    }
}

/// Removes what the scripts deleted from the image, then unpacks what they wrote; the digest
/// of those changes.
fn write_back(guest: &mut dyn Guest, view: &HostView) -> Result<Digest, EngineError> {
    let extra = |e| EngineError::Invalid(format!("extra-data.d: {e}"));
    let changes = view.changes().map_err(extra)?;
    let digest = view.changes_digest(&changes).map_err(extra)?;
    if changes.is_empty() {
        return Ok(digest);
    }
    let removed: Vec<String> = changes.removed.iter().map(|p| format!("{SYSROOT}/{}", p.display())).collect();
    guest.remove(&removed).map_err(EngineError::step("cannot update the image after extra-data.d"))?;
    if changes.written.is_empty() {
        return Ok(digest);
    }
    let (reader, writer) = std::io::pipe().map_err(EngineError::host("cannot make a pipe"))?;
    std::thread::scope(|s| {
        let packer = s.spawn(|| view.write_changes(&changes, writer));
        let mut reader = reader;
        let status = guest.receive_tar(SYSROOT, &mut reader);
        let packed = packer.join().map_err(|_| EngineError::Invalid("the extra-data.d packer panicked".into()))?;
        packed.map_err(|e| EngineError::Invalid(format!("extra-data.d: {e}")))?;
        status.map_err(EngineError::step("cannot write the image after extra-data.d"))
    })?;
    Ok(digest)
}

/// Hands what `from` gives to `to` in chunks until it ends (nothing kept: a script may print
/// without end).
fn pass_on(mut from: impl std::io::Read, mut to: impl FnMut(&[u8])) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => to(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
