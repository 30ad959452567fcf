//! virtio-vsock with a userspace host side (no vhost): see `muxer` for the Unix-socket
//! protocol. The device thread waits in epoll on the queues, the listener and every host socket.

pub mod muxer;
pub mod packet;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, ActivateError, ActiveQueues, VirtioDevice, WATCHDOG_PERIOD};
use muxer::{HostSide, Muxer, TOKEN_FD_BASE, TOKEN_LISTENER};

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
        if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(guest_cid));
        }
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::NotASocket(uds_path.to_owned()));
            }
            let _ = std::fs::remove_file(uds_path); // a stale socket from an earlier run
        }
        let listener =
            UnixListener::bind(uds_path).map_err(|source| VsockError::Listen { path: uds_path.to_owned(), source })?;
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

/// The device thread. `_stop` is kept open here so its epoll registration stays valid.
fn run(mut muxer: Muxer, events: Vec<EventFd>, _stop: EventFd) {
    let mut ready = vec![EpollEvent::default(); 64];
    let mut next_tick = Instant::now() + WATCHDOG_PERIOD;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + WATCHDOG_PERIOD;
            muxer.watchdog();
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
        for ev in &ready[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_RX => {
                    let _ = events[0].read();
                }
                TOKEN_TX => {
                    let _ = events[1].read();
                    muxer.process_tx();
                }
                TOKEN_EVENT => {
                    let _ = events[2].read();
                }
                TOKEN_LISTENER => muxer.accept_host_clients(),
                t if t >= TOKEN_FD_BASE => {
                    let fd = (t - TOKEN_FD_BASE) as i32;
                    muxer.host_socket_event(fd, ev.event_set());
                }
                _ => {}
            }
        }
        muxer.expire_handshakes(std::time::Instant::now());
        muxer.process_rx();
        // TX left waiting for room in the control queue: RX just made some.
        while muxer.tx_stalled() {
            muxer.process_tx();
            muxer.process_rx();
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
        let muxer = Muxer::new(
            mem,
            rxq,
            txq,
            interrupt,
            HostSide { guest_cid: self.guest_cid, listener, uds_path: self.uds_path.clone(), epoll },
        )
        .map_err(w)?;
        let thread_stop = stop.try_clone().map_err(w)?;
        let thread = std::thread::Builder::new()
            .name("virtio-vsock".into())
            .spawn(move || run(muxer, events, thread_stop))
            .map_err(w)?;
        self.running = Some((stop, thread));
        Ok(())
    }

    fn reset(&mut self) {
        self.stop();
    }
}
