//! Progress of each writer: a bar with bytes/s on a terminal, one summary line otherwise,
//! nothing with --quiet, and JSON events with --machine-readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::messages::{Json, Reporter};

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
        let bar = (!reporter.quiet() && std::io::stdout().is_terminal()).then(|| {
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
            let fields = [("format", Json::Str(&self.format)), ("done", Json::Count(done)), ("total", Json::Count(self.total))];
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
                let mut o = std::io::stdout().lock();
                let _ = writeln!(
                    o,
                    "         {format}: {} in {secs:.1} s ({}/s), {} written",
                    human(self.total as f64),
                    human(rate),
                    human(*out as f64)
                );
            }
            let message = format!("{format}: {} written in {secs:.1} s", human(*out as f64));
            let fields = [("format", Json::Str(format)), ("seconds", Json::Secs(secs)), ("bytes", Json::Count(*out))];
            self.reporter.record("written", &message, &fields);
        }
    }
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
    fn human_sizes() {
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(5.0 * 1024.0 * 1024.0 * 1024.0), "5.0 GiB");
    }
}
