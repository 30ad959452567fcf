//! Running element phases in the build VM: each script in its own wrapper process, its output
//! streamed to the console (unless -q) and appended to the build log, timed, and stopped at the
//! first failure with the element, phase, script, status and the tail of the output.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use crate::guest::ExitStatus;

use super::env::{BuildVars, Context};
use super::error::ScriptFailed;
use super::signals::Stop;
use super::EngineError;
use crate::elements::scripts::{digit_prefix_compare, is_script_name};
use crate::guest::paths::{IN_TARGET_AUX, SYSROOT};
use crate::guest::{capture, paths, scripts, status_text, Guest, Streamed};
use crate::report::progress::ScriptSpinner;
use crate::report::{Json, Reporter, TimeSummary};

/// diskimage-builder's element phases, in the order a build runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    BlockDevice,
    Root,
    ExtraData,
    PreInstall,
    Install,
    PostInstall,
    PostRoot,
    PreFinalise,
    Finalise,
    Cleanup,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::BlockDevice,
        Phase::Root,
        Phase::ExtraData,
        Phase::PreInstall,
        Phase::Install,
        Phase::PostInstall,
        Phase::PostRoot,
        Phase::PreFinalise,
        Phase::Finalise,
        Phase::Cleanup,
    ];

    /// The hooks directory, as elements name it.
    pub const fn dir(self) -> &'static str {
        match self {
            Phase::BlockDevice => "block-device.d",
            Phase::Root => "root.d",
            Phase::ExtraData => "extra-data.d",
            Phase::PreInstall => "pre-install.d",
            Phase::Install => "install.d",
            Phase::PostInstall => "post-install.d",
            Phase::PostRoot => "post-root.d",
            Phase::PreFinalise => "pre-finalise.d",
            Phase::Finalise => "finalise.d",
            Phase::Cleanup => "cleanup.d",
        }
    }

    /// Where its scripts run: chrooted into the image, or in the appliance with TARGET_ROOT
    /// (root.d builds its tree beside the sysroot). extra-data.d runs on the host instead.
    pub fn context(self) -> Context {
        match self {
            Phase::PreInstall | Phase::Install | Phase::PostInstall | Phase::Finalise => Context::Chroot,
            Phase::Root => Context::Outside { sysroot: paths::SUBROOT.to_owned() },
            _ => Context::Outside { sysroot: SYSROOT.to_owned() },
        }
    }

    /// Whether its scripts are the ones copied at the start (as in virt-dib); the others are
    /// read again from the image just before they run, since earlier scripts may add some.
    pub fn scripts_from_the_start(self) -> bool {
        matches!(self, Phase::BlockDevice | Phase::Root | Phase::ExtraData | Phase::Cleanup)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir())
    }
}

/// One run of a phase's scripts.
pub struct PhaseRun<'s> {
    pub phase: Phase,
    pub scripts: &'s [String],
    /// The directory the scripts start in, when not the wrapper's default.
    pub workdir: Option<&'s str>,
    /// Keep each script's standard output as the phase's answer (block-device.d's device).
    pub capture_answer: bool,
}

impl<'s> PhaseRun<'s> {
    pub fn new(phase: Phase, scripts: &'s [String]) -> Self {
        PhaseRun { phase, scripts, workdir: None, capture_answer: false }
    }
}

/// Which element each script came from, by phase and name.
#[derive(Debug, Default, Clone)]
pub struct ScriptOwners(BTreeMap<(String, String), String>);

impl ScriptOwners {
    pub fn add(&mut self, phase_dir: &str, script: &str, element: &str) {
        self.0.insert((phase_dir.to_owned(), script.to_owned()), element.to_owned());
    }

    /// The element that brought `phase/script`; scripts added during the build have none.
    pub fn of(&self, phase: Phase, script: &str) -> String {
        let key = (phase.dir().to_owned(), script.to_owned());
        self.0.get(&key).cloned().unwrap_or_else(|| "added during the build".into())
    }
}

/// How the scripts of one phase are run: `run-and-log.sh` with the phase's environment, in
/// the target's chroot or in the appliance.
struct Wrapper {
    phase: Phase,
    /// The aux tree as the script sees it.
    aux: String,
    log: String,
    workdir: String,
    chroot: Option<&'static str>,
    env: BTreeMap<String, String>,
}

