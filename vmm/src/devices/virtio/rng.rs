//! virtio-rng: fills the guest's buffers from the host's getrandom(2).

use vm_memory::{Bytes, GuestMemoryMmap};

use super::worker::{spawn_single_queue, Worker};
use super::{serve_chains, ActivateError, ActiveQueues, VirtioDevice};

const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZES: &[u16] = &[256];
/// Most bytes handed out per request: a guest asking for gigabytes gets them in pieces.
const MAX_REQUEST: usize = 64 * 1024;

/// The entropy device.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

/// Serves every available request on `queue`; returns whether any was completed.
pub fn serve(queue: &mut virtio_queue::Queue, mem: &GuestMemoryMmap) -> bool {
    serve_chains(queue, mem, |chain| {
        let mut written: u32 = 0;
        let mut budget = MAX_REQUEST;
        let mut buf = Vec::new();
        for desc in chain.writable() {
            let len = (desc.len() as usize).min(budget);
            if len == 0 {
                break;
            }
            buf.resize(len, 0);
            if !fill_random(&mut buf) || mem.write_slice(&buf, desc.addr()).is_err() {
                break;
            }
            written += len as u32;
            budget -= len;
        }
        written
    })
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, q: ActiveQueues) -> Result<(), ActivateError> {
        self.worker = Some(spawn_single_queue("virtio-rng", q, serve)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn fills_writable_buffers() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [RawDescriptor::from(SplitDescriptor::new(0x8000, 64, WRITE, 0))];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(serve(&mut q, &m));
        let mut out = [0u8; 64];
        m.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
        assert_ne!(out, [0u8; 64]);
        assert_eq!(vq.used().idx().load(), 1);
    }

    #[test]
    fn hostile_buffers_are_cut_or_refused() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // A read-only buffer (nothing written), a buffer past the end of RAM, and a huge one.
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x8000, 64, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0xffff_0000, 64, WRITE, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x9000, u32::MAX, WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        serve(&mut q, &m);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 0, "read-only buffer gets nothing");
    }
}
