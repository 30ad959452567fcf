//! The 16550A UART on COM1 (0x3f8, IRQ 4): the guest console. Output is line-buffered to a
//! host sink and watched for a kernel panic so the VMM can tell a crash from a clean reboot.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// What the console saw that matters for how the guest ended.
#[derive(Debug, Default)]
pub struct ConsoleWatch {
    panicked: AtomicBool,
}

impl ConsoleWatch {
    pub fn kernel_panicked(&self) -> bool {
        self.panicked.load(Ordering::Relaxed)
    }
}

/// Line-buffering writer in front of the host's console output.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    watch: Arc<ConsoleWatch>,
}

impl ConsoleSink {
    pub fn new(out: Box<dyn Write + Send>, watch: Arc<ConsoleWatch>) -> Self {
        ConsoleSink { out, line: Vec::with_capacity(256), watch }
    }

    fn emit_line(&mut self) {
        if self.line.windows(PANIC_MARKER.len()).any(|w| w == PANIC_MARKER) {
            self.watch.panicked.store(true, Ordering::Relaxed);
        }
        // A console that cannot be written (closed pipe) must not stop the guest.
        let _ = self.out.write_all(&self.line);
        let _ = self.out.flush();
        self.line.clear();
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

    /// Pushes out a partial last line (at VM exit).
    pub fn flush(&mut self) {
        self.uart.writer_mut().finish();
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

    #[test]
    fn guest_bytes_reach_the_sink_by_line_and_panics_are_seen() {
        let out = Shared::default();
        let watch = Arc::new(ConsoleWatch::default());
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut com1 = SerialConsole::new(irq, ConsoleSink::new(Box::new(out.clone()), watch.clone()));
        for b in b"hello\nKernel panic - not syncing: x\npart" {
            com1.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hello\nKernel panic - not syncing: x\n");
        assert!(watch.kernel_panicked());
        com1.flush();
        assert!(out.0.lock().unwrap().ends_with(b"part"));
    }

    #[test]
    fn odd_sized_or_out_of_range_accesses_are_harmless() {
        let watch = Arc::new(ConsoleWatch::default());
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut com1 = SerialConsole::new(irq, ConsoleSink::new(Box::new(std::io::sink()), watch));
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
        let mut sink = ConsoleSink::new(Box::new(out.clone()), Arc::new(ConsoleWatch::default()));
        sink.write_all(&vec![b'a'; MAX_LINE * 2 + 3]).unwrap();
        assert_eq!(out.0.lock().unwrap().len(), MAX_LINE * 2);
    }
}