impl Wrapper {
    fn new(run: &PhaseRun<'_>, log_name: &str, env: BTreeMap<String, String>) -> Wrapper {
        let (root, chroot) = match run.phase.context() {
            Context::Outside { .. } => (SYSROOT, None),
            Context::Chroot => ("", Some(SYSROOT)),
        };
        let aux = format!("{root}{IN_TARGET_AUX}");
        let log = format!("{aux}/perm/{log_name}");
        Wrapper { phase: run.phase, aux, log, workdir: run.workdir.unwrap_or("").to_owned(), chroot, env }
    }

    /// `run-and-log.sh LOG PHASE HOOK_DIR SCRIPT WORKDIR DIE`: outside the chroot a failing
    /// script ends the wrapper at once (`DIE` 1), as diskimage-builder's own runner does.
    fn argv(&self, script: &str) -> [String; 7] {
        let die = if self.chroot.is_none() { "1" } else { "0" };
        [
            format!("{}/run-and-log.sh", self.aux),
            self.log.clone(),
            self.phase.dir().to_owned(),
            format!("{}/hooks/{}", self.aux, self.phase),
            script.to_owned(),
            self.workdir.clone(),
            die.to_owned(),
        ]
    }
}

/// One script's run: how it ended (or why the guest could not say), what it said last, its
/// answer, its time.
struct ScriptRan {
    status: Result<ExitStatus, crate::guest::GuestError>,
    tail: capture::LineTail,
    answer: String,
    secs: f64,
}

/// Runs phases of one build.
pub struct PhaseRunner<'a> {
    pub reporter: &'a Reporter,
    pub stop: Stop,
    pub vars: BuildVars,
    /// The build log's file name at the root of the helper drive.
    pub log_name: String,
    /// Which element each script came from, as the elements were copied.
    pub owners: ScriptOwners,
    /// Where the log should be looked at, for failure messages.
    pub log_hint: String,
    /// Every phase's time, for the summary at the end of the build.
    pub summary: RefCell<TimeSummary>,
}

/// A phase's scripts and how long each took, and the progress events that go with them.
pub struct PhaseTimes {
    pub phase: String,
    pub scripts: Vec<(String, f64)>,
    started: Instant,
}

impl PhaseTimes {
    /// Starts timing `phase` (the phase-start event).
    pub fn start(r: &Reporter, phase: &str) -> PhaseTimes {
        r.record("phase-start", &format!("Phase {phase}"), &[("phase", Json::Str(phase))]);
        PhaseTimes { phase: phase.to_owned(), scripts: Vec::new(), started: Instant::now() }
    }

    /// `Running: phase/script` and the script-start event.
    pub fn script_start(&self, r: &Reporter, script: &str) {
        r.message(&format!("Running: {}/{script}", self.phase));
        let fields = [("phase", Json::Str(&self.phase)), ("script", Json::Str(script))];
        r.record("script-start", &format!("Running: {}/{script}", self.phase), &fields);
    }

    /// Records how long `script` took and ended (the script-end event).
    pub fn script_end(&mut self, r: &Reporter, script: &str, secs: f64, status: &ExitStatus) {
        let status = status_text(status);
        let fields = [
            ("phase", Json::Str(&self.phase)),
            ("script", Json::Str(script)),
            ("seconds", Json::Secs(secs)),
            ("status", Json::Str(&status)),
        ];
        r.record("script-end", &format!("{}/{script}: {status} after {secs:.3} s", self.phase), &fields);
        self.scripts.push((script.to_owned(), secs));
    }

    /// The phase-end event; the phase's row in `summary`.
    pub fn end(&self, r: &Reporter, summary: &RefCell<TimeSummary>) {
        let secs = self.started.elapsed().as_secs_f64();
        let fields = [("phase", Json::Str(&self.phase)), ("seconds", Json::Secs(secs))];
        r.record("phase-end", &format!("Phase {} done in {secs:.3} s", self.phase), &fields);
        summary.borrow_mut().phase(&self.phase, secs, &self.scripts);
    }
}

