//! The 16550A UART on COM1 (0x3f8, IRQ 4): the guest console. Output is line-buffered to a
//! host sink and watched for a kernel panic so the VMM can tell a crash from a clean reboot.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::{EventFdTrigger, PioDevice};

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 port count.
pub const COM1_LEN: u16 = 8;
/// COM1 interrupt line.
pub const COM1_GSI: u32 = 4;

const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Flush a line that long even without a newline, so a guest cannot make us buffer forever.
const MAX_LINE: usize = 4096;
/// Lines queued for the writer thread; beyond this a slow console loses lines, never the guest.
const QUEUE_LINES: usize = 4096;

/// What the console saw that matters for how the guest ended.
#[derive(Debug, Default)]
pub struct ConsoleWatch {
    panicked: AtomicBool,
    dropped_lines: AtomicU64,
}

impl ConsoleWatch {
    pub fn kernel_panicked(&self) -> bool {
        self.panicked.load(Ordering::Relaxed)
    }

    /// Lines lost because the host console did not keep up.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines.load(Ordering::Relaxed)
    }
}

/// Line-buffering writer in front of the host's console output. Complete lines go to a writer
/// thread through a bounded queue, so a console nobody reads (a full pipe) cannot block the
/// vCPU that is emulating the UART.
pub struct ConsoleSink {
    tx: Option<SyncSender<Vec<u8>>>,
    line: Vec<u8>,
    watch: Arc<ConsoleWatch>,
}

/// The thread that writes console lines to the host.
pub struct ConsoleWriter {
    thread: Option<JoinHandle<()>>,
}

impl ConsoleWriter {
    /// Waits up to `limit` for queued lines to be written (after the sink has been closed).
    /// A writer stuck on a blocked output is left behind rather than waited for.
    pub fn finish(mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>) {
    for line in rx {
        // A console that cannot be written (closed pipe) must not stop the guest.
        let _ = out.write_all(&line);
        let _ = out.flush();
    }
}

impl ConsoleSink {
    /// A sink and the writer thread behind it.
    pub fn new(out: Box<dyn Write + Send>, watch: Arc<ConsoleWatch>) -> std::io::Result<(Self, ConsoleWriter)> {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let thread = std::thread::Builder::new().name("console".into()).spawn(move || write_lines(rx, out))?;
        Ok((ConsoleSink { tx: Some(tx), line: Vec::with_capacity(256), watch }, ConsoleWriter { thread: Some(thread) }))
    }

    fn emit_line(&mut self) {
        if self.line.windows(PANIC_MARKER.len()).any(|w| w == PANIC_MARKER) {
            self.watch.panicked.store(true, Ordering::Relaxed);
        }
        let line = std::mem::replace(&mut self.line, Vec::with_capacity(256));
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.watch.dropped_lines.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends a partial last line and closes the queue; the writer thread then drains and ends.
    pub fn close(&mut self) {
        self.finish();
        self.tx = None;
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit_line();
            }
        }
        Ok(buf.len())
    }

    /// The UART flushes after every byte; keep the line buffered until it ends (see `finish`).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleSink {
    /// Writes out a partial last line.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit_line();
        }
    }
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        self.finish();
    }
}

/// COM1 on the port bus.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
}

impl SerialConsole {
    pub fn new(irq: EventFdTrigger, sink: ConsoleSink) -> Self {
        SerialConsole { uart: Serial::new(irq, sink) }
    }

    /// Pushes out a partial last line and closes the console (at VM exit).
    pub fn close(&mut self) {
        self.uart.writer_mut().close();
    }
}

impl PioDevice for SerialConsole {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, data[0]) {
                tracing::warn!("serial: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn com1(out: Box<dyn Write + Send>, watch: Arc<ConsoleWatch>) -> (SerialConsole, ConsoleWriter) {
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (sink, writer) = ConsoleSink::new(out, watch).unwrap();
        (SerialConsole::new(irq, sink), writer)
    }

    #[test]
    fn guest_bytes_reach_the_sink_by_line_and_panics_are_seen() {
        let out = Shared::default();
        let watch = Arc::new(ConsoleWatch::default());
        let (mut com1, writer) = com1(Box::new(out.clone()), watch.clone());
        for b in b"hello\nKernel panic - not syncing: x\npart" {
            com1.write(0, &[*b]);
        }
        assert!(watch.kernel_panicked());
        com1.close();
        writer.finish(Duration::from_secs(5));
        assert_eq!(&*out.0.lock().unwrap(), b"hello\nKernel panic - not syncing: x\npart");
    }

    /// An output that never accepts a byte (like a pipe nobody reads).
    struct Stuck;
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_console_never_blocks_the_guest() {
        let watch = Arc::new(ConsoleWatch::default());
        let (mut com1, writer) = com1(Box::new(Stuck), watch.clone());
        let start = Instant::now();
        for _ in 0..(QUEUE_LINES + 10) {
            com1.write(0, b"x");
            com1.write(0, b"\n");
        }
        com1.close();
        writer.finish(Duration::from_millis(50));
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(watch.dropped_lines() >= 9, "overflow is counted, not waited for");
    }

    #[test]
    fn odd_sized_or_out_of_range_accesses_are_harmless() {
        let (mut com1, _writer) = com1(Box::new(std::io::sink()), Arc::new(ConsoleWatch::default()));
        let mut d = [0u8; 4];
        com1.read(0, &mut d);
        assert_eq!(d, [0xff; 4]);
        com1.write(0x300, &[1]);
        com1.write(0, &[1, 2]);
        let mut one = [0u8];
        com1.read(5, &mut one); // line status: transmitter empty
        assert_ne!(one[0] & 0x20, 0);
    }

    #[test]
    fn endless_lines_are_flushed() {
        let out = Shared::default();
        let (mut sink, writer) = ConsoleSink::new(Box::new(out.clone()), Arc::new(ConsoleWatch::default())).unwrap();
        sink.write_all(&vec![b'a'; MAX_LINE * 2 + 3]).unwrap();
        sink.tx = None; // close without sending the partial line
        writer.finish(Duration::from_secs(5));
        assert_eq!(out.0.lock().unwrap().len(), MAX_LINE * 2);
    }
}
