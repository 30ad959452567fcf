//! virtio-net whose other end is a userspace network stack (passt) on a stream socket.
//!
//! The guest's frames go out length-prefixed on the socket (see `stream`), frames from the
//! socket land in the guest's RX buffers. No offloads: every frame is a plain Ethernet frame
//! behind a zeroed virtio-net header. Both directions are bounded: without RX buffers the
//! socket is not read (its data waits in the kernel), and while the socket does not drain the
//! guest's TX chains wait in their queue.

pub mod passt;
pub mod stream;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, ActivateError, ActiveQueues, Interrupt, VirtioDevice, INT_USED_RING, WATCHDOG_PERIOD};
use stream::{FrameReader, FrameWriter, StreamError, MAX_FRAME};

pub use passt::{Passt, PasstOptions};

const VIRTIO_ID_NET: u32 = 1;
/// The guest's MAC address unless told otherwise: locally administered, qemu's usual prefix.
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const QUEUE_SIZES: &[u16] = &[256, 256];

pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// The virtio 1.x `virtio_net_hdr`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers. Without offloads only num_buffers is ever non-zero.
pub const HDR_LEN: usize = 12;
const NUM_BUFFERS_OFFSET: usize = 10;
/// Length of an Ethernet header (no VLAN tag): a frame is at most MTU plus this.
const ETH_HLEN: usize = 14;
/// Smallest MTU the virtio spec allows a device to advertise.
const MIN_MTU: u16 = 68;
/// Frames moved from the socket to the guest per round, so TX is not starved by a flood.
const RX_BUDGET: usize = 64;
/// Bytes of guest frames waiting for the socket before TX chains are left in the queue.
const TX_BUFFER: usize = 256 * 1024;

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_BACKEND: u64 = 2;
const TOKEN_STOP: u64 = 3;

