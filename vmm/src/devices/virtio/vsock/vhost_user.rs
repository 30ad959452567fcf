//! vhost-user backend for virtio-vsock: serves qemu's `vhost-user-vsock-device` with the same
//! muxer as the in-process device (`super::Vsock`). The TCG VM backend runs the build VM under
//! qemu, and its guest agent is then reached through this one (fuzzed) vsock implementation and
//! the same hybrid-vsock Unix socket protocol (see `muxer`), whichever VMM runs the guest.
//!
//! Threads: one waits for a single frontend (qemu) on the frontend socket, then handles its
//! vhost-user requests through rust-vmm's `vhost-user-backend`; that library's vring worker calls
//! `handle_event` for queue kicks, for the muxer's host sockets (its epoll, nested in ours) and
//! for a timer tick (handshake deadlines, lost kicks). A muxer exists while the driver has both
//! the RX and the TX ring running, as the in-process device's exists while it is activated:
//! stopping a ring (GET_VRING_BASE: at once) or disabling one (SET_VRING_ENABLE 0: on the next
//! event or tick) closes every host connection.
//!
//! Everything from the frontend socket and from guest memory is untrusted: the library checks
//! messages and ring addresses, virtio-queue checks descriptor chains, the muxer checks every
//! packet and bounds what it buffers, and config reads are bounded here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as ProtocolError, Listener};
use vhost_user_backend::{
    Error as DaemonError, ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringRwLock, VringT,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::{GuestQueues, HostSide, Muxer};
use super::{bind_socket, check_cid, VsockError, QUEUE_SIZES};
use crate::devices::virtio::{read_config_bytes, WATCHDOG_PERIOD};

/// rx, tx, event (qemu keeps the event queue to itself and hands us the first two).
const NUM_QUEUES: usize = QUEUE_SIZES.len();
const RX: usize = 0;
const TX: usize = 1;
/// Our own tokens in the vring worker's epoll: 0..=NUM_QUEUES are the library's.
const TOKEN_HOST: u16 = NUM_QUEUES as u16 + 1;
const TOKEN_TICK: u16 = NUM_QUEUES as u16 + 2;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Config reads past this size are refused (the vsock config space is 8 bytes).
const MAX_CONFIG_READ: u32 = 256;
/// The frontend, not us, tells the driver how large the queues may be, and qemu's
/// vhost-vsock-common uses 1024 entries (SET_VRING_NUM past our maximum ends the connection).
const MAX_QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;
type Vring = VringRwLock<Mem>;
type Daemon = VhostUserDaemon<Arc<VsockBackend>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The device as the vhost-user library sees it.
struct VsockBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    config: [u8; 8],
    /// The hybrid-vsock listener; each muxer gets a clone.
    listener: UnixListener,
    /// Holds the current muxer's epoll; registered once with the vring worker.
    host_epoll: Epoll,
    /// The tick timer's descriptor (owned by `State::tick`), registered with the vring worker.
    tick_fd: RawFd,
    /// The vring worker's exit event, handed to the library once.
    exit: Mutex<Option<(EventConsumer, EventNotifier)>>,
    state: Mutex<State>,
}

struct State {
    mem: Option<Mem>,
    muxer: Option<Muxer>,
    /// Periodic (WATCHDOG_PERIOD), brought forward for handshake deadlines. Non-blocking.
    tick: TimerFd,
    /// When `tick` fires next, at the latest.
    tick_at: Instant,
    ready: Vec<EpollEvent>,
}