impl<'a> PhaseRunner<'a> {
    /// The scripts of `phase` as the guest has them now, in run order.
    pub fn guest_scripts(&self, guest: &mut dyn Guest, phase: Phase) -> Result<Vec<String>, EngineError> {
        let out = guest.script(&scripts::LIST_SCRIPTS, &[phase.dir()])?;
        let mut v: Vec<String> = out.lines().filter(|l| is_script_name(l)).map(String::from).collect();
        v.sort_by(|a, b| digit_prefix_compare(a, b));
        Ok(v)
    }

    /// Runs the scripts of `run.phase` in its context; returns their standard output when
    /// `run.capture_answer` is set (block-device.d reads IMAGE_BLOCK_DEVICE from it).
    pub fn run(&self, guest: &mut dyn Guest, run: &PhaseRun<'_>) -> Result<String, EngineError> {
        if run.scripts.is_empty() {
            return Ok(String::new());
        }
        if self.vars.debug >= 1 {
            self.reporter.debug(&format!("Running hooks for {}...", run.phase));
        }
        let wrapper = Wrapper::new(run, &self.log_name, self.vars.script_env(&run.phase.context()));
        let mut times = PhaseTimes::start(self.reporter, run.phase.dir());
        let mut answer = String::new();
        for script in run.scripts {
            self.stop.check()?;
            times.script_start(self.reporter, script);
            let ran = self.run_script(guest, &wrapper, script, run.capture_answer);
            let ran = ran.and_then(|ran| {
                let status = ran.status.map_err(|e| e.during(&format!("running {}/{script}", run.phase)))?;
                Ok((status, ran.tail, ran.answer, ran.secs))
            });
            let (status, tail, script_answer, secs) = ran?;
            times.script_end(self.reporter, script, secs, &status);
            if self.vars.debug >= 1 {
                self.reporter.debug(&format!("{script} completed after {secs:.3} s"));
            }
            if !matches!(status, ExitStatus::Code(0)) {
                return Err(EngineError::Script(Box::new(ScriptFailed {
                    phase: run.phase.dir().to_owned(),
                    script: script.clone(),
                    element: self.owners.of(run.phase, script),
                    status: status_text(&status),
                    tail: tail.into_lines().join("\n"),
                    log_hint: self.log_hint.clone(),
                })));
            }
            answer.push_str(&script_answer);
            if run.capture_answer && !answer.ends_with('\n') {
                answer.push('\n');
            }
        }
        self.stop_leftovers(guest, run.phase)?;
        times.end(self.reporter, &self.summary);
        self.append_log(guest, &profiling_table(&times))?;
        Ok(answer)
    }

    /// Kills what the phase's scripts left running in the image, one line for each.
    fn stop_leftovers(&self, guest: &mut dyn Guest, phase: Phase) -> Result<(), EngineError> {
        let killed = guest.script(&scripts::STOP_LEFTOVERS, &[])?;
        // The names are the guest's: one short printable word each, at most 100 of them.
        for line in killed.lines().take(100) {
            let Some((pid, name)) = line.split_once(' ') else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            let name: String = name.chars().filter(|c| c.is_ascii_graphic()).take(32).collect();
            self.reporter.info(&format!("{phase} left {name} (pid {pid}) running: killed"));
        }
        Ok(())
    }

    /// Runs one script through the wrapper, its output shown as it comes; what it said last,
    /// and its standard output as an answer when `capture` is set.
    fn run_script(
        &self,
        guest: &mut dyn Guest,
        wrapper: &Wrapper,
        script: &str,
        capture: bool,
    ) -> Result<ScriptRan, EngineError> {
        let started = Instant::now();
        let argv = wrapper.argv(script);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = wrapper.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut tail = capture::LineTail::default();
        let mut answer = capture::Answer::new(capture::ANSWER_MAX);
        let mut spinner = ScriptSpinner::start(self.reporter, &format!("{}/{script}", wrapper.phase));
        let mut on_output = |is_err: bool, data: &[u8]| {
            if spinner.active() {
                spinner.output(data);
            } else {
                self.reporter.script_output(data);
            }
            // Standard output only: a `set -x` trace (stderr) must not count as an answer.
            if capture && !is_err {
                answer.feed(data);
            }
            tail.feed(data);
        };
        let status = guest.stream(&Streamed { argv: &argv, env: &env, chroot: wrapper.chroot }, &mut on_output);
        let secs = started.elapsed().as_secs_f64();
        // Output without a final newline: the next progress line starts on its own line.
        let spun = spinner.active();
        spinner.finish();
        if tail.in_a_line() && !spun {
            self.reporter.script_output(b"\n");
        }
        let answer = match capture {
            false => String::new(),
            true => answer.text().ok_or_else(|| EngineError::AnswerTooLong {
                phase: wrapper.phase.dir().to_owned(),
                script: script.to_owned(),
                mib: answer.cap() >> 20,
            })?,
        };
        Ok(ScriptRan { status, tail, answer, secs })
    }