/// Why the network device or its passt backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("MAC address {0:02x?} is not a unicast address")]
    BadMac([u8; 6]),
    #[error("MTU {0} is too small (at least {MIN_MTU})")]
    BadMtu(u16),
    #[error("IPv4 prefix length {0} is not between 1 and 32")]
    BadPrefix(u8),
    #[error("cannot set up the socket to passt")]
    Socket(#[source] std::io::Error),
    #[error("passt is not installed: install the 'passt' package or use --no-network")]
    PasstMissing,
    #[error("cannot open {path} for passt's messages")]
    PasstLog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start passt ({path})")]
    PasstSpawn {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The backend socket with its framing state. It outlives device resets, so a frame half-read
/// before a reset is not lost and the stream stays in step.
pub struct Backend {
    sock: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
    /// False once the backend closed, failed or broke the protocol; it is never used again.
    alive: bool,
    /// The peer hung up: the socket is no longer watched (it would always be "ready"), reads
    /// find the rest of its data and then the end.
    hung_up: bool,
}

impl Backend {
    pub fn new(sock: UnixStream) -> Self {
        Backend {
            sock,
            reader: FrameReader::default(),
            writer: FrameWriter::new(TX_BUFFER),
            alive: true,
            hung_up: false,
        }
    }

    /// Marks the backend unusable; logs only the first time.
    fn fail(&mut self, why: &dyn std::fmt::Display) {
        if self.alive {
            tracing::warn!("virtio-net: {why}; the guest network is down (its frames are dropped from now on)");
            self.alive = false;
            self.writer.clear();
        }
    }
}

/// Reads and writes the socket without blocking and without SIGPIPE, whatever its file flags.
struct Sock<'a>(&'a UnixStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What became of one frame from the backend.
enum Delivery {
    Delivered,
    /// It could not be given to the guest (too large for its buffers or for the MTU).
    Dropped,
    /// Not enough RX buffers yet; nothing was used.
    NoBuffers,
}

/// Everything one activation of the device works with: memory, the two queues, the backend.
pub struct Datapath {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    interrupt: Arc<Interrupt>,
    backend: Backend,
    mrg_rxbuf: bool,
    /// Largest frame accepted in either direction (MTU plus Ethernet header).
    max_frame: usize,
    /// The guest had no RX buffers: the socket is not read until it notifies the RX queue.
    rx_waiting: bool,
    /// RX stopped on its budget with frames possibly left: run again without sleeping.
    rx_more: bool,
    /// TX stopped because the socket buffer was full: run again when it drains.
    tx_blocked: bool,
    last_raised: u64,
}

impl Datapath {
    pub fn new(
        mem: GuestMemoryMmap,
        rxq: Queue,
        txq: Queue,
        interrupt: Arc<Interrupt>,
        backend: Backend,
        mrg_rxbuf: bool,
        mtu: u16,
    ) -> Self {
        let max_frame = (usize::from(mtu) + ETH_HLEN).min(MAX_FRAME);
        Datapath {
            mem,
            rxq,
            txq,
            interrupt,
            backend,
            mrg_rxbuf,
            max_frame,
            rx_waiting: false,
            rx_more: false,
            tx_blocked: false,
            last_raised: 0,
        }
    }

    /// Gives the backend back (at reset).
    pub fn into_backend(self) -> Backend {
        self.backend
    }

    /// Whether the backend is still in use.
    pub fn backend_alive(&self) -> bool {
        self.backend.alive
    }

    /// Interrupts the guest for new used buffers on the TX (or else RX) queue, if it wants that.
    fn notify_guest(&mut self, tx: bool) {
        let queue = if tx { &mut self.txq } else { &mut self.rxq };
        if queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal(INT_USED_RING);
        }
    }

    // ---- guest -> backend ------------------------------------------------------------------

    /// Sends every frame the guest queued, until the socket buffer is full. Chains whose frame is
    /// malformed (or that arrive after the backend died) are completed without being sent.
    pub fn process_tx(&mut self) {
        let mut used = false;
        self.tx_blocked = false;
        loop {
            if self.backend.alive && !self.backend.writer.has_room(self.max_frame) {
                self.flush_tx();
                if self.backend.alive && !self.backend.writer.has_room(self.max_frame) {
                    // Backpressure: the rest waits in the queue until the socket drains.
                    self.tx_blocked = true;
                    break;
                }
            }
            let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) else { break };
            let head = chain.head_index();
            let sent = match Reader::new(&self.mem, chain) {
                Ok(mut r) => {
                    let len = r.available_bytes().saturating_sub(HDR_LEN);
                    let mut hdr = [0u8; HDR_LEN];
                    if len == 0 || len > self.max_frame || r.read_exact(&mut hdr).is_err() {
                        false
                    } else {
                        self.backend.alive && self.backend.writer.push_with(len, |buf| r.read_exact(buf).is_ok())
                    }
                }
                Err(_) => false,
            };
            if !sent && self.backend.alive {
                tracing::debug!("virtio-net: dropped a malformed TX chain");
            }
            if self.txq.add_used(&self.mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        self.flush_tx();
        if used {
            self.notify_guest(true);
        }
    }

    fn flush_tx(&mut self) {
        let b = &mut self.backend;
        if b.alive {
            if let Err(e) = b.writer.flush(&mut Sock(&b.sock)) {
                b.fail(&format_args!("writing to the network backend failed ({e})"));
            }
        }
    }

    // ---- backend -> guest ------------------------------------------------------------------

    /// Moves frames from the backend into RX buffers until either runs out (or the budget).
    pub fn process_rx(&mut self) {
        let mut used = false;
        self.rx_more = false;
        let mut budget = RX_BUDGET;
        while self.backend.alive && !self.rx_waiting {
            if budget == 0 {
                self.rx_more = true;
                break;
            }
            budget -= 1;
            let b = &mut self.backend;
            if !b.hung_up && !b.reader.has_frame() && !has_buffers(&self.mem, &self.rxq) {
                // Leave the data in the socket: the backend sees our backlog, not our memory.
                // (After a hang-up nothing more can come: reading finds the end early.)
                self.rx_waiting = true;
                break;
            }
            let frame = match b.reader.next_frame(&mut Sock(&b.sock)) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(StreamError::Closed) => {
                    b.fail(&"the network backend (passt) closed its socket");
                    break;
                }
                Err(e) => {
                    b.fail(&format_args!("network backend: {e}"));
                    break;
                }
            };
            match deliver(&self.mem, &mut self.rxq, self.mrg_rxbuf, self.max_frame, frame, &mut used) {
                Delivery::Delivered | Delivery::Dropped => b.reader.consume(),
                Delivery::NoBuffers => self.rx_waiting = true,
            }
        }
        if used {
            self.notify_guest(false);
        }
    }

    /// The guest added RX buffers.
    pub fn rx_notified(&mut self) {
        self.rx_waiting = false;
        self.process_rx();
    }

    /// Readiness of the backend socket.
    pub fn backend_event(&mut self, events: EventSet) {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.backend.hung_up = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.flush_tx();
            if self.tx_blocked {
                self.process_tx();
            }
        }
        self.process_rx();
    }

    /// What to wait for on the backend socket; `None` when it must not be watched at all.
    pub fn backend_interest(&self) -> Option<EventSet> {
        let b = &self.backend;
        if !b.alive || b.hung_up {
            return None;
        }
        let mut ev = EventSet::empty();
        if !self.rx_waiting {
            ev |= EventSet::IN;
        }
        if b.writer.pending() > 0 {
            ev |= EventSet::OUT;
        }
        Some(ev)
    }

    /// Every `WATCHDOG_PERIOD`: serve both queues in case a notification was lost, and raise
    /// again an interrupt the guest did not take.
    pub fn watchdog(&mut self) {
        self.process_tx();
        self.rx_notified();
        if self.interrupt.reraise_if_unseen(&mut self.last_raised) {
            tracing::info!("virtio-net: the guest left an interrupt unacknowledged; raised it again");
        }
    }
}

