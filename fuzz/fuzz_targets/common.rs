//! Shared set-up: guest memory whose queue structures come straight from the fuzzer.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM_SIZE: usize = 1 << 20;
pub const QUEUE_SIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DATA: u64 = 0x3000;

/// Guest memory with the fuzzer's bytes as descriptor table, available ring and buffers, and a
/// queue pointing at them.
pub fn queue_from(data: &[u8]) -> (GuestMemoryMmap, Queue) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let desc_len = 16 * QUEUE_SIZE as usize;
    let avail_len = 4 + 2 * QUEUE_SIZE as usize;
    let (desc, rest) = data.split_at(data.len().min(desc_len));
    let (avail, bufs) = rest.split_at(rest.len().min(avail_len));
    mem.write_slice(desc, GuestAddress(DESC)).unwrap();
    mem.write_slice(avail, GuestAddress(AVAIL)).unwrap();
    let n = bufs.len().min(MEM_SIZE - DATA as usize);
    mem.write_slice(&bufs[..n], GuestAddress(DATA)).unwrap();
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    (mem, q)
}
