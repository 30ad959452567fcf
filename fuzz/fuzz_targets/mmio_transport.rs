//! Random register reads and writes against the virtio-mmio transport (with a device that does
//! nothing), including the status state machine and queue set-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::{read_config_bytes, ActivateError, ActiveQueues, VirtioDevice};

struct Nop;
impl VirtioDevice for Nop {
    fn device_type(&self) -> u32 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 256]
    }
    fn features(&self) -> u64 {
        0b1011
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data)
    }
    fn activate(&mut self, _q: ActiveQueues) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
    let mut t = MmioTransport::new(Box::new(Nop), mem).unwrap();
    for op in data.chunks(8) {
        if op.len() < 8 {
            break;
        }
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]])) % 0x1100;
        let len = [1usize, 2, 4, 8, 3, 0][op[3] as usize % 6];
        let value = [op[4], op[5], op[6], op[7], op[4], op[5], op[6], op[7]];
        if op[0] & 1 == 0 {
            let mut buf = vec![0u8; len];
            t.read(offset, &mut buf);
        } else {
            t.write(offset, &value[..len]);
        }
    }
});