/// Whether the guest made RX buffers available that the device has not used yet.
fn has_buffers(mem: &GuestMemoryMmap, rxq: &Queue) -> bool {
    rxq.avail_idx(mem, std::sync::atomic::Ordering::Acquire).is_ok_and(|idx| idx.0 != rxq.next_avail())
}

/// Puts one frame into the guest's RX buffers behind a zeroed header. With MRG_RXBUF it may span
/// several chains (num_buffers says how many); otherwise it must fit one. Chains the device
/// cannot write (read-only, outside RAM, too small for the header) are returned empty.
fn deliver(
    mem: &GuestMemoryMmap,
    rxq: &mut Queue,
    mrg_rxbuf: bool,
    max_frame: usize,
    frame: &[u8],
    used: &mut bool,
) -> Delivery {
    if frame.len() > max_frame {
        tracing::debug!("virtio-net: dropped a {}-byte frame from the backend (over the MTU)", frame.len());
        return Delivery::Dropped;
    }
    let needed = HDR_LEN + frame.len();
    let start = rxq.next_avail();
    let mut good: Vec<(u16, Writer)> = Vec::new();
    let mut bad: Vec<u16> = Vec::new();
    let mut room = 0usize;
    let mut fits = true;
    while room < needed {
        if (!mrg_rxbuf && !good.is_empty()) || good.len() + bad.len() >= usize::from(rxq.size()) {
            // The guest's buffers cannot hold this frame even all together.
            fits = false;
            break;
        }
        let Some(chain) = rxq.pop_descriptor_chain(mem) else {
            // Put back what was taken: the frame goes in once the guest adds buffers.
            rxq.set_next_avail(start);
            return Delivery::NoBuffers;
        };
        let head = chain.head_index();
        match Writer::new(mem, chain) {
            Ok(w) if w.available_bytes() >= HDR_LEN => {
                room = room.saturating_add(w.available_bytes());
                good.push((head, w));
            }
            _ => bad.push(head),
        }
    }
    *used = true;
    // Unusable chains first, so the chains of a merged frame are consecutive in the used ring.
    for head in bad {
        let _ = rxq.add_used(mem, head, 0);
    }
    if !fits {
        tracing::debug!("virtio-net: dropped a {}-byte frame: the guest's RX buffers are too small", frame.len());
        for (head, _) in good {
            let _ = rxq.add_used(mem, head, 0);
        }
        return Delivery::Dropped;
    }
    let mut hdr = [0u8; HDR_LEN];
    let num_buffers = if mrg_rxbuf { u16::try_from(good.len()).unwrap_or(u16::MAX) } else { 1 };
    hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&num_buffers.to_le_bytes());
    let mut parts: [&[u8]; 2] = [&hdr, frame];
    for (head, mut w) in good {
        for part in parts.iter_mut() {
            let n = part.len().min(w.available_bytes());
            if w.write_all(&part[..n]).is_err() {
                break;
            }
            *part = &part[n..];
        }
        let len = u32::try_from(w.bytes_written()).unwrap_or(0);
        let _ = rxq.add_used(mem, head, len);
    }
    Delivery::Delivered
}