/// A timerfd that reads EAGAIN instead of blocking when it has not expired.
fn nonblocking_timer() -> io::Result<TimerFd> {
    // SAFETY: timerfd_create(2) touches no memory of ours; its result is checked.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a timerfd just created, owned by nothing else.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

impl VsockBackend {
    fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> io::Result<VsockBackend> {
        let mut tick = nonblocking_timer()?;
        tick.reset(WATCHDOG_PERIOD, Some(WATCHDOG_PERIOD)).map_err(io::Error::from)?;
        let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(VsockBackend {
            guest_cid,
            uds_path: uds_path.to_owned(),
            config: guest_cid.to_le_bytes(),
            listener,
            host_epoll: Epoll::new()?,
            tick_fd: tick.as_raw_fd(),
            exit: Mutex::new(Some(exit)),
            state: Mutex::new(State {
                mem: None,
                muxer: None,
                tick,
                tick_at: Instant::now() + WATCHDOG_PERIOD,
                ready: vec![EpollEvent::default(); 64],
            }),
        })
    }

    /// A muxer for a driver that just started its rings, its epoll nested in `host_epoll`.
    fn new_muxer(&self) -> io::Result<Muxer> {
        let host = HostSide {
            guest_cid: self.guest_cid,
            listener: self.listener.try_clone()?,
            uds_path: self.uds_path.clone(),
            epoll: Epoll::new()?,
        };
        let muxer = Muxer::new(host)?;
        // Removed from `host_epoll` by the kernel when the muxer (its only owner) closes it.
        self.host_epoll.ctl(ControlOperation::Add, muxer.epoll().as_raw_fd(), EpollEvent::new(EventSet::IN, 0))?;
        Ok(muxer)
    }

    /// The driver stopped or reset: every host connection goes, as with the in-process device.
    fn stop(st: &mut State) {
        if st.muxer.take().is_some() {
            tracing::debug!("vhost-user vsock: the driver stopped the queues; host connections closed");
        }
    }

    /// One pass over the host side and the queues after `event`, as the in-process device
    /// loop does. Returns whether RX and TX need their call eventfd signalled.
    fn serve(&self, st: &mut State, event: u16, vrings: &[Vring]) -> (bool, bool) {
        let (Some(rx_ring), Some(tx_ring)) = (vrings.get(RX), vrings.get(TX)) else { return (false, false) };
        let mut rx = rx_ring.get_mut();
        let mut tx = tx_ring.get_mut();
        let running = rx.is_enabled() && rx.get_queue().ready() && tx.is_enabled() && tx.get_queue().ready();
        let mem = match (&st.mem, running) {
            (Some(mem), true) => mem.memory(),
            _ => {
                Self::stop(st);
                return (false, false);
            }
        };
        if st.muxer.is_none() {
            match self.new_muxer() {
                Ok(muxer) => {
                    tracing::debug!("vhost-user vsock: the driver started the queues");
                    st.muxer = Some(muxer);
                }
                Err(e) => {
                    tracing::error!("vhost-user vsock: cannot serve the guest: {e}");
                    return (false, false);
                }
            }
        }
        let State { muxer: Some(muxer), ready, .. } = st else { return (false, false) };
        let mut q = GuestQueues::new(&mem, rx.get_queue_mut(), tx.get_queue_mut());
        match event {
            e if usize::from(e) == TX => muxer.process_tx(&mut q),
            TOKEN_HOST => host_events(muxer, ready),
            TOKEN_TICK => muxer.watchdog(&mut q),
            _ => {}
        }
        muxer.settle(&mut q);
        (q.notify_rx, q.notify_tx)
    }

    /// Brings the tick forward to the next handshake deadline, if that comes first.
    fn rearm(st: &mut State) {
        let Some(deadline) = st.muxer.as_ref().and_then(Muxer::next_deadline) else { return };
        if deadline >= st.tick_at {
            return;
        }
        let now = Instant::now();
        let first = deadline.saturating_duration_since(now).max(Duration::from_millis(1));
        match st.tick.reset(first, Some(WATCHDOG_PERIOD)) {
            Ok(()) => st.tick_at = now + first,
            Err(e) => tracing::warn!("vhost-user vsock: cannot set the timer: {e}"),
        }
    }
}

/// Takes the events waiting in the muxer's epoll (never waits).
fn host_events(muxer: &mut Muxer, ready: &mut [EpollEvent]) {
    loop {
        let n = match muxer.epoll().wait(0, ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("vhost-user vsock: epoll failed: {e}");
                return;
            }
        };
        for ev in &ready[..n] {
            muxer.host_event(ev.data(), ev.event_set());
        }
        if n < ready.len() {
            return;
        }
    }
}

