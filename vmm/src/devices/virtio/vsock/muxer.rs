//! The host side of virtio-vsock, in userspace: guest stream connections become AF_UNIX stream
//! connections on the host ("hybrid" vsock).
//!
//! - A host program connects to the Unix socket at `uds_path` and writes `CONNECT <port>\n`;
//!   the guest sees a connection from the host to `<port>`, and the host program reads
//!   `OK <local port>\n` once the guest accepts (or the socket is closed if it refuses).
//! - A guest connection to the host (CID 2) on port P is connected to `<uds_path>_P`.
//!
//! Every packet the guest sends is checked (CIDs, type, length, connection state) and anything
//! wrong is answered with RST, never trusted. Credit-based flow control limits what each side
//! may have in flight; host sockets are non-blocking and edge-triggered, so nothing here waits.
//!
//! The muxer owns the host side only. Queue work borrows the guest memory and the RX/TX queues
//! from whoever owns them (`GuestQueues`): the in-process device (`super::Vsock`) and the
//! vhost-user backend (`super::vhost_user`) serve the guest through this same code.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::*;

/// Receive buffer we advertise per connection (bytes from the guest not yet given to the host).
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload we accept in one packet from the guest.
const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Send a credit update once this much has been forwarded since the last one.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Host-initiated ports are allocated from here up (as Firecracker does, to stay clear of the
/// guest's ephemeral range).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Cap on simultaneous connections (including ones still saying CONNECT).
const MAX_CONNECTIONS: usize = 1024;
/// The CONNECT line is short; more without a newline is a protocol error.
const MAX_CONNECT_LINE: usize = 32;
/// Control packets waiting for RX buffers. Past this, guest TX is left in its queue until
/// the guest gives RX buffers: a guest cannot make us queue answers without bound.
const MAX_CONTROL: usize = 512;
/// A host client must send its CONNECT line, and the guest must answer the request it makes,
/// within this time; otherwise the slot is freed and the client's socket closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Epoll tokens below this are fixed sources; above, `TOKEN_FD_BASE + fd`.
pub const TOKEN_LISTENER: u64 = 1;
pub const TOKEN_FD_BASE: u64 = 1 << 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The host asked, the guest has not answered.
    HostRequested,
    Established,
    /// The guest closed; what it sent is still being written to the host socket.
    Draining,
}

/// (local port on the host side, port on the guest side).
type Key = (u32, u32);

struct Conn {
    stream: UnixStream,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we have sent to the guest.
    tx_cnt: u32,
    /// Bytes from the guest we have written to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest data the host socket did not take yet (at most BUF_ALLOC).
    to_host: VecDeque<u8>,
    /// The host socket may have data for the guest.
    host_readable: bool,
    host_eof: bool,
    /// The guest will send no more: half-close the host side once `to_host` drains.
    guest_done_sending: bool,
    /// Bytes the host client wrote after its CONNECT line, before the guest accepted.
    early: Vec<u8>,
    /// For HostRequested: when the guest must have answered.
    deadline: Instant,
}