    /// Appends `text` to the build log (through the aux mount in the appliance).
    pub fn append_log(&self, guest: &mut dyn Guest, text: &str) -> Result<(), EngineError> {
        let log = paths::aux(&format!("perm/{}", self.log_name));
        guest
            .append(&log, text.as_bytes())
            .map_err(|source| EngineError::Step { step: "cannot write the build log".into(), source })
    }
}

/// virt-dib's profiling table.
pub fn profiling_table(t: &PhaseTimes) -> String {
    let mut s = String::from("----------------------- PROFILING -----------------------\n\n");
    s.push_str(&format!("Target: {}\n\n", t.phase));
    s.push_str(&format!("{:<40} {:>9}\n", "Script", "Seconds"));
    s.push_str(&format!("{:<40} {}\n\n", "-".repeat(39), "-".repeat(10)));
    for (name, secs) in &t.scripts {
        s.push_str(&format!("{name:<40} {secs:10.3}\n"));
    }
    s.push_str("\n--------------------- END PROFILING ---------------------\n");
    s
}

/// block-device.d's contract: one `IMAGE_BLOCK_DEVICE=` line names the new device; other
/// output is informational, and without such a line the device stays `current`. Two such
/// lines are ambiguous and refused.
pub fn block_device_from_output(output: &str, current: &str) -> Result<String, EngineError> {
    let lines: Vec<&str> = output.lines().filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return Ok(current.to_owned());
    }
    let found: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("IMAGE_BLOCK_DEVICE=")).collect();
    match found.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Ok(current.to_owned()),
        _ => Err(format!("variable ‘IMAGE_BLOCK_DEVICE’ has more than one occurrency in lines:\n{}", lines.join("\n"))
            .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_run_order_under_their_element_directory_names() {
        let mut sorted = Phase::ALL;
        sorted.sort();
        assert_eq!(sorted, Phase::ALL);
        let dirs: Vec<&str> = Phase::ALL.iter().map(|p| p.dir()).collect();
        assert_eq!(
            dirs,
            [
                "block-device.d",
                "root.d",
                "extra-data.d",
                "pre-install.d",
                "install.d",
                "post-install.d",
                "post-root.d",
                "pre-finalise.d",
                "finalise.d",
                "cleanup.d"
            ]
        );
    }

    #[test]
    fn block_device_contract() {
        assert_eq!(block_device_from_output("\n\n", "/dev/loop0").unwrap(), "/dev/loop0");
        assert_eq!(
            block_device_from_output("hello\nIMAGE_BLOCK_DEVICE=/dev/loop0p1\n", "/dev/loop0").unwrap(),
            "/dev/loop0p1"
        );
        // Output without the variable is informational (virt-dib 1.48.2 failed on it).
        assert_eq!(block_device_from_output("a\nb\n", "/dev/loop0").unwrap(), "/dev/loop0");
        assert!(block_device_from_output("IMAGE_BLOCK_DEVICE=a\nIMAGE_BLOCK_DEVICE=b", "x")
            .unwrap_err()
            .to_string()
            .contains("more than one occurrency"));
    }

    #[test]
    fn profiling_table_layout() {
        let t = PhaseTimes { phase: "install.d".into(), scripts: vec![("10-a".into(), 1.5)], started: Instant::now() };
        let s = profiling_table(&t);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "----------------------- PROFILING -----------------------");
        assert_eq!(lines[2], "Target: install.d");
        assert_eq!(lines[4], format!("{:<40} {:>9}", "Script", "Seconds"));
        assert_eq!(lines[5], format!("{} {}", "-".repeat(39) + " ", "-".repeat(10)));
        assert_eq!(lines[7], format!("{:<40} {:>10}", "10-a", "1.500"));
        assert_eq!(*lines.last().unwrap(), "--------------------- END PROFILING ---------------------");
    }
}