impl VhostUserBackend for VsockBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// No EVENT_IDX: the muxer never publishes avail_event, so the driver must always kick.
    /// No INDIRECT_DESC either, like the in-process device.
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// CONFIG: qemu's vhost-user-vsock reads the CID with GET_CONFIG and refuses a backend
    /// without it. MQ: lets the frontend ask how many queues there are. (The library adds
    /// REPLY_ACK.)
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn reset_device(&self) {
        Self::stop(&mut lock(&self.state));
    }

    fn set_event_idx(&self, _enabled: bool) {
        // Never offered, and the library refuses features we do not offer.
    }

    /// Exactly `size` bytes (the library answers an error otherwise); past the 8 bytes of
    /// config, zeroes, as the in-process device reads.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        if size > MAX_CONFIG_READ {
            return Vec::new();
        }
        let mut data = vec![0u8; size as usize];
        read_config_bytes(&self.config, u64::from(offset), &mut data);
        data
    }

    /// The config space is read-only: writes are ignored, as by the in-process device.
    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        lock(&self.state).mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        lock(&self.exit)
            .take()
            .or_else(|| new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if matches!(usize::try_from(queue_index), Ok(RX | TX)) {
            Self::stop(&mut lock(&self.state));
        }
        Ok(())
    }

    /// Never fails: an error would end the vring worker, and with it the device.
    fn handle_event(&self, device_event: u16, _evset: EventSet, vrings: &[Vring], _thread_id: usize) -> io::Result<()> {
        let mut st = lock(&self.state);
        if device_event == TOKEN_TICK {
            let _ = st.tick.wait(); // consumes the expiry; EAGAIN if re-armed since
            st.tick_at = Instant::now() + WATCHDOG_PERIOD;
        }
        // A bug of ours must not leave the agent's connections open and unserved (the host
        // would wait on them forever): after a panic the muxer goes, and its connections with it.
        let served =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(&mut st, device_event, vrings)));
        let (notify_rx, notify_tx) = served.unwrap_or_else(|_| {
            tracing::error!("vhost-user vsock: the device failed; closing its connections");
            st.muxer = None;
            (false, false)
        });
        Self::rearm(&mut st);
        drop(st);
        // The vring guards are released: signal_used_queue takes the vring's lock again.
        for (index, notify) in [(RX, notify_rx), (TX, notify_tx)] {
            if let (true, Some(vring)) = (notify, vrings.get(index)) {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::warn!("vhost-user vsock: cannot signal queue {index}: {e}");
                }
            }
        }
        Ok(())
    }
}

/// What the serving thread and `VhostUserVsock` share.
#[derive(Default)]
struct Control {
    /// Set by Drop: a connection accepted from now on is shut down at once.
    stopping: bool,
    shutdown: Option<ShutdownHandle>,
    ended: Option<String>,
}

/// Socket files removed when dropped.
struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sets `Control::ended` when the serving thread ends, even by a panic.
struct EndReport {
    control: Arc<Mutex<Control>>,
    outcome: String,
}

impl Drop for EndReport {
    fn drop(&mut self) {
        let mut c = lock(&self.control);
        c.shutdown = None;
        c.ended = Some(std::mem::take(&mut self.outcome));
    }
}

/// The vhost-user-vsock backend of one frontend connection (qemu's `vhost-user-vsock-device`),
/// serving the hybrid-vsock Unix socket as the in-process device does.
pub struct VhostUserVsock {
    control: Arc<Mutex<Control>>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    /// Declared last: the files go once the threads are joined.
    _sockets: SocketFiles,
}

