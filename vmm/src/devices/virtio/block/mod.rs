//! virtio-blk over a raw file or a qcow2 image (`disk`): read, write, flush, get-id, discard and
//! write-zeroes (both free storage, so a raw file stays sparse), read-only attachment. Requests are served on the
//! device's worker thread through a fixed-size bounce buffer, so no guest-chosen length ever
//! sizes an allocation, and every sector range is checked against the disk size.

pub mod disk;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use disk::SECTOR;
pub use disk::{DiskError, DiskFormat, DiskImage};

use super::worker::{spawn_single_queue, Worker};
use super::{read_config_bytes, serve_chains, ActivateError, ActiveQueues, VirtioDevice};

const VIRTIO_ID_BLOCK: u32 = 2;
const QUEUE_SIZES: &[u16] = &[256];

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// Length of the GET_ID answer.
const ID_BYTES: usize = 20;
/// Bounce buffer between guest memory and the file.
const CHUNK: usize = 1 << 20;
/// Discard/write-zeroes segments per request, and sectors per segment, we accept.
const MAX_SEGMENTS: u32 = 64;
const MAX_SEGMENT_SECTORS: u32 = u32::MAX / 2;

/// How a disk is attached.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// The image format, as named by the user (never guessed from the contents).
    pub format: DiskFormat,
    pub read_only: bool,
    /// Serial number the guest sees (GET_ID, /sys/block/vdX/serial); at most 20 bytes.
    pub id: String,
}

/// A disk's image and its size, checked once at open.
struct Disk {
    image: Box<dyn DiskImage>,
    size: u64,
    read_only: bool,
}

impl Disk {
    /// The byte range of `sectors` sectors from `sector`, if it lies inside the disk.
    fn range(&self, sector: u64, bytes: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR)?;
        let end = start.checked_add(bytes)?;
        (end <= self.size).then_some(start)
    }
}

/// The block device.
pub struct Block {
    disk: Arc<Disk>,
    config: [u8; 60],
    features: u64,
    id: [u8; ID_BYTES],
    worker: Option<Worker>,
}

impl Block {
    pub fn new(cfg: &DiskConfig) -> Result<Self, DiskError> {
        let image = disk::open(&cfg.path, cfg.format, cfg.read_only)?;
        let disk = Disk { size: image.size(), read_only: image.read_only(), image };
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&(disk.size / SECTOR).to_le_bytes());
        // seg_max: a request may use all but the header and status descriptors.
        config[12..16].copy_from_slice(&(u32::from(QUEUE_SIZES[0]) - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        config[36..40].copy_from_slice(&MAX_SEGMENT_SECTORS.to_le_bytes());
        config[40..44].copy_from_slice(&MAX_SEGMENTS.to_le_bytes());
        config[44..48].copy_from_slice(&1u32.to_le_bytes());
        config[48..52].copy_from_slice(&MAX_SEGMENT_SECTORS.to_le_bytes());
        config[52..56].copy_from_slice(&MAX_SEGMENTS.to_le_bytes());
        config[56] = 1; // write_zeroes_may_unmap
        let mut features = F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        features |= if cfg.read_only { F_RO } else { F_DISCARD | F_WRITE_ZEROES };
        let mut id = [0u8; ID_BYTES];
        let n = cfg.id.len().min(ID_BYTES);
        id[..n].copy_from_slice(&cfg.id.as_bytes()[..n]);
        Ok(Block { disk: Arc::new(disk), config, features, id, worker: None })
    }

    /// Capacity in bytes.
    pub fn size(&self) -> u64 {
        self.disk.size
    }

    /// Serves every available request on `queue`, as the worker does on a notification; for the
    /// fuzz target, which drives the device without a transport.
    pub fn serve_queue(&self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut buf = vec![0u8; CHUNK];
        serve(&self.disk, &self.id, queue, mem, &mut buf)
    }
}

/// One request's outcome: status byte and bytes written into the guest's buffers.
struct Outcome {
    status: u8,
    written: u32,
}

fn io_status(r: std::io::Result<()>) -> u8 {
    if r.is_ok() {
        S_OK
    } else {
        S_IOERR
    }
}

fn handle_in(disk: &Disk, sector: u64, data: &mut Writer<'_>, buf: &mut [u8]) -> Outcome {
    let len = data.available_bytes() as u64;
    let Some(mut offset) = disk.range(sector, len) else { return Outcome { status: S_IOERR, written: 0 } };
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        if disk.image.read_at(&mut buf[..n], offset).is_err() || data.write_all(&buf[..n]).is_err() {
            return Outcome { status: S_IOERR, written: data.bytes_written() as u32 };
        }
        offset += n as u64;
        left -= n as u64;
    }
    Outcome { status: S_OK, written: data.bytes_written() as u32 }
}