/// The device thread: returns the backend when told to stop.
fn run(mut dp: Datapath, epoll: Epoll, events: Vec<EventFd>, _stop: EventFd) -> Backend {
    let backend_fd: RawFd = dp.backend.sock.as_raw_fd();
    let mut watched: Option<EventSet> = None;
    let mut ready = vec![EpollEvent::default(); 8];
    let mut next_tick = Instant::now() + WATCHDOG_PERIOD;
    loop {
        let want = dp.backend_interest();
        if want != watched {
            let res = match (watched, want) {
                (None, Some(ev)) => epoll.ctl(ControlOperation::Add, backend_fd, EpollEvent::new(ev, TOKEN_BACKEND)),
                (Some(_), Some(ev)) => {
                    epoll.ctl(ControlOperation::Modify, backend_fd, EpollEvent::new(ev, TOKEN_BACKEND))
                }
                (Some(_), None) => epoll.ctl(ControlOperation::Delete, backend_fd, EpollEvent::default()),
                (None, None) => Ok(()),
            };
            if let Err(e) = res {
                dp.backend.fail(&format_args!("cannot watch the network backend socket ({e})"));
            }
            watched = want.filter(|_| dp.backend.alive);
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + WATCHDOG_PERIOD;
            dp.watchdog();
            continue;
        }
        let timeout = if dp.rx_more {
            0
        } else {
            i32::try_from(next_tick.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX)
        };
        let n = match epoll.wait(timeout, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio-net epoll failed: {e}");
                return dp.into_backend();
            }
        };
        for ev in &ready[..n] {
            match ev.data() {
                TOKEN_STOP => return dp.into_backend(),
                TOKEN_RX => {
                    let _ = events[0].read();
                    dp.rx_notified();
                }
                TOKEN_TX => {
                    let _ = events[1].read();
                    dp.process_tx();
                }
                TOKEN_BACKEND => dp.backend_event(ev.event_set()),
                _ => {}
            }
        }
        if dp.rx_more {
            dp.process_rx();
        }
    }
}

/// The network device.
pub struct Net {
    config: [u8; 12],
    mtu: u16,
    acked_features: u64,
    /// The backend while no worker runs (`None` only if a worker thread panicked with it).
    backend: Option<Backend>,
    running: Option<(EventFd, JoinHandle<Backend>)>,
}

impl Net {
    /// A device with MAC `mac` and MTU `mtu`, talking to `backend` (one end of a stream socket
    /// whose other end speaks length-prefixed frames, e.g. from `Passt::spawn`).
    pub fn new(backend: UnixStream, mac: [u8; 6], mtu: u16) -> Result<Net, NetError> {
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(NetError::BadMac(mac));
        }
        if mtu < MIN_MTU {
            return Err(NetError::BadMtu(mtu));
        }
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        Ok(Net { config, mtu, acked_features: 0, backend: Some(Backend::new(backend)), running: None })
    }

    fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.write(1);
            self.backend = thread.join().ok();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, q: ActiveQueues) -> Result<(), ActivateError> {
        let ActiveQueues { mem, queues, events, interrupt } = q;
        let (Ok([rxq, txq]), true) = (<[_; 2]>::try_from(queues), events.len() == 2) else {
            return Err(ActivateError::BadQueues);
        };
        let w = ActivateError::Worker;
        let backend = match self.backend.take() {
            Some(b) => b,
            None => {
                // The backend was lost with a crashed worker: run on with one that is down.
                let mut b = Backend::new(UnixStream::pair().map_err(w)?.0);
                b.fail(&"the network backend was lost");
                b
            }
        };
        let epoll = Epoll::new().map_err(w)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(w)?;
        for (fd, token) in
            [(events[0].as_raw_fd(), TOKEN_RX), (events[1].as_raw_fd(), TOKEN_TX), (stop.as_raw_fd(), TOKEN_STOP)]
        {
            if let Err(e) = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token)) {
                self.backend = Some(backend);
                return Err(w(e));
            }
        }
        let thread_stop = match stop.try_clone() {
            Ok(s) => s,
            Err(e) => {
                self.backend = Some(backend);
                return Err(w(e));
            }
        };
        let mrg = self.acked_features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let dp = Datapath::new(mem, rxq, txq, interrupt, backend, mrg, self.mtu);
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || run(dp, epoll, events, thread_stop))
            .map_err(w)?;
        self.running = Some((stop, thread));
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