impl VhostUserVsock {
    /// Listens at once on `frontend_socket` (what qemu's `-chardev socket,path=` connects to) and
    /// on `uds_path` (the hybrid-vsock host side, same protocol and same checks as
    /// `Vsock::new`), then serves one frontend connection on its own thread(s).
    pub fn start(guest_cid: u64, frontend_socket: &Path, uds_path: &Path) -> Result<VhostUserVsock, VsockError> {
        check_cid(guest_cid)?;
        let host_listener = bind_socket(uds_path)?;
        let mut sockets = SocketFiles(vec![uds_path.to_owned()]);
        let frontend = bind_socket(frontend_socket)?;
        sockets.0.push(frontend_socket.to_owned());
        let failed = |what: &str, e: &dyn std::fmt::Display| VsockError::VhostUser(format!("{what}: {e}"));

        let backend = Arc::new(
            VsockBackend::new(guest_cid, uds_path, host_listener)
                .map_err(|e| failed("cannot set up the device", &e))?,
        );
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon = VhostUserDaemon::new("vhost-user-vsock".into(), Arc::clone(&backend), mem)
            .map_err(|e| failed("cannot start the vring worker", &e))?;
        let worker = daemon.get_epoll_handlers().into_iter().next();
        let worker = worker.ok_or_else(|| VsockError::VhostUser("the library started no vring worker".into()))?;
        for (fd, token) in [(backend.host_epoll.as_raw_fd(), TOKEN_HOST), (backend.tick_fd, TOKEN_TICK)] {
            worker
                .register_listener(fd, EventSet::IN, u64::from(token))
                .map_err(|e| failed("cannot register with the vring worker", &e))?;
        }
        drop((worker, backend));

        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|e| failed("eventfd", &e))?;
        let thread_stop = stop.try_clone().map_err(|e| failed("eventfd", &e))?;
        let control = Arc::new(Mutex::new(Control::default()));
        let thread_control = Arc::clone(&control);
        let listener = Listener::from(frontend);
        let thread = std::thread::Builder::new()
            .name("vhost-user-vsock".into())
            .spawn(move || serve_frontend(daemon, listener, thread_stop, thread_control))
            .map_err(|e| failed("cannot start its thread", &e))?;
        Ok(VhostUserVsock { control, stop, thread: Some(thread), _sockets: sockets })
    }

    /// Whether the frontend has disconnected or the daemon ended: `None` while waiting for or
    /// serving the frontend, then why it ended (the daemon's error, or that the frontend left).
    pub fn ended(&self) -> Option<String> {
        lock(&self.control).ended.clone()
    }
}

impl Drop for VhostUserVsock {
    fn drop(&mut self) {
        let shutdown = {
            let mut c = lock(&self.control);
            c.stopping = true;
            c.shutdown.take()
        };
        if let Some(handle) = shutdown {
            handle.shutdown(); // ends the request loop: the frontend connection is closed
        }
        let _ = self.stop.write(1); // ends the wait for a frontend
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until a frontend connects (true) or `stop` is written (false).
fn wait_for_frontend(listener: &Listener, stop: &EventFd) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is an array of initialised pollfd that outlives the call, passed with
        // its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return Ok(true);
        }
        if fds[0].revents != 0 {
            return Err(io::Error::other(format!("the socket reports poll events {:#x}", fds[0].revents)));
        }
    }
}

/// The serving thread: one frontend connection, then the vring worker is stopped and joined.
fn serve_frontend(mut daemon: Daemon, mut listener: Listener, stop: EventFd, control: Arc<Mutex<Control>>) {
    let mut report = EndReport { control: Arc::clone(&control), outcome: "the vhost-user thread failed".into() };
    let outcome = match wait_for_frontend(&listener, &stop) {
        Err(e) => format!("cannot wait for the frontend: {e}"),
        Ok(false) => "stopped before a frontend connected".to_owned(),
        Ok(true) => {
            // The listener is readable, so this accept does not block.
            let started = daemon.start(&mut listener);
            drop(listener); // one frontend: later connection attempts are refused
            match started {
                Err(e) => format!("cannot accept the frontend: {e}"),
                Ok(()) => {
                    let handle = daemon.shutdown_handle();
                    {
                        let mut c = lock(&control);
                        if c.stopping {
                            if let Some(h) = &handle {
                                h.shutdown();
                            }
                        } else {
                            c.shutdown = handle;
                        }
                    }
                    match daemon.wait() {
                        Ok(())
                        | Err(DaemonError::HandleRequest(
                            ProtocolError::Disconnected | ProtocolError::PartialMessage,
                        )) => "the frontend disconnected".to_owned(),
                        Err(e) => format!("vhost-user: {e}"),
                    }
                }
            }
        }
    };
    tracing::debug!("vhost-user vsock: {outcome}");
    for worker in daemon.get_epoll_handlers() {
        worker.send_exit_event();
    }
    drop(daemon); // joins the vring worker; the muxer and every host socket close with it
    report.outcome = outcome;
}

