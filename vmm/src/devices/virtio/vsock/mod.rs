//! virtio-vsock with a userspace host side (no vhost): see `muxer` for the Unix-socket
//! protocol. The device thread waits in epoll on the queues, the listener and every host socket.
//! `vhost_user` serves the same muxer to another VMM (qemu) as a vhost-user backend.

pub mod muxer;
pub mod packet;
#[cfg(test)]
mod testing;
pub mod vhost_user;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, ActivateError, ActiveQueues, Interrupt, VirtioDevice, INT_USED_RING, WATCHDOG_PERIOD};
use muxer::{GuestQueues, HostSide, Muxer};

const VIRTIO_ID_VSOCK: u32 = 19;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];
const TOKEN_RX: u64 = 2;
const TOKEN_TX: u64 = 3;
const TOKEN_EVENT: u64 = 4;
const TOKEN_STOP: u64 = 5;

/// Why the vsock device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved (use 3 or more)")]
    ReservedCid(u64),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the vhost-user vsock backend: {0}")]
    VhostUser(String),
}

/// The guest CID must be one a guest may have (3 up to u32::MAX).
fn check_cid(guest_cid: u64) -> Result<(), VsockError> {
    if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
        return Err(VsockError::ReservedCid(guest_cid));
    }
    Ok(())
}

/// Binds a Unix socket at `path`, replacing a stale socket but nothing else.
fn bind_socket(path: &Path) -> Result<UnixListener, VsockError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(VsockError::NotASocket(path.to_owned()));
        }
        let _ = std::fs::remove_file(path); // a stale socket from an earlier run
    }
    UnixListener::bind(path).map_err(|source| VsockError::Listen { path: path.to_owned(), source })
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    config: [u8; 8],
    running: Option<(EventFd, JoinHandle<()>)>,
}

impl Vsock {
    /// Listens on `uds_path` at once, so host clients may connect before the guest is up.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        check_cid(guest_cid)?;
        let listener = bind_socket(uds_path)?;
        Ok(Vsock { guest_cid, uds_path: uds_path.to_owned(), listener, config: guest_cid.to_le_bytes(), running: None })
    }

    fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// What the device thread owns: guest memory, the RX and TX queues and the interrupt.
struct DeviceQueues {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
}

/// The device thread. `_stop` is kept open here so its epoll registration stays valid.
fn run(mut muxer: Muxer, dev: DeviceQueues, events: Vec<EventFd>, _stop: EventFd) {
    let DeviceQueues { mem, mut rx, mut tx, interrupt } = dev;
    let mut ready = vec![EpollEvent::default(); 64];
    let mut next_tick = Instant::now() + WATCHDOG_PERIOD;
    // The interrupt count at the last watchdog tick.
    let mut last_raised = 0;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + WATCHDOG_PERIOD;
            let mut q = GuestQueues::new(&mem, &mut rx, &mut tx);
            muxer.watchdog(&mut q);
            if q.interrupt() {
                interrupt.signal(INT_USED_RING);
            }
            if interrupt.reraise_if_unseen(&mut last_raised) {
                tracing::info!("virtio-vsock: the guest left an interrupt unacknowledged; raised it again");
            }
        }
        // Sleep until something happens, the next handshake deadline or the next tick.
        let wake = muxer.next_deadline().map_or(next_tick, |d| d.min(next_tick));
        let timeout = i32::try_from(wake.saturating_duration_since(now).as_millis() + 1).unwrap_or(i32::MAX);
        let n = match muxer.epoll().wait(timeout, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("vsock epoll failed: {e}");
                return;
            }
        };
        let mut q = GuestQueues::new(&mem, &mut rx, &mut tx);
        for ev in &ready[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_RX => {
                    let _ = events[0].read();
                }
                TOKEN_TX => {
                    let _ = events[1].read();
                    muxer.process_tx(&mut q);
                }
                TOKEN_EVENT => {
                    let _ = events[2].read();
                }
                token => muxer.host_event(token, ev.event_set()),
            }
        }
        muxer.settle(&mut q);
        if q.interrupt() {
            interrupt.signal(INT_USED_RING);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, q: ActiveQueues) -> Result<(), ActivateError> {
        let ActiveQueues { mem, queues, events, interrupt } = q;
        let (Ok([rxq, txq, _evq]), true) = (<[_; 3]>::try_from(queues), events.len() == 3) else {
            return Err(ActivateError::BadQueues);
        };
        let w = ActivateError::Worker;
        let epoll = Epoll::new().map_err(w)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(w)?;
        for (fd, token) in [
            (events[0].as_raw_fd(), TOKEN_RX),
            (events[1].as_raw_fd(), TOKEN_TX),
            (events[2].as_raw_fd(), TOKEN_EVENT),
            (stop.as_raw_fd(), TOKEN_STOP),
        ] {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token)).map_err(w)?;
        }
        let listener = self.listener.try_clone().map_err(w)?;
        let muxer =
            Muxer::new(HostSide { guest_cid: self.guest_cid, listener, uds_path: self.uds_path.clone(), epoll })
                .map_err(w)?;
        let dev = DeviceQueues { mem, rx: rxq, tx: txq, interrupt };
        let thread_stop = stop.try_clone().map_err(w)?;
        let thread = std::thread::Builder::new()
            .name("virtio-vsock".into())
            .spawn(move || run(muxer, dev, events, thread_stop))
            .map_err(w)?;
        self.running = Some((stop, thread));
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }
}
