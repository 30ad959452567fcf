//! Progress of each writer: a bar with bytes/s on a terminal, one summary line otherwise,
//! nothing with --quiet, and JSON events with --machine-readable. And while a script runs, on a
//! terminal: a spinner line under its output with the script, its time and its last line.

use std::io::Write;
use std::time::{Duration, Instant};

use super::messages::{Json, Reporter, Stream};

/// How often JSON progress events are sent at most.
const EVENT_PERIOD: Duration = Duration::from_millis(500);

/// The progress of one output being written.
pub struct WriterProgress<'r> {
    format: String,
    total: u64,
    start: Instant,
    last_event: Instant,
    bar: Option<indicatif::ProgressBar>,
    reporter: &'r Reporter,
}

impl<'r> WriterProgress<'r> {
    /// `total` is how many input bytes the writer will go through.
    pub fn start(reporter: &'r Reporter, format: &str, total: u64) -> Self {
        let bar = (!reporter.quiet() && reporter.is_terminal(Stream::Out)).then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "         {prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            indicatif::ProgressBar::new(total).with_style(style).with_prefix(format.to_owned())
        });
        let now = Instant::now();
        WriterProgress { format: format.to_owned(), total, start: now, last_event: now, bar, reporter }
    }

    /// `done` input bytes so far.
    pub fn set(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
        if self.last_event.elapsed() >= EVENT_PERIOD {
            self.last_event = Instant::now();
            let message = format!("{}: {} of {}", self.format, human(done as f64), human(self.total as f64));
            let fields =
                [("format", Json::Str(&self.format)), ("done", Json::Count(done)), ("total", Json::Count(self.total))];
            self.reporter.record("progress", &message, &fields);
        }
    }

    /// The writers are done: one line per output with its size (they shared the input).
    pub fn finish(self, outputs: &[(&str, u64)]) {
        let secs = self.start.elapsed().as_secs_f64();
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let rate = self.total as f64 / secs.max(1e-6);
        for (format, out) in outputs {
            if !self.reporter.quiet() {
                let line = format!(
                    "         {format}: {} in {secs:.1} s ({}/s), {} written\n",
                    human(self.total as f64),
                    human(rate),
                    human(*out as f64)
                );
                self.reporter.write(Stream::Out, line.as_bytes());
            }
            let message = format!("{format}: {} written in {secs:.1} s", human(*out as f64));
            let fields = [("format", Json::Str(format)), ("seconds", Json::Secs(secs)), ("bytes", Json::Count(*out))];
            self.reporter.record("written", &message, &fields);
        }
    }
}

/// The spinner under a running script's output (on a terminal, unless -q): `⠋ 12s
/// install.d/50-foo: last line`. The script's output goes through it, whole lines only while
/// the spinner is drawn (a partial line would be overdrawn), the rest when it ends.
pub struct ScriptSpinner {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    pending: Vec<u8>,
    last: String,
}

/// Longest last-line shown beside the spinner, in characters.
const SPINNER_LINE_MAX: usize = 60;

impl ScriptSpinner {
    pub fn start(reporter: &Reporter, label: &str) -> Self {
        let bar = (!reporter.quiet() && reporter.is_terminal(Stream::Out)).then(|| {
            let style = indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            let bar = indicatif::ProgressBar::new_spinner().with_style(style).with_message(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        ScriptSpinner { bar, label: label.to_owned(), pending: Vec::new(), last: String::new() }
    }

    /// Whether a spinner is drawn (else the caller prints output itself, as it comes).
    pub fn active(&self) -> bool {
        self.bar.is_some()
    }

    /// The script printed `data`: its whole lines are shown above the spinner.
    pub fn output(&mut self, data: &[u8]) {
        let Some(bar) = &self.bar else { return };
        self.pending.extend_from_slice(data);
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            // A line longer than any terminal: show it anyway.
            if self.pending.len() > 64 * 1024 {
                let whole = std::mem::take(&mut self.pending);
                bar.suspend(|| write_out(&whole, true));
            }
            return;
        };
        let whole: Vec<u8> = self.pending.drain(..=end).collect();
        if let Some(line) = last_line(&whole) {
            self.last = line;
            bar.set_message(format!("{}: {}", self.label, self.last));
        }
        bar.suspend(|| write_out(&whole, false));
    }

    /// The script ended: the spinner goes, a partial last line is printed.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            if !self.pending.is_empty() {
                write_out(&self.pending, true);
            }
        }
    }
}

fn write_out(data: &[u8], end_line: bool) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(data);
    if end_line && !data.ends_with(b"\n") {
        let _ = o.write_all(b"\n");
    }
    let _ = o.flush();
}

/// The last non-blank line of `data`, without control characters, cut to `SPINNER_LINE_MAX`.
fn last_line(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let clean: String = line.chars().filter(|c| !c.is_control()).collect();
    Some(match clean.char_indices().nth(SPINNER_LINE_MAX) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None => clean,
    })
}

/// Bytes in binary units, as `ls -lh` would.
pub fn human(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinner_shows_the_last_line_cut_and_cleaned() {
        assert_eq!(last_line(b"one\ntwo\n\n  \n").as_deref(), Some("two"));
        assert_eq!(last_line(b"\x1b[0;32mgreen\x1b[0m\n").as_deref(), Some("[0;32mgreen[0m"));
        assert_eq!(last_line(b"\n \n"), None);
        let long = "x".repeat(100);
        assert_eq!(last_line(long.as_bytes()).map(|l| l.chars().count()), Some(SPINNER_LINE_MAX + 1));
    }

    #[test]
    fn without_a_terminal_no_spinner_takes_the_output() {
        let r = Reporter::new("t", Instant::now(), &Default::default(), None);
        let mut s = ScriptSpinner::start(&r, "install.d/10-a");
        assert!(!s.active() || std::io::IsTerminal::is_terminal(&std::io::stdout()));
        s.output(b"partial");
        s.finish();
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(5.0 * 1024.0 * 1024.0 * 1024.0), "5.0 GiB");
    }
}
