//! Emulated devices and the port-I/O bus the vCPU threads dispatch to.

pub mod i8042;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex};

/// A device on the x86 port-I/O bus. `offset` is relative to the device's base port; `data`
/// is the guest's access: 1, 2 or 4 bytes, or count x size bytes for string I/O (`rep outsb`),
/// which our devices treat as a bad access. Any length must be handled without panicking.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device in guest-physical MMIO space; `offset` is relative to its window, `data` as long
/// as the guest's access (any length must be handled without panicking).
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Non-overlapping address ranges to devices; the one lookup both buses share.
struct RangeMap<D: ?Sized> {
    ranges: Vec<(u64, u64, Arc<Mutex<D>>)>,
}

impl<D: ?Sized> Default for RangeMap<D> {
    fn default() -> Self {
        RangeMap { ranges: Vec::new() }
    }
}

impl<D: ?Sized> RangeMap<D> {
    /// Claims `[base, base + len)` if it is not empty, ends at or below `limit` and overlaps
    /// nothing already claimed.
    fn insert(&mut self, base: u64, len: u64, limit: u64, device: Arc<Mutex<D>>) -> bool {
        let Some(end) = base.checked_add(len) else { return false };
        if len == 0 || end > limit || self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return false;
        }
        self.ranges.push((base, len, device));
        true
    }

    /// The device claiming `addr`, locked, and the offset into its range.
    fn find(&self, addr: u64) -> Option<(std::sync::MutexGuard<'_, D>, u64)> {
        let (base, _, dev) = self.ranges.iter().find(|(b, l, _)| addr >= *b && addr - b < *l)?;
        Some((dev.lock().unwrap_or_else(|p| p.into_inner()), addr - base))
    }
}

/// Port ranges to devices. Unclaimed ports read as all-ones (an empty ISA bus) and ignore writes.
#[derive(Default)]
pub struct PioBus {
    map: RangeMap<dyn PioDevice>,
}

impl PioBus {
    /// Claims `len` ports from `base`; returns false if they overlap an existing device.
    pub fn insert(&mut self, base: u16, len: u16, device: Arc<Mutex<dyn PioDevice>>) -> bool {
        self.map.insert(base.into(), len.into(), 0x1_0000, device)
    }

    /// Dispatches a guest IN. Returns whether a device claimed the port.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.map.find(port.into()) {
            // Offsets stay below 0x10000: ranges end at or below the 16-bit port space.
            Some((mut dev, off)) => {
                dev.read(off as u16, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a guest OUT. Returns whether a device claimed the port.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        self.map.find(port.into()).map(|(mut dev, off)| dev.write(off as u16, data)).is_some()
    }
}

/// Guest-physical windows to devices. Unclaimed addresses read as all-ones, writes are dropped.
#[derive(Default)]
pub struct MmioBus {
    map: RangeMap<dyn MmioDevice>,
}

impl MmioBus {
    /// Claims `[base, base + len)`; returns false on overlap or overflow.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn MmioDevice>>) -> bool {
        self.map.insert(base, len, u64::MAX, device)
    }

    /// Dispatches a guest MMIO read. Returns whether a device claimed the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.map.find(addr) {
            Some((mut dev, off)) => {
                dev.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a guest MMIO write. Returns whether a device claimed the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.map.find(addr).map(|(mut dev, off)| dev.write(off, data)).is_some()
    }
}

/// A vm-superio trigger that signals an eventfd (used as a KVM irqfd for device interrupts).
pub struct EventFdTrigger(pub vmm_sys_util::eventfd::EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u16, Vec<u8>)>);
    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_port_and_rejects_overlaps() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::default();
        assert!(bus.insert(0x3f8, 8, dev.clone()));
        assert!(!bus.insert(0x3fc, 8, dev.clone()), "overlap");
        assert!(!bus.insert(0xfffc, 8, dev.clone()), "past the last port");
        assert!(!bus.insert(0x10, 0, dev.clone()), "empty range");
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert!(!bus.write(0x3f7, &[1]));
        let mut w = [0u8; 4];
        assert!(!bus.read(0x3000, &mut w));
        assert_eq!(w, [0xff; 4]);
        assert_eq!(dev.lock().unwrap().0, vec![(0, b"x".to_vec())]);
    }

    /// Whatever ports, lengths and bytes a guest uses, the bus and every legacy device answer
    /// without panicking (a small xorshift generator keeps the test deterministic).
    #[test]
    fn random_guest_port_io_never_panics() {
        use crate::devices::i8042::{ResetController, I8042_LEN, I8042_PORT};
        use crate::devices::serial::{ConsoleSink, ConsoleWatch, SerialConsole, COM1_LEN, COM1_PORT};
        use crate::exit::ExitLatch;
        use vmm_sys_util::eventfd::EventFd;

        let (sink, _writer) = ConsoleSink::new(Box::new(std::io::sink()), Arc::new(ConsoleWatch::default())).unwrap();
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let latch = Arc::new(ExitLatch::default());
        let mut bus = PioBus::default();
        assert!(bus.insert(COM1_PORT, COM1_LEN, Arc::new(Mutex::new(SerialConsole::new(irq, sink)))));
        assert!(bus.insert(I8042_PORT, I8042_LEN, Arc::new(Mutex::new(ResetController::new(latch)))));

        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let r = next();
            // Mostly ports near the devices, sometimes anywhere.
            let port = if r & 1 == 0 { 0x3f0 + (r >> 8) as u16 % 0x18 } else { (r >> 16) as u16 };
            let len = [1usize, 2, 4, 0, 3, 8, 64][(r >> 40) as usize % 7];
            let mut data = vec![(r >> 48) as u8; len];
            if r & 2 == 0 {
                bus.read(port, &mut data);
            } else {
                bus.write(port, &data);
            }
            let _ = bus.read(0x60 + (r >> 56) as u16 % 5, &mut [0u8]);
        }
    }
}
