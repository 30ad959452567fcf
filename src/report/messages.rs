//! What microdib prints, in virt-dib's forms: timestamped progress `message`s (`[   1.2] Text`,
//! green on a terminal, silenced by -q), `info` and `warning` lines prefixed with the program
//! name, `error`s with the bug-report hint, and with --machine-readable a JSON line per event.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Wrap width for info/warning/error text on a terminal or with --wrap.
const WRAP_COLUMNS: usize = 76;

/// Prints progress and diagnostics for one run of the program.
pub struct Reporter {
    prog: String,
    start: Instant,
    quiet: bool,
    /// --colours: colour even when the stream is not a terminal.
    force_color: bool,
    wrap: bool,
    verbose: bool,
    trace: bool,
    machine: Option<Mutex<Box<dyn Write + Send>>>,
    console: Console,
}

/// Where the user-facing text goes: the process's stdout and stderr, or (for tests) one
/// transcript with both.
enum Console {
    Stdio,
    Transcript(Arc<Mutex<Vec<u8>>>),
}

/// What a capturing `Reporter` printed, stdout and stderr interleaved as written.
#[derive(Clone, Default)]
pub struct Transcript(Arc<Mutex<Vec<u8>>>);

impl Transcript {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().map(|b| b.clone()).unwrap_or_default()).into_owned()
    }
}

/// One of the two user-facing streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// Kinds of event, as written in the JSON `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Info,
    Warning,
    Error,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Info => "info",
            Kind::Warning => "warning",
            Kind::Error => "error",
        }
    }
}

/// Settings for a `Reporter`.
#[derive(Debug, Clone, Default)]
pub struct ReporterOptions {
    pub quiet: bool,
    pub color: bool,
    pub wrap: bool,
    pub verbose: bool,
    pub trace: bool,
}

impl Reporter {
    pub fn new(prog: &str, start: Instant, o: &ReporterOptions, machine: Option<Box<dyn Write + Send>>) -> Self {
        Reporter {
            prog: prog.to_owned(),
            start,
            quiet: o.quiet,
            force_color: o.color,
            wrap: o.wrap,
            verbose: o.verbose,
            trace: o.trace,
            machine: machine.map(Mutex::new),
            console: Console::Stdio,
        }
    }

    /// A reporter whose user-facing text goes to the returned transcript (and machine-readable
    /// records to `machine`), never to a terminal.
    pub fn capturing(prog: &str, o: &ReporterOptions, machine: Option<Box<dyn Write + Send>>) -> (Self, Transcript) {
        let transcript = Transcript::default();
        let mut r = Reporter::new(prog, Instant::now(), o, machine);
        r.console = Console::Transcript(transcript.0.clone());
        (r, transcript)
    }

    /// Whether `stream` is a terminal (progress bars, spinners, colour and wrapping).
    pub fn is_terminal(&self, stream: Stream) -> bool {
        match (&self.console, stream) {
            (Console::Transcript(_), _) => false,
            (Console::Stdio, Stream::Out) => std::io::stdout().is_terminal(),
            (Console::Stdio, Stream::Err) => std::io::stderr().is_terminal(),
        }
    }

