//! virtio devices over the virtio-mmio transport (virtio 1.x, "modern" only).
//!
//! The transport (`mmio`) owns the register state machine and runs on the vCPU threads; the
//! devices do their queue work on their own worker thread, woken through the queues'
//! ioeventfds, and interrupt the guest through an irqfd. Everything a device reads from a
//! queue is guest-controlled: devices go through `virtio-queue`'s bounds-checked chains and
//! never trust a length or an address.

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit every modern device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bit: a queue has new used buffers.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed (or the device needs a reset).
pub const INT_CONFIG: u32 = 2;

/// How often device threads look for interrupts the guest left unacknowledged and for queue
/// notifications that never arrived.
pub const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

/// The device's interrupt line: the status register the driver reads, and the irqfd that
/// raises the GSI.
pub struct Interrupt {
    status: AtomicU32,
    /// How many times the interrupt was raised, so the watchdog can tell old from new.
    raised: AtomicU64,
    irq: EventFd,
}

impl Interrupt {
    pub fn new() -> std::io::Result<Self> {
        Ok(Interrupt { status: AtomicU32::new(0), raised: AtomicU64::new(0), irq: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    /// The eventfd to register as the device's irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irq
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Raises the interrupt with `bit` set in the status register.
    pub fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.raised.fetch_add(1, Ordering::SeqCst);
        // Only fails if the counter would overflow, i.e. an interrupt is already pending.
        let _ = self.irq.write(1);
    }

    /// Called every `WATCHDOG_PERIOD` by the device thread with the count it saw last time. If
    /// status bits raised before that call are still unacknowledged, the guest never took the
    /// edge (seen under nested emulation), so it is raised again. Returns whether it was.
    pub fn reraise_if_unseen(&self, last_raised: &mut u64) -> bool {
        let raised = self.raised.load(Ordering::SeqCst);
        let unseen = self.status() != 0 && raised == *last_raised;
        *last_raised = raised;
        if unseen {
            let _ = self.irq.write(1);
        }
        unseen
    }
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct ActiveQueues {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    /// One per queue: written (through the ioeventfd) when the driver notifies that queue.
    pub events: Vec<EventFd>,
    pub interrupt: std::sync::Arc<Interrupt>,
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("cannot start the device worker")]
    Worker(#[source] std::io::Error),
    #[error("the driver configured the queues inconsistently")]
    BadQueues,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// virtio device ID (1 = net, 2 = block, 4 = rng, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits, without VIRTIO_F_VERSION_1 (the transport adds it).
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of `features()` plus VERSION_1).
    fn set_acked_features(&mut self, _features: u64) {}
    /// Reads device configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, queues: ActiveQueues) -> Result<(), ActivateError>;
    /// Stops serving and returns to the initial state (driver wrote 0 to the status register).
    fn reset(&mut self);
}

/// Completes every chain available on `queue`: `handle` serves one and says how many bytes it
/// wrote into the guest's buffers. Returns whether any chain was completed.
pub fn serve_chains(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: impl FnMut(virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> bool {
    use virtio_queue::QueueT;
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = handle(chain);
        if queue.add_used(mem, head, len).is_err() {
            break;
        }
        used = true;
    }
    used
}

/// Copies `config[offset..]` into `data`, zero-filling what lies outside `config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, 4, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status_bits() {
        let i = Interrupt::new().unwrap();
        i.signal(INT_USED_RING);
        i.signal(INT_CONFIG);
        assert_eq!(i.status(), 3);
        assert_eq!(i.irqfd().read().unwrap(), 2);
        i.ack(INT_USED_RING);
        assert_eq!(i.status(), INT_CONFIG);
    }

    #[test]
    fn only_an_interrupt_left_unacknowledged_for_a_whole_period_is_raised_again() {
        let i = Interrupt::new().unwrap();
        let mut seen = 0;
        assert!(!i.reraise_if_unseen(&mut seen), "nothing raised yet");
        i.signal(INT_USED_RING);
        assert!(!i.reraise_if_unseen(&mut seen), "raised since the last look: give the guest time");
        assert_eq!(i.irqfd().read().unwrap(), 1);
        assert!(i.reraise_if_unseen(&mut seen), "still unacknowledged a period later");
        assert_eq!(i.irqfd().read().unwrap(), 1);
        i.ack(INT_USED_RING);
        assert!(!i.reraise_if_unseen(&mut seen), "acknowledged");
    }
}
