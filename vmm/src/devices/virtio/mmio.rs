//! The virtio-mmio transport, version 2: one 4 KiB register window per device. Register writes
//! come straight from the guest, so every index, size and state transition is checked; a
//! misbehaving driver gets its write ignored (or the device marked NEEDS_RESET), never a panic.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueues, Interrupt, VirtioDevice, INT_CONFIG, VIRTIO_F_VERSION_1};

/// Size of one transport's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of the queue-notify register (ioeventfds are registered on it).
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC_VALUE: u64 = 0x00;
const VERSION: u64 = 0x04;
const DEVICE_ID: u64 = 0x08;
const VENDOR_ID: u64 = 0x0c;
const DEVICE_FEATURES: u64 = 0x10;
const DEVICE_FEATURES_SEL: u64 = 0x14;
const DRIVER_FEATURES: u64 = 0x20;
const DRIVER_FEATURES_SEL: u64 = 0x24;
const QUEUE_SEL: u64 = 0x30;
const QUEUE_NUM_MAX: u64 = 0x34;
const QUEUE_NUM: u64 = 0x38;
const QUEUE_READY: u64 = 0x44;
const INTERRUPT_STATUS: u64 = 0x60;
const INTERRUPT_ACK: u64 = 0x64;
const STATUS: u64 = 0x70;
const QUEUE_DESC_LOW: u64 = 0x80;
const QUEUE_DESC_HIGH: u64 = 0x84;
const QUEUE_AVAIL_LOW: u64 = 0x90;
const QUEUE_AVAIL_HIGH: u64 = 0x94;
const QUEUE_USED_LOW: u64 = 0xa0;
const QUEUE_USED_HIGH: u64 = 0xa4;
const CONFIG_GENERATION: u64 = 0xfc;
const CONFIG_SPACE: u64 = 0x100;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR: u32 = 0x4244_4d44; // "DMDB"

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_NEEDS_RESET: u32 = 64;
const S_FAILED: u32 = 128;

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    // Queue::new only fails for sizes that are not a power of two; devices use fixed valid sizes.
    device.queue_max_sizes().iter().filter_map(|&m| Queue::new(m).ok()).collect()
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> std::io::Result<Self> {
        let queues = fresh_queues(device.as_ref());
        let queue_events =
            (0..queues.len()).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<std::io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            queues,
            queue_events,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// Eventfds to register as ioeventfds on `QUEUE_NOTIFY` (datamatch = queue index).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may only change while the driver is setting the device up.
    fn queues_writable(&self) -> bool {
        !self.active && self.status & S_FEATURES_OK != 0 && self.status & S_DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = fresh_queues(self.device.as_ref());
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.active = false;
        self.interrupt.clear();
    }

    fn activate(&mut self) -> bool {
        let usable = self.queues.iter().all(|q| !q.ready() || q.is_valid(&self.mem));
        if !usable {
            return false;
        }
        let events = match self.queue_events.iter().map(|e| e.try_clone()).collect::<std::io::Result<Vec<_>>>() {
            Ok(e) => e,
            Err(_) => return false,
        };
        let queues = std::mem::take(&mut self.queues);
        let active = ActiveQueues { mem: self.mem.clone(), queues, events, interrupt: self.interrupt.clone() };
        match self.device.activate(active) {
            Ok(()) => {
                self.active = true;
                true
            }
            Err(e) => {
                tracing::warn!("virtio device {}: {e}", self.device.device_type());
                self.queues = fresh_queues(self.device.as_ref());
                false
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (virtio 1.2, 3.1.1); anything else is ignored.
        if value & self.status != self.status {
            return;
        }
        let added = value & !self.status;
        if added & S_FEATURES_OK != 0 {
            let ok = self.driver_features & VIRTIO_F_VERSION_1 != 0
                && self.driver_features & !self.offered_features() == 0
                && self.status & S_DRIVER != 0;
            if !ok {
                self.status = value & !S_FEATURES_OK;
                return;
            }
            self.device.set_acked_features(self.driver_features);
        }
        if added & S_DRIVER_OK != 0 {
            if value & S_FEATURES_OK == 0 || self.active {
                return;
            }
            if !self.activate() {
                self.status = value & !S_DRIVER_OK | S_NEEDS_RESET;
                self.interrupt.signal(INT_CONFIG);
                return;
            }
        }
        self.status = value & (S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_FAILED | S_NEEDS_RESET);
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map(|q| q.max_size().into()).unwrap_or(0),
            QUEUE_READY => self.selected_queue().map(|q| u32::from(q.ready())).unwrap_or(0),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let queues_writable = self.queues_writable();
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES if self.status & S_FEATURES_OK == 0 && self.status & S_DRIVER != 0 => {
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
            }
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM if queues_writable => {
                if let Some(q) = self.selected_queue() {
                    // Sizes above the maximum or not a power of two are refused by the queue.
                    q.set_size(u16::try_from(v).unwrap_or(0));
                }
            }
            QUEUE_READY if queues_writable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_AVAIL_LOW | QUEUE_AVAIL_HIGH | QUEUE_USED_LOW
            | QUEUE_USED_HIGH
                if queues_writable =>
            {
                if let Some(q) = self.selected_queue() {
                    let (lo, hi) = if offset & 4 == 0 { (Some(v), None) } else { (None, Some(v)) };
                    match offset & !4 {
                        QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                        QUEUE_AVAIL_LOW => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            QUEUE_NOTIFY => {
                // Normally the ioeventfd catches this write in the kernel; this path only runs
                // when it is not registered.
                if let Some(e) = self.queue_events.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            INTERRUPT_ACK => self.interrupt.ack(v),
            STATUS => self.write_status(v),
            _ => {}
        }
    }

    /// A guest read of `data.len()` bytes at `offset` into the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32-bit and aligned; other accesses read as zero.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    /// A guest write of `data` at `offset` into the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if !self.active || self.status & S_DRIVER_OK != 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

impl crate::devices::MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    /// A device that records what the transport does to it.
    #[derive(Default)]
    struct Probe {
        log: Arc<Mutex<Vec<String>>>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn set_acked_features(&mut self, f: u64) {
            self.log.lock().unwrap().push(format!("features {f:#x}"));
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data)
        }
        fn activate(&mut self, q: ActiveQueues) -> Result<(), ActivateError> {
            self.log.lock().unwrap().push(format!("activate {} queues", q.queues.len()));
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().push("reset".into());
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Vec<String>>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let probe = Probe::default();
        let log = probe.log.clone();
        (MmioTransport::new(Box::new(probe), mem).unwrap(), log)
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup_queue(t: &mut MmioTransport, idx: u32, size: u32, base: u32) {
        wr(t, QUEUE_SEL, idx);
        wr(t, QUEUE_NUM, size);
        wr(t, QUEUE_DESC_LOW, base);
        wr(t, QUEUE_DESC_HIGH, 0);
        wr(t, QUEUE_AVAIL_LOW, base + 0x1000);
        wr(t, QUEUE_AVAIL_HIGH, 0);
        wr(t, QUEUE_USED_LOW, base + 0x2000);
        wr(t, QUEUE_USED_HIGH, 0);
        wr(t, QUEUE_READY, 1);
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        wr(t, STATUS, S_ACKNOWLEDGE);
        wr(t, STATUS, S_ACKNOWLEDGE | S_DRIVER);
        wr(t, DRIVER_FEATURES_SEL, 0);
        wr(t, DRIVER_FEATURES, features as u32);
        wr(t, DRIVER_FEATURES_SEL, 1);
        wr(t, DRIVER_FEATURES, (features >> 32) as u32);
        wr(t, STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, MAGIC_VALUE), MMIO_MAGIC);
        assert_eq!(rd(&mut t, VERSION), 2);
        assert_eq!(rd(&mut t, DEVICE_ID), 42);
        wr(&mut t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        wr(&mut t, DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 1 << 5);
        wr(&mut t, DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut t, DEVICE_FEATURES), 0);
        wr(&mut t, QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 8);
        wr(&mut t, QUEUE_SEL, 99);
        assert_eq!(rd(&mut t, QUEUE_NUM_MAX), 0);
        let mut cfg = [0u8; 4];
        t.read(CONFIG_SPACE, &mut cfg);
        assert_eq!(cfg, [0xaa, 0xbb, 0, 0]);
    }

    #[test]
    fn full_negotiation_activates_once() {
        let (mut t, log) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(rd(&mut t, STATUS), S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        setup_queue(&mut t, 0, 16, 0x10000);
        setup_queue(&mut t, 1, 8, 0x20000);
        wr(&mut t, STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        assert_eq!(rd(&mut t, STATUS) & S_DRIVER_OK, S_DRIVER_OK);
        // Queue registers are frozen once the device runs.
        wr(&mut t, QUEUE_SEL, 0);
        wr(&mut t, QUEUE_READY, 0);
        wr(&mut t, 0x70, 0); // reset
        assert_eq!(rd(&mut t, STATUS), 0);
        assert_eq!(*log.lock().unwrap(), vec!["features 0x100000020", "activate 2 queues", "reset"]);
    }

    #[test]
    fn features_without_version_1_or_unoffered_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 << 5);
        assert_eq!(rd(&mut t, STATUS) & S_FEATURES_OK, 0, "legacy driver refused");
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 9);
        assert_eq!(rd(&mut t, STATUS) & S_FEATURES_OK, 0, "feature not offered");
    }

    #[test]
    fn queues_outside_guest_memory_need_reset() {
        let (mut t, log) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 16, 0xfff0_0000); // beyond the 1 MiB of RAM
        wr(&mut t, STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        let s = rd(&mut t, STATUS);
        assert_eq!(s & S_DRIVER_OK, 0);
        assert_ne!(s & S_NEEDS_RESET, 0);
        assert_ne!(t.interrupt().status() & INT_CONFIG, 0);
        assert!(log.lock().unwrap().iter().all(|l| !l.starts_with("activate")));
    }

    #[test]
    fn odd_accesses_and_skipped_steps_are_ignored() {
        let (mut t, log) = transport();
        // DRIVER_OK without the earlier steps, status bits being removed, unaligned and short
        // accesses, a queue size that is not a power of two, notifies for absent queues.
        wr(&mut t, STATUS, S_DRIVER_OK);
        assert_eq!(rd(&mut t, STATUS), 0);
        wr(&mut t, STATUS, S_ACKNOWLEDGE | S_DRIVER);
        wr(&mut t, STATUS, S_ACKNOWLEDGE);
        assert_eq!(rd(&mut t, STATUS), S_ACKNOWLEDGE | S_DRIVER);
        t.write(STATUS + 1, &[0xff, 0xff, 0xff, 0xff]);
        t.write(STATUS, &[0xff]);
        let mut two = [0u8; 2];
        t.read(MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        wr(&mut t, QUEUE_NOTIFY, 12345);
        wr(&mut t, QUEUE_NUM, 3);
        assert!(log.lock().unwrap().is_empty());
    }
}