fn handle_out(disk: &Disk, sector: u64, data: &mut Reader<'_>, buf: &mut [u8]) -> u8 {
    if disk.read_only {
        return S_IOERR;
    }
    let len = data.available_bytes() as u64;
    let Some(mut offset) = disk.range(sector, len) else { return S_IOERR };
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        if data.read_exact(&mut buf[..n]).is_err() || disk.image.write_at(&buf[..n], offset).is_err() {
            return S_IOERR;
        }
        offset += n as u64;
        left -= n as u64;
    }
    S_OK
}

/// Discard and write-zeroes: a list of {sector u64, num_sectors u32, flags u32}.
fn handle_discard(disk: &Disk, data: &mut Reader<'_>) -> u8 {
    if disk.read_only {
        return S_IOERR;
    }
    let segments = data.available_bytes() / 16;
    if segments == 0 || segments > MAX_SEGMENTS as usize || !data.available_bytes().is_multiple_of(16) {
        return S_UNSUPP;
    }
    for _ in 0..segments {
        let mut seg = [0u8; 16];
        if data.read_exact(&mut seg).is_err() {
            return S_IOERR;
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let bytes = u64::from(count) * SECTOR;
        let Some(offset) = disk.range(sector, bytes) else { return S_IOERR };
        if disk.image.zero_range(offset, bytes).is_err() {
            return S_IOERR;
        }
    }
    S_OK
}

/// Serves one request chain; returns the length to report as used.
fn handle_request(
    disk: &Disk,
    id: &[u8; ID_BYTES],
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) else {
        return 0;
    };
    // The last writable byte is the status; without it the driver cannot be told anything.
    let Some(data_len) = writer.available_bytes().checked_sub(1) else { return 0 };
    let Ok(mut status_writer) = writer.split_at(data_len) else { return 0 };
    let mut header = [0u8; 16];
    let outcome = if reader.read_exact(&mut header).is_err() {
        Outcome { status: S_IOERR, written: 0 }
    } else {
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        match kind {
            T_IN => handle_in(disk, sector, &mut writer, buf),
            T_OUT => Outcome { status: handle_out(disk, sector, &mut reader, buf), written: 0 },
            T_FLUSH => Outcome { status: io_status(disk.image.flush()), written: 0 },
            T_GET_ID => {
                let n = writer.available_bytes().min(ID_BYTES);
                let ok = writer.write_all(&id[..n]).is_ok();
                Outcome { status: if ok { S_OK } else { S_IOERR }, written: n as u32 }
            }
            T_DISCARD | T_WRITE_ZEROES => Outcome { status: handle_discard(disk, &mut reader), written: 0 },
            _ => Outcome { status: S_UNSUPP, written: 0 },
        }
    };
    if status_writer.write_all(&[outcome.status]).is_err() {
        return outcome.written;
    }
    outcome.written.saturating_add(1)
}

