//! The guest's console as the host keeps it: its first bytes (the boot), then its latest output;
//! the file never grows past `limit`, whatever the guest writes. When it would, what lies
//! between the head and the latest `keep` bytes is dropped and one line says how much. The
//! latest output is what error messages quote (a panic, the last words of a dying agent).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The first bytes kept whatever follows: the kernel's boot messages.
pub const HEAD: u64 = 64 << 10;
/// The most the file holds.
pub const LIMIT: u64 = 2 << 20;
/// What a cut keeps of the latest output.
pub const KEEP: u64 = 512 << 10;

/// A console file bounded to `limit` bytes.
pub struct ConsoleLog {
    file: File,
    len: u64,
    head: u64,
    limit: u64,
    keep: u64,
    dropped: u64,
}

impl ConsoleLog {
    /// Creates (or empties) the console file at `path`.
    pub fn create(path: &Path) -> std::io::Result<ConsoleLog> {
        let file = File::options().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(ConsoleLog::with_bounds(file, HEAD, LIMIT, KEEP))
    }

    fn with_bounds(file: File, head: u64, limit: u64, keep: u64) -> ConsoleLog {
        ConsoleLog { file, len: 0, head, limit, keep, dropped: 0 }
    }

    /// The file back down to its head, a line saying what was dropped, and its latest `keep`
    /// bytes.
    fn cut(&mut self) -> std::io::Result<()> {
        let keep = self.keep.min(self.len - self.head);
        let mut latest = vec![0u8; keep as usize];
        self.file.seek(SeekFrom::Start(self.len - keep))?;
        self.file.read_exact(&mut latest)?;
        self.dropped += self.len - self.head - keep;
        self.file.set_len(self.head)?;
        self.file.seek(SeekFrom::Start(self.head))?;
        let note = format!("\n[microdib: {} bytes of console output left out here]\n", self.dropped);
        self.file.write_all(note.as_bytes())?;
        self.file.write_all(&latest)?;
        self.len = self.head + note.len() as u64 + keep;
        Ok(())
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Past the limit in pieces no larger than the room left, so a cut never needs more.
        let room = self.limit.saturating_sub(self.len);
        if room == 0 {
            self.cut()?;
            return self.write(data);
        }
        let n = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(&data[..n])?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path) -> ConsoleLog {
        let file = File::options().read(true).write(true).create(true).truncate(true).open(dir.join("c")).unwrap();
        ConsoleLog::with_bounds(file, 10, 100, 30)
    }

    #[test]
    fn a_console_that_never_stops_keeps_its_head_and_its_latest_output_within_the_limit() {
        let dir = crate::testing::TempDir::new("console-log");
        let mut c = log(&dir.0);
        c.write_all(b"boot-line\n").unwrap();
        for i in 0..10_000 {
            c.write_all(format!("line {i}\n").as_bytes()).unwrap();
            assert!(c.len <= 100);
        }
        let text = std::fs::read_to_string(dir.0.join("c")).unwrap();
        assert!(text.len() <= 100, "{}", text.len());
        assert!(text.starts_with("boot-line\n"), "{text}");
        assert!(text.ends_with("line 9999\n"), "{text}");
        assert!(text.contains("bytes of console output left out here]"), "{text}");
    }

    #[test]
    fn a_quiet_console_is_kept_whole() {
        let dir = crate::testing::TempDir::new("console-log");
        let mut c = log(&dir.0);
        c.write_all(b"0123456789abcdefghij").unwrap();
        assert_eq!(std::fs::read(dir.0.join("c")).unwrap(), b"0123456789abcdefghij");
    }
}