#[cfg(test)]
mod tests {
    use super::super::packet::*;
    use super::super::testing::{guest_header, wait_for, DriverRing};
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend};

    const MEM_SIZE: usize = 1 << 20;
    const RING_SIZE: u16 = 16;
    const CID: u64 = 3;

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vhu-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Drops `dev` on another thread; fails if that takes more than 5 s.
    fn drop_promptly(dev: VhostUserVsock) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(dev);
            let _ = done_tx.send(());
        });
        done_rx.recv_timeout(Duration::from_secs(5)).expect("dropping the vhost-user vsock device hangs");
    }

    /// The guest: memory shared with the backend through a memfd, and the three rings.
    struct Guest {
        mem: GuestMemoryMmap,
        rx: DriverRing,
        tx: DriverRing,
        kicks: Vec<EventFd>,
        calls: Vec<EventFd>,
    }

    impl Guest {
        fn kick(&self, queue: usize) {
            self.kicks[queue].write(1).unwrap();
        }

        /// Waits until the backend signals `queue`'s call eventfd.
        fn wait_call(&self, queue: usize) {
            wait_for("the backend to signal the call eventfd", || self.calls[queue].read().ok());
        }
    }

    /// Acts as qemu does: negotiates, shares memory, sets up and enables the rings.
    fn connect_frontend(socket: &Path) -> (Frontend, Guest) {
        let mut fe = Frontend::connect(socket, NUM_QUEUES as u64).unwrap();
        let features = fe.get_features().unwrap();
        assert_eq!(features, VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits());
        let proto = fe.get_protocol_features().unwrap();
        assert!(proto.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
        fe.set_protocol_features(proto).unwrap();
        assert_eq!(fe.get_queue_num().unwrap(), NUM_QUEUES as u64);
        fe.set_owner().unwrap();
        fe.set_features(features).unwrap();
        let (_, config) = fe.get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8]).unwrap();
        assert_eq!(config, CID.to_le_bytes());

        // SAFETY: memfd_create(2) with a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh memfd owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).unwrap();
        let mem =
            GuestMemoryMmap::from_ranges_with_files(&[(GuestAddress(0), MEM_SIZE, Some(FileOffset::new(file, 0)))])
                .unwrap();
        let hva = |gpa: GuestAddress| mem.get_host_address(gpa).unwrap() as u64;
        let region = VhostUserMemoryRegionInfo::from_guest_region(mem.find_region(GuestAddress(0)).unwrap()).unwrap();
        fe.set_mem_table(&[region]).unwrap();

        let rings: Vec<DriverRing> = (0..NUM_QUEUES as u64)
            .map(|i| DriverRing::new(&mem, GuestAddress(i * 0x1000), GuestAddress(0x10000 + i * 0x20000), RING_SIZE))
            .collect();
        let kicks: Vec<EventFd> = (0..NUM_QUEUES).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let calls: Vec<EventFd> = (0..NUM_QUEUES).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        for (i, ring) in rings.iter().enumerate() {
            fe.set_vring_num(i, RING_SIZE).unwrap();
            let addrs = VringConfigData {
                queue_max_size: MAX_QUEUE_SIZE as u16,
                queue_size: RING_SIZE,
                flags: 0,
                desc_table_addr: hva(ring.desc),
                used_ring_addr: hva(ring.used),
                avail_ring_addr: hva(ring.avail),
                log_addr: None,
            };
            fe.set_vring_addr(i, &addrs).unwrap();
            fe.set_vring_base(i, 0).unwrap();
            fe.set_vring_call(i, &calls[i]).unwrap();
            fe.set_vring_kick(i, &kicks[i]).unwrap();
            fe.set_vring_enable(i, true).unwrap();
        }
        let mut rings = rings.into_iter();
        let (rx, tx) = (rings.next().unwrap(), rings.next().unwrap());
        (fe, Guest { mem, rx, tx, kicks, calls })
    }

    /// The whole path as qemu would drive it: vhost-user negotiation, shared memory, rings,
    /// kicks and calls; a host client's CONNECT reaches the guest, the guest accepts, bytes
    /// flow both ways; a guest connection reaches `<uds_path>_<port>`; stopping a ring closes
    /// host connections; the frontend leaving is reported; Drop cleans up.
    #[test]
    fn vhost_user_round_trip() {
        let dir = test_dir("rt");
        let (fe_socket, uds) = (dir.join("frontend.sock"), dir.join("v"));
        let dev = VhostUserVsock::start(CID, &fe_socket, &uds).unwrap();
        let (fe, mut g) = connect_frontend(&fe_socket);
        assert_eq!(dev.ended(), None);

        g.rx.give_buffers(&g.mem, 8);
        g.kick(RX);
        let mut client = UnixStream::connect(&uds).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let (h, payload) = wait_for("OP_REQUEST on RX", || g.rx.packets(&g.mem).pop());
        assert_eq!((h.op, h.src_cid, h.dst_cid, h.dst_port, h.kind), (OP_REQUEST, HOST_CID, CID, 1024, TYPE_STREAM));
        assert!(payload.is_empty());
        g.wait_call(RX);
        let local = h.src_port;

        // The guest accepts: the client reads OK.
        g.tx.send(&g.mem, &guest_header(OP_RESPONSE, 1024, local, 0), &[]);
        g.kick(TX);
        wait_for("the TX buffer to be used", || g.tx.used(&g.mem).pop());
        g.wait_call(TX);
        let mut ok = [0u8; 32];
        let n = client.read(&mut ok).unwrap();
        assert_eq!(std::str::from_utf8(&ok[..n]).unwrap(), format!("OK {local}\n"));

        // Host to guest, guest to host.
        client.write_all(b"hello").unwrap();
        let (h, payload) = wait_for("OP_RW on RX", || g.rx.packets(&g.mem).pop());
        assert_eq!((h.op, h.src_port, h.dst_port, payload.as_slice()), (OP_RW, local, 1024, &b"hello"[..]));
        g.tx.send(&g.mem, &guest_header(OP_RW, 1024, local, 5), b"world");
        g.kick(TX);
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world");

        // The guest connects to host port 52: `<uds>_52` gets the connection, the guest an answer.
        let service = UnixListener::bind(dir.join("v_52")).unwrap();
        g.tx.send(&g.mem, &guest_header(OP_REQUEST, 2000, 52, 0), &[]);
        g.kick(TX);
        let (h, _) = wait_for("OP_RESPONSE on RX", || g.rx.packets(&g.mem).pop());
        assert_eq!((h.op, h.src_port, h.dst_port, h.dst_cid), (OP_RESPONSE, 52, 2000, CID));
        let (mut svc, _) = service.accept().unwrap();
        g.tx.send(&g.mem, &guest_header(OP_RW, 2000, 52, 3), b"abc");
        g.kick(TX);
        svc.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 3];
        svc.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");

        // qemu stops the device (GET_VRING_BASE): host connections close, before it answers
        // (not on the next tick).
        fe.get_vring_base(TX).unwrap();
        client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert!(matches!(client.read(&mut [0u8; 8]), Ok(0)), "the host client is still connected");

        // The frontend leaves: reported, and Drop still returns promptly and cleans up.
        drop(fe);
        let why = wait_for("ended() to report the disconnection", || dev.ended());
        assert!(why.contains("disconnected"), "{why}");
        drop_promptly(dev);
        assert!(!fe_socket.exists() && !uds.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drop_without_a_frontend_is_prompt_and_removes_the_sockets() {
        let dir = test_dir("nofe");
        let (fe_socket, uds) = (dir.join("frontend.sock"), dir.join("v"));
        let dev = VhostUserVsock::start(CID, &fe_socket, &uds).unwrap();
        // Listening at once on both.
        UnixStream::connect(&uds).unwrap();
        assert!(fe_socket.exists());
        assert_eq!(dev.ended(), None);
        drop_promptly(dev);
        assert!(!fe_socket.exists() && !uds.exists());
        assert!(UnixStream::connect(&fe_socket).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn drop_with_a_connected_frontend_is_prompt() {
        let dir = test_dir("fe");
        let (fe_socket, uds) = (dir.join("frontend.sock"), dir.join("v"));
        let dev = VhostUserVsock::start(CID, &fe_socket, &uds).unwrap();
        let fe = Frontend::connect(&fe_socket, NUM_QUEUES as u64).unwrap();
        // Answered: the connection is being served. Only one frontend is: the listener closes
        // once it is accepted.
        fe.get_features().unwrap();
        wait_for("a second frontend to be refused", || UnixStream::connect(&fe_socket).is_err().then_some(()));
        drop_promptly(dev);
        assert!(fe.get_features().is_err(), "the frontend connection is still served");
        assert!(!fe_socket.exists() && !uds.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn start_refuses_what_vsock_new_refuses() {
        let dir = test_dir("bad");
        let (fe_socket, uds) = (dir.join("frontend.sock"), dir.join("v"));
        assert!(matches!(VhostUserVsock::start(2, &fe_socket, &uds), Err(VsockError::ReservedCid(2))));
        std::fs::write(&fe_socket, b"not a socket").unwrap();
        assert!(matches!(VhostUserVsock::start(CID, &fe_socket, &uds), Err(VsockError::NotASocket(_))));
        // The file is left alone and the host socket bound before the failure is removed.
        assert_eq!(std::fs::read(&fe_socket).unwrap(), b"not a socket");
        assert!(!uds.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The backend driven directly, as the vring worker would: the tick fires for a handshake
    /// deadline with no traffic at all, and expires the handshake.
    #[test]
    fn the_tick_expires_handshakes_without_traffic() {
        let dir = test_dir("tick");
        let uds = dir.join("v");
        let b = VsockBackend::new(CID, &uds, UnixListener::bind(&uds).unwrap()).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let vrings: Vec<Vring> = (0..NUM_QUEUES as u64)
            .map(|i| {
                let r = DriverRing::new(&mem, GuestAddress(i * 0x1000), GuestAddress(0x10000), RING_SIZE);
                let v = Vring::new(atomic.clone(), MAX_QUEUE_SIZE as u16).unwrap();
                v.set_queue_size(RING_SIZE);
                v.set_queue_info(r.desc.0, r.avail.0, r.used.0).unwrap();
                v.set_queue_ready(true);
                v.set_enabled(true);
                v
            })
            .collect();
        b.update_memory(atomic).unwrap();
        b.handle_event(RX as u16, EventSet::IN, &vrings, 0).unwrap();
        assert!(lock(&b.state).muxer.is_some(), "running rings did not start the muxer");

        let mut silent = UnixStream::connect(&uds).unwrap();
        b.handle_event(TOKEN_HOST, EventSet::IN, &vrings, 0).unwrap();
        {
            let mut st = lock(&b.state);
            // Only a rearm for the deadline can make the tick fire now.
            st.tick.reset(Duration::from_secs(3600), None).unwrap();
            st.tick_at = Instant::now() + Duration::from_secs(3600);
            st.muxer.as_mut().unwrap().set_handshake_deadlines(Instant::now() + Duration::from_millis(20));
            VsockBackend::rearm(&mut st);
        }
        let mut pfd = libc::pollfd { fd: b.tick_fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one initialised pollfd that outlives the call.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1, "the tick did not fire for the deadline");
        b.handle_event(TOKEN_TICK, EventSet::IN, &vrings, 0).unwrap();
        silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(silent.read(&mut [0u8; 8]), Ok(0)), "the silent client was not dropped");

        // The driver disables a ring: the muxer goes.
        vrings[TX].set_enabled(false);
        b.handle_event(RX as u16, EventSet::IN, &vrings, 0).unwrap();
        assert!(lock(&b.state).muxer.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_reads_are_bounded_and_zero_past_the_cid() {
        let dir = test_dir("cfg");
        let uds = dir.join("v");
        let b = VsockBackend::new(0x1234_5678, &uds, UnixListener::bind(&uds).unwrap()).unwrap();
        assert_eq!(b.get_config(0, 8), 0x1234_5678u64.to_le_bytes());
        assert_eq!(b.get_config(2, 8), [0x34, 0x12, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b.get_config(u32::MAX, 4), [0; 4]);
        assert!(b.get_config(0, MAX_CONFIG_READ + 1).is_empty());
        assert_eq!(b.num_queues(), 3);
        assert_eq!(b.max_queue_size(), 1024);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