/// Serves every available request; returns whether any was completed.
fn serve(disk: &Disk, id: &[u8; ID_BYTES], queue: &mut Queue, mem: &GuestMemoryMmap, buf: &mut [u8]) -> bool {
    serve_chains(queue, mem, |chain| handle_request(disk, id, mem, chain, buf))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, q: ActiveQueues) -> Result<(), ActivateError> {
        let (disk, id) = (self.disk.clone(), self.id);
        let mut buf = vec![0u8; CHUNK];
        self.worker =
            Some(spawn_single_queue("virtio-blk", q, move |queue, mem| serve(&disk, &id, queue, mem, &mut buf))?);
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
    use std::fs::File;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x1f_0000;

    struct TestDisk {
        path: PathBuf,
    }
    impl TestDisk {
        fn new(name: &str, size: u64) -> Self {
            let path = std::env::temp_dir().join(format!("vmm-blk-{}-{name}", std::process::id()));
            let f = File::create(&path).unwrap();
            f.set_len(size).unwrap();
            TestDisk { path }
        }
    }
    impl Drop for TestDisk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    /// Runs one request made of `descs` (addr, len, flags); returns (used len, status byte).
    fn request(blk: &Block, m: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        let vq = MockSplitQueue::new(m, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, f))| {
                let last = i == descs.len() - 1;
                let flags = if last { f } else { f | NEXT };
                RawDescriptor::from(SplitDescriptor::new(a, l, flags, if last { 0 } else { i as u16 + 1 }))
            })
            .collect();
        vq.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let mut buf = vec![0u8; CHUNK];
        assert!(serve(&blk.disk, &blk.id, &mut q, m, &mut buf));
        let used = vq.used().ring().ref_at(0).unwrap().load();
        (used.len(), m.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn block(d: &TestDisk, read_only: bool) -> Block {
        Block::new(&DiskConfig {
            path: d.path.clone(),
            format: DiskFormat::Raw,
            read_only,
            id: "microdib-test-disk".into(),
        })
        .unwrap()
    }

    #[test]
    fn write_then_read_back() {
        let d = TestDisk::new("rw", 1 << 20);
        let blk = block(&d, false);
        assert_eq!(blk.size(), 1 << 20);
        let m = mem();
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        m.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        header(&m, T_OUT, 3);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, WRITE)]), (1, S_OK));
        let on_disk = std::fs::read(&d.path).unwrap();
        assert_eq!(&on_disk[3 * 512..3 * 512 + 1024], &pattern[..]);

        m.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        header(&m, T_IN, 3);
        // Data split over two descriptors.
        let r = request(&blk, &m, &[(HDR, 16, 0), (DATA, 100, WRITE), (DATA + 100, 924, WRITE), (STATUS, 1, WRITE)]);
        assert_eq!(r, (1025, S_OK));
        let mut back = vec![0u8; 1024];
        m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);
    }

    #[test]
    fn out_of_range_and_overflowing_sectors_fail() {
        let d = TestDisk::new("range", 64 * 1024);
        let blk = block(&d, false);
        let m = mem();
        for sector in [128, 127, u64::MAX / 512, u64::MAX] {
            header(&m, T_IN, sector);
            assert_eq!(
                request(&blk, &m, &[(HDR, 16, 0), (DATA, 1024, WRITE), (STATUS, 1, WRITE)]).1,
                S_IOERR,
                "{sector}"
            );
            header(&m, T_OUT, sector);
            assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, WRITE)]).1, S_IOERR);
        }
        assert!(std::fs::read(&d.path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let d = TestDisk::new("ro", 64 * 1024);
        let blk = block(&d, true);
        assert_ne!(blk.features() & F_RO, 0);
        assert_eq!(blk.features() & F_DISCARD, 0);
        let m = mem();
        m.write_slice(&[0xaa; 512], GuestAddress(DATA)).unwrap();
        header(&m, T_OUT, 0);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, WRITE)]).1, S_IOERR);
        assert!(std::fs::read(&d.path).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn get_id_flush_and_unknown_requests() {
        let d = TestDisk::new("id", 64 * 1024);
        let blk = block(&d, false);
        let m = mem();
        header(&m, T_GET_ID, 0);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 20, WRITE), (STATUS, 1, WRITE)]), (21, S_OK));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..18], b"microdib-test-disk");
        header(&m, T_FLUSH, 0);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (STATUS, 1, WRITE)]), (1, S_OK));
        header(&m, 0x7777, 0);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (STATUS, 1, WRITE)]).1, S_UNSUPP);
    }

    #[test]
    fn discard_punches_holes() {
        let d = TestDisk::new("discard", 4 << 20);
        let blk = block(&d, false);
        std::fs::OpenOptions::new().write(true).open(&d.path).unwrap().write_all_at(&vec![0x55; 2 << 20], 0).unwrap();
        let allocated = std::fs::metadata(&d.path).unwrap().blocks();
        let m = mem();
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&0u64.to_le_bytes());
        seg[8..12].copy_from_slice(&((2u32 << 20) / 512).to_le_bytes());
        m.write_slice(&seg, GuestAddress(DATA)).unwrap();
        header(&m, T_DISCARD, 0);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, WRITE)]).1, S_OK);
        let after = std::fs::metadata(&d.path).unwrap().blocks();
        assert!(after < allocated, "blocks {allocated} -> {after}");
        assert!(std::fs::read(&d.path).unwrap().iter().all(|&b| b == 0));
        // A segment past the end fails; a ragged payload is unsupported.
        seg[0..8].copy_from_slice(&((4u64 << 20) / 512).to_le_bytes());
        m.write_slice(&seg, GuestAddress(DATA)).unwrap();
        header(&m, T_WRITE_ZEROES, 0);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 16, 0), (STATUS, 1, WRITE)]).1, S_IOERR);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 15, 0), (STATUS, 1, WRITE)]).1, S_UNSUPP);
    }

    #[test]
    fn malformed_chains_never_panic() {
        let d = TestDisk::new("bad", 64 * 1024);
        let blk = block(&d, false);
        let m = mem();
        header(&m, T_IN, 0);
        // No status byte: nothing can be reported, nothing is written.
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0)]).0, 0);
        // Header too short.
        assert_eq!(request(&blk, &m, &[(HDR, 8, 0), (STATUS, 1, WRITE)]), (1, S_IOERR));
        // Buffers outside guest memory, and a huge length.
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (0xffff_0000, 512, WRITE), (STATUS, 1, WRITE)]).0, 0);
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, u32::MAX, WRITE), (STATUS, 1, WRITE)]).0, 0);
        // Data descriptor the device should write but the driver marked read-only.
        assert_eq!(request(&blk, &m, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, WRITE)]), (1, S_OK));
    }

    #[test]
    fn unaligned_or_missing_files_are_refused() {
        let d = TestDisk::new("odd", 1000);
        assert!(matches!(
            Block::new(&DiskConfig {
                path: d.path.clone(),
                format: DiskFormat::Raw,
                read_only: false,
                id: String::new()
            }),
            Err(DiskError::Unaligned { size: 1000, .. })
        ));
        let missing = DiskConfig {
            path: "/nonexistent/disk.raw".into(),
            format: DiskFormat::Raw,
            read_only: true,
            id: String::new(),
        };
        assert!(Block::new(&missing).err().unwrap().to_string().contains("/nonexistent/disk.raw"));
    }
}
