//! Test support: the driver's side of a split virtqueue (what the guest kernel does), laid out by
//! hand in guest memory, to hand the device packets and buffers and read back what it used.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::{Header, HDR_LEN, HOST_CID, TYPE_STREAM};

/// Bytes per buffer: descriptor `i` always points at `data + i * SLOT`.
pub const SLOT: u64 = 4096;
const DESC_F_WRITE: u16 = 2;

/// One split virtqueue, driver side. Each buffer is a single descriptor.
pub struct DriverRing {
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    data: GuestAddress,
    size: u16,
    avail_idx: u16,
    used_idx: u16,
}

impl DriverRing {
    /// Lays out (and zeroes) the rings from `base`: 4 KiB hold those of a 16-entry queue.
    /// Buffers go at `data`, `size * SLOT` bytes.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, data: GuestAddress, size: u16) -> DriverRing {
        let n = u64::from(size);
        let avail = base.unchecked_add(16 * n);
        let used = GuestAddress((avail.0 + 6 + 2 * n).next_multiple_of(4));
        let end = used.0 + 6 + 8 * n;
        mem.write_slice(&vec![0u8; (end - base.0) as usize], base).unwrap();
        DriverRing { desc: base, avail, used, data, size, avail_idx: 0, used_idx: 0 }
    }

    /// The device's view of this ring, as a transport would configure it.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc.0 as u32), Some((self.desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail.0 as u32), Some((self.avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(self.used.0 as u32), Some((self.used.0 >> 32) as u32));
        q.set_ready(true);
        q
    }

    fn next_slot(&self) -> u16 {
        self.avail_idx % self.size
    }

    fn post(&mut self, mem: &GuestMemoryMmap, len: u32, flags: u16) {
        let slot = self.next_slot();
        let d = self.desc.unchecked_add(16 * u64::from(slot));
        mem.write_obj(self.data.0 + u64::from(slot) * SLOT, d).unwrap();
        mem.write_obj(len, d.unchecked_add(8)).unwrap();
        mem.write_obj(flags, d.unchecked_add(12)).unwrap();
        mem.write_obj(0u16, d.unchecked_add(14)).unwrap();
        mem.write_obj(slot, self.avail.unchecked_add(4 + 2 * u64::from(slot))).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The device must see the descriptor before the index that publishes it.
        fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, self.avail.unchecked_add(2)).unwrap();
    }

    /// Makes `n` device-writable buffers of SLOT bytes available (what the RX queue needs).
    pub fn give_buffers(&mut self, mem: &GuestMemoryMmap, n: usize) {
        for _ in 0..n {
            self.post(mem, SLOT as u32, DESC_F_WRITE);
        }
    }

    /// Makes a packet available to the device (a TX buffer).
    pub fn send(&mut self, mem: &GuestMemoryMmap, h: &Header, payload: &[u8]) {
        let at = self.data.unchecked_add(u64::from(self.next_slot()) * SLOT);
        mem.write_slice(&h.encode(), at).unwrap();
        mem.write_slice(payload, at.unchecked_add(HDR_LEN as u64)).unwrap();
        self.post(mem, (HDR_LEN + payload.len()) as u32, 0);
    }

    /// The used elements (descriptor, length) the device added since the last call.
    pub fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(self.used.unchecked_add(2)).unwrap();
        fence(Ordering::SeqCst);
        let mut out = Vec::new();
        while self.used_idx != idx {
            let e = self.used.unchecked_add(4 + 8 * u64::from(self.used_idx % self.size));
            let id: u32 = mem.read_obj(e).unwrap();
            let len: u32 = mem.read_obj(e.unchecked_add(4)).unwrap();
            out.push((id as u16, len));
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        out
    }

    /// The packets the device wrote into used RX buffers since the last call.
    pub fn packets(&mut self, mem: &GuestMemoryMmap) -> Vec<(Header, Vec<u8>)> {
        self.used(mem)
            .into_iter()
            .map(|(id, len)| {
                assert!(len as usize >= HDR_LEN, "a used RX buffer without a header ({len} bytes)");
                let mut b = vec![0u8; len as usize];
                mem.read_slice(&mut b, self.data.unchecked_add(u64::from(id) * SLOT)).unwrap();
                let h = Header::decode(b[..HDR_LEN].try_into().unwrap());
                assert_eq!(h.len as usize, b.len() - HDR_LEN, "header length and used length disagree");
                (h, b.split_off(HDR_LEN))
            })
            .collect()
    }
}

/// Polls `f` until it returns `Some`, for at most 5 s.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A stream packet from guest CID 3 to the host.
pub fn guest_header(op: u16, src_port: u32, dst_port: u32, len: usize) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: len as u32,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}