impl Conn {
    fn new(stream: UnixStream, state: State, peer: &Header) -> Conn {
        Conn {
            stream,
            state,
            peer_buf_alloc: peer.buf_alloc,
            peer_fwd_cnt: peer.fwd_cnt,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            to_host: VecDeque::new(),
            host_readable: false,
            host_eof: false,
            guest_done_sending: false,
            early: Vec::new(),
            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Writes as much of `to_host` as the socket takes.
    fn flush_to_host(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// Connects to a host Unix socket without blocking: a listener whose backlog is full refuses
/// (EAGAIN) instead of making us wait.
fn connect_nonblocking(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned by the UnixStream right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes.
    if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// A host client that has connected but not yet sent its CONNECT line.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// The host end of the device: the guest's CID, the listening socket and its path, and the
/// epoll set the device thread waits on.
pub struct HostSide {
    pub guest_cid: u64,
    pub listener: UnixListener,
    pub uds_path: PathBuf,
    pub epoll: Epoll,
}

/// What one pass of queue work borrows from the queues' owner: guest memory and the RX and TX
/// queues, plus what the pass found about interrupts.
pub struct GuestQueues<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub rx: &'a mut Queue,
    pub tx: &'a mut Queue,
    /// Set by the muxer when it used buffers and the driver of RX (resp. TX) wants to be told.
    /// The owner interrupts the guest after the pass (in-process: one interrupt if either is
    /// set; vhost-user: each flagged queue's call eventfd).
    pub notify_rx: bool,
    pub notify_tx: bool,
}

impl<'a> GuestQueues<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, rx: &'a mut Queue, tx: &'a mut Queue) -> Self {
        GuestQueues { mem, rx, tx, notify_rx: false, notify_tx: false }
    }

    /// Whether the guest must be interrupted.
    pub fn interrupt(&self) -> bool {
        self.notify_rx || self.notify_tx
    }
}

/// Connection multiplexer: host sockets and connection state; see `GuestQueues` for the queues.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, Pending>,
    /// Control packets (no payload) waiting for RX buffers.
    control: VecDeque<Header>,
    next_local_port: u32,
    /// TX processing stopped because `control` was full.
    tx_stalled: bool,
}

impl Muxer {
    pub fn new(host: HostSide) -> std::io::Result<Muxer> {
        let HostSide { guest_cid, listener, uds_path, epoll } = host;
        listener.set_nonblocking(true)?;
        epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_LISTENER))?;
        Ok(Muxer {
            guest_cid,
            uds_path,
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            tx_stalled: false,
        })
    }

    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// An event from `epoll()`: the listener or a host socket. Other tokens are the caller's
    /// own and are ignored here.
    pub fn host_event(&mut self, token: u64, events: EventSet) {
        match token {
            TOKEN_LISTENER => self.accept_host_clients(),
            t if t >= TOKEN_FD_BASE => {
                let fd = (t - TOKEN_FD_BASE) as RawFd;
                self.host_socket_event(fd, events);
            }
            _ => {}
        }
    }

    /// What follows every batch of events: handshake deadlines, RX (control packets and host
    /// data), and TX that waited for room in the control queue.
    pub fn settle(&mut self, q: &mut GuestQueues) {
        self.expire_handshakes(Instant::now());
        self.process_rx(q);
        // TX left waiting for room in the control queue: RX just made some.
        while self.tx_stalled() {
            self.process_tx(q);
            self.process_rx(q);
        }
    }

    fn header(&self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map(|c| c.fwd_cnt).unwrap_or(0);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    fn send_control(&mut self, key: Key, op: u16, flags: u32) {
        let h = self.header(key, op, flags, 0);
        self.control.push_back(h);
    }

    fn watch(&self, fd: RawFd) {
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        let _ = self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, TOKEN_FD_BASE + fd as u64));
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.unwatch(fd);
            self.by_fd.remove(&fd);
        }
    }

    /// Drops the connection and tells the guest.
    fn reset(&mut self, key: Key) {
        self.remove(key);
        self.send_control(key, OP_RST, 0);
    }

    fn connection_count(&self) -> usize {
        self.conns.len() + self.pending.len()
    }

    // ---- guest -> host -------------------------------------------------------------------

    /// Handles every packet the guest queued on TX (or as many as the control queue allows).
    pub fn process_tx(&mut self, q: &mut GuestQueues) {
        let mut used = false;
        self.tx_stalled = false;
        loop {
            if self.control.len() >= MAX_CONTROL {
                self.tx_stalled = true;
                break;
            }
            let Some(chain) = q.tx.pop_descriptor_chain(q.mem) else { break };
            let head = chain.head_index();
            let parsed = Reader::new(q.mem, chain).ok().and_then(|mut r| {
                let mut hb = [0u8; HDR_LEN];
                r.read_exact(&mut hb).ok()?;
                let h = Header::decode(&hb);
                let len = h.len as usize;
                if len > MAX_PKT_PAYLOAD || len > r.available_bytes() {
                    return Some((h, None));
                }
                let mut payload = vec![0u8; len];
                r.read_exact(&mut payload).ok()?;
                Some((h, Some(payload)))
            });
            if q.tx.add_used(q.mem, head, 0).is_err() {
                break;
            }
            used = true;
            match parsed {
                Some((h, Some(payload))) => self.handle_guest_packet(h, payload),
                Some((h, None)) => self.reject(&h),
                None => {}
            }
        }
        if used {
            notify_guest(q);
        }
    }

    /// Answers a malformed or unacceptable packet with RST (unless it was an RST itself).
    fn reject(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        self.remove(key);
        if h.op != OP_RST {
            self.send_control(key, OP_RST, 0);
        }
    }

    fn handle_guest_packet(&mut self, h: Header, payload: Vec<u8>) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID || h.kind != TYPE_STREAM {
            return self.reject(&h);
        }
        let key = (h.dst_port, h.src_port);
        if h.op == OP_REQUEST {
            return self.guest_connect(key, &h);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return self.reject(&h);
        };
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = h.fwd_cnt;
        match (h.op, conn.state) {
            (OP_RESPONSE, State::HostRequested) => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                // The client is waiting for exactly this line; a short write means it is gone.
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    return self.reset(key);
                }
                conn.host_readable = true; // deliver anything it sent early, and what follows
            }
            (OP_RW, State::Established) => {
                if conn.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    // The guest ignored our credit.
                    return self.reset(key);
                }
                conn.to_host.extend(payload);
                if conn.flush_to_host().is_err() {
                    return self.reset(key);
                }
                if conn.fwd_cnt.wrapping_sub(conn.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
                    conn.last_fwd_cnt_sent = conn.fwd_cnt;
                    self.send_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => {
                conn.last_fwd_cnt_sent = conn.fwd_cnt;
                self.send_control(key, OP_CREDIT_UPDATE, 0);
            }
            (OP_SHUTDOWN, State::Established) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    conn.guest_done_sending = true;
                    if conn.flush_to_host().is_err() {
                        return self.reset(key);
                    }
                }
                if h.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    // Both directions closed: the connection is over for the guest. What it sent
                    // still reaches the host before the socket closes.
                    if conn.to_host.is_empty() {
                        self.reset(key);
                    } else {
                        conn.state = State::Draining;
                        self.send_control(key, OP_RST, 0);
                    }
                }
            }
            (_, State::Draining) => {}
            (OP_RST, _) => self.remove(key),
            _ => self.reset(key),
        }
    }

    /// The guest connects to host port `key.0`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: Key, h: &Header) {
        if self.conns.contains_key(&key) || self.connection_count() >= MAX_CONNECTIONS {
            return self.send_control(key, OP_RST, 0);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        // Non-blocking: a host service with a full backlog gets the guest an RST, and never
        // stalls the device thread.
        let stream = match connect_nonblocking(std::path::Path::new(&path)) {
            Ok(s) => s,
            Err(_) => return self.send_control(key, OP_RST, 0),
        };
        let fd = stream.as_raw_fd();
        self.conns.insert(key, Conn::new(stream, State::Established, h));
        self.by_fd.insert(fd, key);
        self.watch(fd);
        self.send_control(key, OP_RESPONSE, 0);
    }

    // ---- host -> guest -------------------------------------------------------------------

    /// Accepts host clients waiting on the listener.
    pub fn accept_host_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.connection_count() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                        continue; // dropping it closes it
                    }
                    let fd = stream.as_raw_fd();
                    self.watch(fd);
                    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                    self.pending.insert(fd, Pending { stream, line: Vec::new(), deadline });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads a pending client's CONNECT line; on success asks the guest to accept.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else { return };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let mut closed = false;
        loop {
            match p.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => p.line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock, or an error we treat the same: wait
            }
            if p.line.contains(&b'\n') || p.line.len() > MAX_CONNECT_LINE {
                break;
            }
        }
        let Some(nl) = p.line.iter().position(|&b| b == b'\n') else {
            if closed || p.line.len() > MAX_CONNECT_LINE {
                self.unwatch(fd);
                self.pending.remove(&fd);
            }
            return;
        };
        let Some(p) = self.pending.remove(&fd) else { return };
        let port = std::str::from_utf8(&p.line[..nl]).ok().and_then(|l| {
            let mut w = l.trim_end_matches('\r').split(' ');
            match (w.next(), w.next(), w.next()) {
                (Some(c), Some(port), None) if c.eq_ignore_ascii_case("connect") => port.parse::<u32>().ok(),
                _ => None,
            }
        });
        let Some(peer_port) = port else {
            self.unwatch(fd);
            return; // dropping the stream closes it
        };
        let local = self.allocate_local_port();
        let key = (local, peer_port);
        let mut conn = Conn::new(p.stream, State::HostRequested, &Header::default());
        conn.early = p.line[nl + 1..].to_vec();
        self.conns.insert(key, conn);
        self.by_fd.insert(fd, key);
        self.send_control(key, OP_REQUEST, 0);
    }

    /// The earliest handshake deadline, if any handshake is under way.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|p| p.deadline);
        let requested = self.conns.values().filter(|c| c.state == State::HostRequested).map(|c| c.deadline);
        pending.chain(requested).min()
    }

    /// Drops handshakes past their deadline: silent clients are closed, and a request the
    /// guest never answered is reset on both sides.
    pub fn expire_handshakes(&mut self, now: Instant) {
        let silent: Vec<RawFd> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(fd, _)| *fd).collect();
        for fd in silent {
            self.unwatch(fd);
            self.pending.remove(&fd);
        }
        let unanswered: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::HostRequested && c.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in unanswered {
            self.reset(key);
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// An epoll event on a host socket.
    pub fn host_socket_event(&mut self, fd: RawFd, events: EventSet) {
        if self.pending.contains_key(&fd) {
            return self.read_connect_line(fd);
        }
        let Some(&key) = self.by_fd.get(&fd) else { return };
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if conn.state == State::HostRequested && events.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            // The client gave up before the guest answered.
            return self.reset(key);
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.host_readable = true;
        }
        if events.contains(EventSet::OUT) && conn.flush_to_host().is_err() {
            return self.reset(key);
        }
        if conn.state == State::Draining {
            if conn.to_host.is_empty() || events.contains(EventSet::HANG_UP) {
                self.remove(key);
            }
            return;
        }
        if conn.fwd_cnt.wrapping_sub(conn.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            conn.last_fwd_cnt_sent = conn.fwd_cnt;
            self.send_control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Fills RX buffers: control packets first, then data from readable host sockets within
    /// the guest's credit. Returns when out of buffers or of things to send.
    pub fn process_rx(&mut self, q: &mut GuestQueues) {
        let mut used = false;
        self.flush_control(q, &mut used);
        if self.control.is_empty() {
            let keys: Vec<Key> = self
                .conns
                .iter()
                .filter(|(_, c)| c.state == State::Established && c.host_readable && !c.host_eof)
                .map(|(k, _)| *k)
                .collect();
            for key in keys {
                if !self.send_host_data(q, key, &mut used) {
                    break;
                }
            }
            // Reading may have found an end of stream (SHUTDOWN) to tell the guest right away.
            self.flush_control(q, &mut used);
        }
        if used {
            notify_guest(q);
        }
    }

    /// Sends queued control packets while there are RX buffers.
    fn flush_control(&mut self, q: &mut GuestQueues, used: &mut bool) {
        while let Some(h) = self.control.front().copied() {
            let Some(chain) = q.rx.pop_descriptor_chain(q.mem) else { break };
            let head = chain.head_index();
            let ok = Writer::new(q.mem, chain).map(|mut w| w.write_all(&h.encode()).is_ok()).unwrap_or(false);
            let _ = q.rx.add_used(q.mem, head, if ok { HDR_LEN as u32 } else { 0 });
            *used = true;
            self.control.pop_front();
        }
    }

    /// Whether TX processing is waiting for room in the control queue (which RX frees).
    pub fn tx_stalled(&self) -> bool {
        self.tx_stalled && self.control.len() < MAX_CONTROL
    }

    /// Moves data from one host socket to the guest; false when RX buffers ran out.
    fn send_host_data(&mut self, q: &mut GuestQueues, key: Key, used: &mut bool) -> bool {
        loop {
            let Some(conn) = self.conns.get_mut(&key) else { return true };
            let credit = conn.peer_credit() as usize;
            if credit == 0 {
                return true;
            }
            let Some(chain) = q.rx.pop_descriptor_chain(q.mem) else { return false };
            let head = chain.head_index();
            let Ok(mut w) = Writer::new(q.mem, chain) else {
                let _ = q.rx.add_used(q.mem, head, 0);
                *used = true;
                continue;
            };
            let room = w.available_bytes().saturating_sub(HDR_LEN).min(credit).min(MAX_PKT_PAYLOAD);
            if room == 0 {
                let _ = q.rx.add_used(q.mem, head, 0);
                *used = true;
                continue;
            }
            let mut data = vec![0u8; room];
            let n = if conn.early.is_empty() {
                loop {
                    match conn.stream.read(&mut data) {
                        Ok(n) => break Some(n),
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                        Err(_) => break Some(usize::MAX),
                    }
                }
            } else {
                let n = conn.early.len().min(room);
                data[..n].copy_from_slice(&conn.early[..n]);
                conn.early.drain(..n);
                Some(n)
            };
            match n {
                None => {
                    // Nothing to read after all: give the buffer back for later.
                    conn.host_readable = false;
                    q.rx.go_to_previous_position();
                    return true;
                }
                Some(0) => {
                    // The host will send nothing more; it may still read the guest's answer.
                    conn.host_eof = true;
                    q.rx.go_to_previous_position();
                    self.send_control(key, OP_SHUTDOWN, SHUTDOWN_SEND);
                    return true;
                }
                Some(usize::MAX) => {
                    // A broken host socket: the connection cannot go on.
                    q.rx.go_to_previous_position();
                    self.reset(key);
                    return true;
                }
                Some(n) => {
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
                    let h = self.header(key, OP_RW, 0, n as u32);
                    let ok = w.write_all(&h.encode()).is_ok() && w.write_all(&data[..n]).is_ok();
                    let _ = q.rx.add_used(q.mem, head, if ok { (HDR_LEN + n) as u32 } else { 0 });
                    *used = true;
                }
            }
        }
    }

    /// Runs every `WATCHDOG_PERIOD`: serves both queues in case a notification was lost. (The
    /// in-process device also raises again an interrupt the guest has not taken: that is about
    /// its irqfd, so its loop does it.)
    pub fn watchdog(&mut self, q: &mut GuestQueues) {
        let (tx_before, rx_before) = (q.tx.next_avail(), q.rx.next_avail());
        self.process_tx(q);
        self.process_rx(q);
        if q.tx.next_avail() != tx_before {
            tracing::debug!("virtio-vsock: served TX packets found by the watchdog");
        }
        if q.rx.next_avail() != rx_before {
            tracing::debug!("virtio-vsock: used RX buffers on the watchdog tick");
        }
    }

    /// Number of open connections (for tests and diagnostics).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Moves every handshake deadline to `at` (tests cannot wait HANDSHAKE_TIMEOUT).
    #[cfg(test)]
    pub(crate) fn set_handshake_deadlines(&mut self, at: Instant) {
        self.pending.values_mut().for_each(|p| p.deadline = at);
        self.conns.values_mut().filter(|c| c.state == State::HostRequested).for_each(|c| c.deadline = at);
    }
}

/// Used buffers were added: records which queues' drivers want an interrupt. Both queues are
/// asked, as the in-process device always did (one interrupt line for the device).
fn notify_guest(q: &mut GuestQueues) {
    let rx = q.rx.needs_notification(q.mem).unwrap_or(true);
    let tx = q.tx.needs_notification(q.mem).unwrap_or(true);
    q.notify_rx |= rx;
    q.notify_tx |= tx;
}

#[cfg(test)]
mod tests {
    use super::super::testing::{guest_header, wait_for, DriverRing};
    use super::*;
    use vm_memory::GuestAddress;

    fn muxer(dir: &std::path::Path) -> (Muxer, PathBuf) {
        let path = dir.join("v");
        let listener = UnixListener::bind(&path).unwrap();
        let host = HostSide { guest_cid: 3, listener, uds_path: path.clone(), epoll: Epoll::new().unwrap() };
        (Muxer::new(host).unwrap(), path)
    }

    fn closed_by_peer(s: &mut UnixStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        matches!(s.read(&mut [0u8; 8]), Ok(0))
    }

    #[test]
    fn silent_clients_and_unanswered_requests_time_out() {
        let dir = std::env::temp_dir().join(format!("vsock-mux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut m, path) = muxer(&dir);
        assert_eq!(m.next_deadline(), None);

        // A client that never says CONNECT.
        let mut silent = UnixStream::connect(&path).unwrap();
        // A client whose request the guest never answers (no RX buffers, no reply).
        let mut asking = UnixStream::connect(&path).unwrap();
        m.accept_host_clients();
        assert_eq!(m.pending.len(), 2);
        asking.write_all(b"CONNECT 1024\n").unwrap();
        for fd in m.pending.keys().copied().collect::<Vec<_>>() {
            m.host_socket_event(fd, EventSet::IN);
        }
        assert_eq!(m.pending.len(), 1);
        assert_eq!(m.connections(), 1);
        let deadline = m.next_deadline().unwrap();
        assert!(deadline > Instant::now() + HANDSHAKE_TIMEOUT / 2);

        // Before the deadline nothing changes; after it both are gone and the guest gets an RST.
        m.expire_handshakes(Instant::now());
        assert_eq!((m.pending.len(), m.connections()), (1, 1));
        m.expire_handshakes(deadline + Duration::from_millis(1));
        assert_eq!((m.pending.len(), m.connections(), m.next_deadline()), (0, 0, None));
        assert_eq!(m.control.back().map(|h| h.op), Some(OP_RST));
        assert!(closed_by_peer(&mut silent) && closed_by_peer(&mut asking));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One pass of the in-process device loop: host events, TX if the guest kicked it, then
    /// `settle`. Returns whether the guest would be interrupted.
    fn pump(m: &mut Muxer, q: &mut GuestQueues, tx_kick: bool) -> bool {
        let mut ready = vec![EpollEvent::default(); 16];
        let n = m.epoll().wait(0, &mut ready).unwrap();
        for ev in &ready[..n] {
            m.host_event(ev.data(), ev.event_set());
        }
        if tx_kick {
            m.process_tx(q);
        }
        m.settle(q);
        std::mem::replace(&mut q.notify_rx, false) | std::mem::replace(&mut q.notify_tx, false)
    }

    /// A host client's CONNECT through the queues, as the guest sees it, and data both ways.
    #[test]
    fn host_connect_round_trip_through_the_queues() {
        let dir = std::env::temp_dir().join(format!("vsock-mux-rt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut m, path) = muxer(&dir);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut rx = DriverRing::new(&mem, GuestAddress(0), GuestAddress(0x10000), 16);
        let mut tx = DriverRing::new(&mem, GuestAddress(0x1000), GuestAddress(0x30000), 16);
        let (mut rxq, mut txq) = (rx.queue(), tx.queue());
        let mut q = GuestQueues::new(&mem, &mut rxq, &mut txq);
        rx.give_buffers(&mem, 8);

        let mut client = UnixStream::connect(&path).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let (req, interrupted) = wait_for("OP_REQUEST on RX", || {
            let interrupted = pump(&mut m, &mut q, false);
            rx.packets(&mem).pop().map(|p| (p, interrupted))
        });
        let (h, payload) = req;
        assert!(interrupted, "RX buffers were used without interrupting the guest");
        assert_eq!((h.op, h.src_cid, h.dst_cid, h.dst_port, h.kind), (OP_REQUEST, HOST_CID, 3, 1024, TYPE_STREAM));
        assert!(h.src_port >= FIRST_LOCAL_PORT && payload.is_empty());
        assert_eq!(h.buf_alloc, BUF_ALLOC);
        let local = h.src_port;

        // The guest accepts: the client reads OK.
        tx.send(&mem, &guest_header(OP_RESPONSE, 1024, local, 0), &[]);
        assert!(pump(&mut m, &mut q, true), "TX was used without interrupting the guest");
        assert_eq!(tx.used(&mem).len(), 1);
        let mut ok = [0u8; 32];
        let n = client.read(&mut ok).unwrap();
        assert_eq!(std::str::from_utf8(&ok[..n]).unwrap(), format!("OK {local}\n"));

        // Host to guest.
        client.write_all(b"hello").unwrap();
        let (h, payload) = wait_for("OP_RW on RX", || {
            pump(&mut m, &mut q, false);
            rx.packets(&mem).pop()
        });
        assert_eq!((h.op, h.src_port, h.dst_port, payload.as_slice()), (OP_RW, local, 1024, &b"hello"[..]));

        // Guest to host.
        tx.send(&mem, &guest_header(OP_RW, 1024, local, 5), b"world");
        pump(&mut m, &mut q, true);
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world");
        assert_eq!(m.connections(), 1);

        // Nothing more to do: no buffer used, no interrupt.
        assert!(!pump(&mut m, &mut q, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
