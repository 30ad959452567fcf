//! Bounded keepers for bytes that come from the guest: script output, a command's answer, its
//! error messages. A guest can print without end (and without newlines), so each keeper has a
//! cap, does work in proportion to the bytes fed, and says when it dropped something.

use std::collections::VecDeque;

/// Longest line kept for an error message; the rest of it is dropped.
pub const LINE_MAX: usize = 64 * 1024;
/// Lines of a failing script's output shown in its error message.
pub const TAIL_LINES: usize = 20;
/// Most of a command's standard output that is read as an answer (block-device.d's device
/// name, a probe's result).
pub const ANSWER_MAX: usize = 4 << 20;
/// Most of a command's error output quoted in a message (its end, where the reason usually is).
pub const MESSAGE_MAX: usize = 64 * 1024;

/// The last `TAIL_LINES` lines of a stream, each cut at `LINE_MAX` bytes.
#[derive(Debug, Default)]
pub struct LineTail {
    pending: Vec<u8>,
    pending_cut: bool,
    lines: VecDeque<String>,
}

impl LineTail {
    pub fn feed(&mut self, mut data: &[u8]) {
        while let Some(nl) = memchr::memchr(b'\n', data) {
            self.keep(&data[..nl]);
            self.end_line();
            data = &data[nl + 1..];
        }
        self.keep(data);
    }

    /// Whether the stream so far ended in the middle of a line.
    pub fn in_a_line(&self) -> bool {
        !self.pending.is_empty() || self.pending_cut
    }

    /// The kept lines, the unfinished last one included.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.in_a_line() {
            self.end_line();
        }
        self.lines.into()
    }

    fn keep(&mut self, d: &[u8]) {
        let room = LINE_MAX - self.pending.len();
        if d.len() > room {
            self.pending.extend_from_slice(&d[..room]);
            self.pending_cut = true;
        } else {
            self.pending.extend_from_slice(d);
        }
    }

    fn end_line(&mut self) {
        let mut line = String::from_utf8_lossy(&self.pending).into_owned();
        if self.pending_cut {
            line.push_str(" [... cut]");
        }
        self.pending.clear();
        self.pending_cut = false;
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// The first `cap` bytes of a stream that is parsed afterwards.
#[derive(Debug)]
pub struct Answer {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl Answer {
    pub fn new(cap: usize) -> Answer {
        Answer { buf: Vec::new(), cap, overflowed: false }
    }

    pub fn feed(&mut self, d: &[u8]) {
        let room = self.cap - self.buf.len();
        if d.len() > room {
            self.buf.extend_from_slice(&d[..room]);
            self.overflowed = true;
        } else {
            self.buf.extend_from_slice(d);
        }
    }

    /// The text, or None when more than `cap` bytes came (an answer cut short is no answer).
    pub fn text(&self) -> Option<String> {
        (!self.overflowed).then(|| String::from_utf8_lossy(&self.buf).into_owned())
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// The last `cap` bytes of a stream, for a message.
#[derive(Debug)]
pub struct Tail {
    buf: Vec<u8>,
    cap: usize,
    dropped: bool,
}

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail { buf: Vec::new(), cap, dropped: false }
    }

    pub fn feed(&mut self, d: &[u8]) {
        let d = if d.len() > self.cap {
            self.dropped = true;
            self.buf.clear();
            &d[d.len() - self.cap..]
        } else {
            d
        };
        self.buf.extend_from_slice(d);
        // Trimmed in batches, so each byte is moved a bounded number of times.
        if self.buf.len() > 2 * self.cap {
            self.buf.drain(..self.buf.len() - self.cap);
            self.dropped = true;
        }
    }

    /// The kept text, trimmed, marked when its beginning was dropped.
    pub fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(self.cap);
        let text = String::from_utf8_lossy(&self.buf[start..]);
        if self.dropped || start > 0 {
            format!("[...] {}", text.trim())
        } else {
            text.trim().to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_tail_keeps_the_last_lines_and_cuts_long_ones() {
        let mut t = LineTail::default();
        for i in 0..30 {
            t.feed(format!("line {i}\n").as_bytes());
        }
        t.feed(b"unfinished");
        assert!(t.in_a_line());
        let lines = t.into_lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 11");
        assert_eq!(lines[TAIL_LINES - 1], "unfinished");

        let mut t = LineTail::default();
        t.feed(&vec![b'a'; LINE_MAX + 10]);
        t.feed(b"b\nnext\n");
        let lines = t.into_lines();
        assert_eq!(lines[0].len(), LINE_MAX + " [... cut]".len());
        assert_eq!(lines[1], "next");
    }

    /// The figure: 512 MiB without a newline, in 64 KiB frames, holds at most one line's
    /// worth and takes well under 2 s (it did neither when the pending line grew and was
    /// rescanned on every frame).
    #[test]
    fn half_a_gigabyte_without_newlines_stays_small_and_fast() {
        let chunk = vec![b'x'; 64 * 1024];
        let started = std::time::Instant::now();
        let mut t = LineTail::default();
        for _ in 0..(512 * 1024 * 1024 / chunk.len()) {
            t.feed(&chunk);
            assert!(t.pending.capacity() <= 2 * LINE_MAX);
        }
        assert!(t.pending.len() <= LINE_MAX);
        let secs = started.elapsed().as_secs_f64();
        assert!(secs < 2.0, "took {secs:.2} s");
    }

    #[test]
    fn answers_past_their_cap_are_no_answers() {
        let mut a = Answer::new(8);
        a.feed(b"/dev/vda");
        assert_eq!(a.text().as_deref(), Some("/dev/vda"));
        a.feed(b"1");
        assert_eq!(a.text(), None);
        assert_eq!(a.buf.len(), 8);
    }

    #[test]
    fn tails_keep_the_end() {
        let mut t = Tail::new(10);
        t.feed(b"short\n");
        assert_eq!(t.text(), "short");
        for _ in 0..1000 {
            t.feed(b"0123456789abc");
            assert!(t.buf.len() <= 20);
        }
        t.feed(b"the reason");
        assert_eq!(t.text(), "[...] the reason");
        let mut t = Tail::new(4);
        t.feed(b"0123456789");
        assert_eq!(t.text(), "[...] 6789");
    }
}