    /// Writes `data` to `stream` as is (script output, tables), flushed.
    pub fn write(&self, stream: Stream, data: &[u8]) {
        match (&self.console, stream) {
            (Console::Transcript(t), _) => {
                if let Ok(mut t) = t.lock() {
                    t.extend_from_slice(data);
                }
            }
            (Console::Stdio, Stream::Out) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(data);
                let _ = o.flush();
            }
            (Console::Stdio, Stream::Err) => {
                let mut o = std::io::stderr().lock();
                let _ = o.write_all(data);
                let _ = o.flush();
            }
        }
    }

    fn line(&self, stream: Stream, text: &str) {
        self.write(stream, format!("{text}\n").as_bytes());
    }

    /// Output of a script running in the build VM, unless -q.
    pub fn script_output(&self, data: &[u8]) {
        if !self.quiet {
            self.write(Stream::Out, data);
        }
    }

    pub fn prog(&self) -> &str {
        &self.prog
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn event(&self, kind: Kind, text: &str) {
        self.record(kind.name(), text, &[]);
    }

    /// Writes one machine-readable record (docs/machine-readable.md): what virt-dib's records
    /// have (`message`, `timestamp`, `type`, in its order), then `fields`.
    pub fn record(&self, kind: &str, message: &str, fields: &[(&str, Json<'_>)]) {
        let Some(m) = &self.machine else { return };
        let stamp = timestamp();
        let head = [("message", Json::Str(message)), ("timestamp", Json::Str(&stamp)), ("type", Json::Str(kind))];
        let body: Vec<String> =
            head.iter().chain(fields).map(|(k, v)| format!("\"{}\": {}", json_escape(k), v.encode())).collect();
        if let Ok(mut w) = m.lock() {
            let _ = writeln!(w, "{{ {} }}", body.join(", "));
            let _ = w.flush();
        }
    }

    /// Writes `text` and a newline to the machine-readable channel as is.
    pub fn raw_machine(&self, text: &str) {
        let Some(m) = &self.machine else { return };
        if let Ok(mut w) = m.lock() {
            let _ = writeln!(w, "{text}");
            let _ = w.flush();
        }
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// A progress line, `[  12.3] text`.
    pub fn message(&self, text: &str) {
        self.event(Kind::Message, text);
        if self.quiet {
            return;
        }
        let line = format!("[{:6.1}] {text}", self.elapsed());
        if self.force_color || self.is_terminal(Stream::Out) {
            self.line(Stream::Out, &format!("\x1b[0;32m{line}\x1b[0m"));
        } else {
            self.line(Stream::Out, &line);
        }
    }

    /// `prog: text`, not silenced by -q.
    pub fn info(&self, text: &str) {
        self.event(Kind::Info, text);
        self.print_prefixed(&format!("{}: {text}", self.prog), "\x1b[1;35m", false);
    }

    pub fn warning(&self, text: &str) {
        self.event(Kind::Warning, text);
        self.print_prefixed(&format!("{}: warning: {text}", self.prog), "\x1b[1;34m", false);
    }

    /// `prog: error: text` on stderr, followed by the bug-report hint unless both -v and -x.
    pub fn error(&self, text: &str) {
        self.event(Kind::Error, text);
        let s = format!("{}: error: {text}", self.prog);
        self.print_prefixed(&s, "\x1b[1;31m", true);
        if !(self.verbose && self.trace) {
            self.line(
                Stream::Err,
                &format!(
                    "\nIf reporting bugs, run {p} with debugging enabled and include the complete output:\n\n  {p} -v -x [...]",
                    p = self.prog
                ),
            );
        }
    }

    /// Debug output (--debug N): plain lines on stderr.
    pub fn debug(&self, text: &str) {
        self.line(Stream::Err, text);
    }

    fn print_prefixed(&self, text: &str, color: &str, to_stderr: bool) {
        let stream = if to_stderr { Stream::Err } else { Stream::Out };
        let tty = self.is_terminal(stream);
        let text = if self.wrap || tty { wrap(text, WRAP_COLUMNS) } else { text.to_owned() };
        let colored = if self.force_color || tty { format!("{color}{text}\x1b[0m") } else { text };
        self.line(stream, &colored);
    }
}

/// A value in a machine-readable record.
#[derive(Debug, Clone, Copy)]
pub enum Json<'a> {
    Str(&'a str),
    /// Seconds and other measures, written with three decimals.
    Secs(f64),
    Count(u64),
}

impl Json<'_> {
    fn encode(&self) -> String {
        match self {
            Json::Str(s) => format!("\"{}\"", json_escape(s)),
            Json::Secs(x) if x.is_finite() => format!("{x:.3}"),
            Json::Secs(_) => "null".to_owned(),
            Json::Count(n) => n.to_string(),
        }
    }
}

/// Wraps each paragraph line at `cols` columns on spaces (long words stay whole).
pub fn wrap(text: &str, cols: usize) -> String {
    let mut out = Vec::new();
    for line in text.split('\n') {
        let mut cur = String::new();
        for word in line.split(' ') {
            if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > cols {
                out.push(std::mem::take(&mut cur));
            } else if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        out.push(cur);
    }
    out.join("\n")
}

/// Escapes what virt-dib's JSON writer escapes, plus other control characters.
pub fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\u{8}' => o.push_str("\\b"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// RFC 3339 local time with nanoseconds and a ±HH:MM offset, as virt-dib writes it.
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: libc::tm is plain data, for which all zeroes is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r fills the tm we own from a valid time_t.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return String::new();
    }
    let off = tm.tm_gmtoff;
    let sign = if off < 0 { '-' } else { '+' };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}{sign}{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_nanos(),
        off.abs() / 3600,
        off.abs() % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping_and_timestamps() {
        assert_eq!(json_escape("a\"b\\c\nd\te\u{1}"), "a\\\"b\\\\c\\nd\\te\\u0001");
        let t = timestamp();
        // 2026-11-21T21:19:31.445450747+00:00
        assert_eq!(t.len(), 35, "{t}");
        assert_eq!(&t[10..11], "T");
        assert!(t[29..30] == *"+" || t[29..30] == *"-");
    }

    #[test]
    fn wrapping_keeps_words_whole() {
        let w = wrap(&"word ".repeat(30), 20);
        assert!(w.lines().all(|l| l.len() <= 20));
        assert_eq!(w.split_whitespace().count(), 30);
        assert_eq!(wrap("short", 76), "short");
    }

    #[test]
    fn machine_readable_lines() {
        let buf = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let o = ReporterOptions { quiet: true, ..Default::default() };
        let r = Reporter::new("microdib", Instant::now(), &o, Some(Box::new(Shared(buf.clone()))));
        r.message("Opening the disks");
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(out.starts_with("{ \"message\": \"Opening the disks\", \"timestamp\": \""), "{out}");
        assert!(out.ends_with("\", \"type\": \"message\" }\n"), "{out}");
        // microdib's own records: virt-dib's three keys first, then numbers as JSON numbers.
        buf.lock().unwrap().clear();
        r.record("written", "qcow2: 1.0 KiB written", &[("seconds", Json::Secs(2.5)), ("bytes", Json::Count(1024))]);
        let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(out.starts_with("{ \"message\": \"qcow2: 1.0 KiB written\", \"timestamp\": \""), "{out}");
        assert!(out.ends_with("\", \"type\": \"written\", \"seconds\": 2.500, \"bytes\": 1024 }\n"), "{out}");
    }
}
