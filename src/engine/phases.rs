//! Running element phases in the build VM: each script in its own wrapper process, its output
//! streamed to the console (unless -q) and appended to the build log, timed, and stopped at the
//! first failure with the element, phase, script, status and the tail of the output.

use std::cell::RefCell;
use std::time::Instant;

use crate::guest::ExitStatus;

use super::env::{BuildVars, Context};
use super::error::ScriptFailed;
use super::EngineError;
use crate::elements::scripts::{digit_prefix_compare, is_script_name};
use crate::guest::paths::{IN_TARGET_AUX, SYSROOT};
use crate::guest::{capture, paths, scripts, status_text, Guest, Streamed};
use crate::report::progress::ScriptSpinner;
use crate::report::{Json, Reporter, TimeSummary};

/// Runs phases of one build.
pub struct PhaseRunner<'a> {
    pub reporter: &'a Reporter,
    pub vars: BuildVars,
    /// The build log's file name at the root of the helper drive.
    pub log_name: String,
    /// (phase, script) -> element, from the elements as copied (scripts added during the
    /// build have none).
    pub owners: Vec<(String, String, String)>,
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
    fn owner(&self, phase: &str, script: &str) -> String {
        self.owners
            .iter()
            .find(|(p, s, _)| p == phase && s == script)
            .map(|(_, _, e)| e.clone())
            .unwrap_or_else(|| "added during the build".into())
    }

    /// The scripts of `phase` as the guest has them now, in run order.
    pub fn guest_scripts(&self, guest: &mut dyn Guest, phase: &str) -> Result<Vec<String>, EngineError> {
        let out = guest.script(&scripts::LIST_SCRIPTS, &[phase])?;
        let mut v: Vec<String> = out.lines().filter(|l| is_script_name(l)).map(String::from).collect();
        v.sort_by(|a, b| digit_prefix_compare(a, b));
        Ok(v)
    }

    /// Runs `scripts` of `phase` in `ctx`; returns each script's standard output when `capture`
    /// is set (block-device.d reads IMAGE_BLOCK_DEVICE from it).
    pub fn run(
        &self,
        guest: &mut dyn Guest,
        phase: &str,
        ctx: &Context,
        scripts: &[String],
        new_wd: Option<&str>,
        capture: bool,
    ) -> Result<String, EngineError> {
        if scripts.is_empty() {
            return Ok(String::new());
        }
        if self.vars.debug >= 1 {
            self.reporter.debug(&format!("Running hooks for {phase}..."));
        }
        let env = self.vars.script_env(ctx);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (root, chroot) = match ctx {
            Context::Outside { .. } => (SYSROOT, None),
            Context::Chroot => ("", Some(SYSROOT)),
        };
        let aux = format!("{root}{IN_TARGET_AUX}");
        let log = format!("{aux}/perm/{}", self.log_name);
        let hook_dir = format!("{aux}/hooks/{phase}");
        let die = if chroot.is_none() { "1" } else { "0" };
        let wd = new_wd.unwrap_or("");
        let mut captured = String::new();
        let answer_max = capture::ANSWER_MAX;
        let mut times = PhaseTimes::start(self.reporter, phase);
        for script in scripts {
            super::signals::check()?;
            times.script_start(self.reporter, script);
            let started = Instant::now();
            let argv = [
                format!("{aux}/run-and-log.sh"),
                log.clone(),
                phase.into(),
                hook_dir.clone(),
                script.clone(),
                wd.into(),
                die.into(),
            ];
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mut tail = capture::LineTail::default();
            let mut answer = capture::Answer::new(answer_max);
            let mut spinner = ScriptSpinner::start(self.reporter, &format!("{phase}/{script}"));
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
            let status = guest.stream(&Streamed { argv: &argv, env: &env, chroot }, &mut on_output);
            let secs = started.elapsed().as_secs_f64();
            // Output without a final newline: the next progress line starts on its own line.
            let spun = spinner.active();
            spinner.finish();
            if tail.in_a_line() && !spun {
                self.reporter.script_output(b"\n");
            }
            if capture {
                let text = answer.text().ok_or_else(|| EngineError::AnswerTooLong {
                    phase: phase.to_owned(),
                    script: script.clone(),
                    mib: answer.cap() >> 20,
                })?;
                captured.push_str(&text);
                if !captured.ends_with('\n') {
                    captured.push('\n');
                }
            }
            let status = status.map_err(|e| e.during(&format!("running {phase}/{script}")))?;
            times.script_end(self.reporter, script, secs, &status);
            if self.vars.debug >= 1 {
                self.reporter.debug(&format!("{script} completed after {secs:.3} s"));
            }
            if !matches!(status, ExitStatus::Code(0)) {
                return Err(EngineError::Script(Box::new(ScriptFailed {
                    phase: phase.to_owned(),
                    script: script.clone(),
                    element: self.owner(phase, script),
                    status: status_text(&status),
                    tail: tail.into_lines().join("\n"),
                    log_hint: self.log_hint.clone(),
                })));
            }
        }
        times.end(self.reporter, &self.summary);
        self.append_log(guest, &profiling_table(&times))?;
        Ok(captured)
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
    fn block_device_contract() {
        assert_eq!(block_device_from_output("\n\n", "/dev/loop0").unwrap(), "/dev/loop0");
        assert_eq!(
            block_device_from_output("hello\nIMAGE_BLOCK_DEVICE=/dev/loop0p1\n", "/dev/loop0").unwrap(),
            "/dev/loop0p1"
        );
        // Output without the variable is informational (issue 16: virt-dib failed here).
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
