//! The data path against mock queues, with a socket pair standing in for passt.

use super::*;
use std::time::Duration;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = 1; // VRING_DESC_F_NEXT
const WRITE: u16 = 2; // VRING_DESC_F_WRITE
const RXQ: u64 = 0;
const TXQ: u64 = 0x4000;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn datapath(
    mem: &GuestMemoryMmap,
    rx: &MockSplitQueue<GuestMemoryMmap>,
    tx: &MockSplitQueue<GuestMemoryMmap>,
    sock: UnixStream,
    mrg: bool,
    mtu: u16,
) -> Datapath {
    let interrupt = Arc::new(Interrupt::new().unwrap());
    Datapath::new(
        mem.clone(),
        rx.create_queue().unwrap(),
        tx.create_queue().unwrap(),
        interrupt,
        Backend::new(sock),
        mrg,
        mtu,
    )
}

/// Puts a chain of (address, length, flags) buffers at descriptor index `at` and makes it available.
fn add_chain(vq: &MockSplitQueue<GuestMemoryMmap>, at: u16, bufs: &[(u64, u32, u16)]) {
    let n = bufs.len() as u16;
    let descs: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let i = i as u16;
            let (flags, next) = if i + 1 < n { (flags | NEXT, at + i + 1) } else { (flags, 0) };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect();
    vq.add_desc_chains(&descs, at).unwrap();
}

/// The used ring's entries as (head, len).
fn used(vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = vq.used().idx().load();
    (0..n as usize)
        .map(|i| {
            let e = vq.used().ring().ref_at(i).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

fn framed(frame: &[u8]) -> Vec<u8> {
    let mut v = (frame.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

/// Everything the peer can read right now.
fn drain(peer: &mut UnixStream) -> Vec<u8> {
    peer.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

fn read_guest(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

fn unread_bytes(s: &UnixStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD stores one int.
    assert_eq!(unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) }, 0);
    n
}

#[test]
fn guest_frame_goes_out_length_prefixed() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
    let frame = pattern(60, 1);
    m.write_slice(&[0; HDR_LEN], GuestAddress(0x10000)).unwrap();
    m.write_slice(&frame[..20], GuestAddress(0x11000)).unwrap();
    m.write_slice(&frame[20..], GuestAddress(0x12000)).unwrap();
    // Header and frame in separate descriptors, the frame itself split in two.
    add_chain(&tx, 0, &[(0x10000, HDR_LEN as u32, 0), (0x11000, 20, 0), (0x12000, 40, 0)]);
    dp.process_tx();
    assert_eq!(used(&tx), vec![(0, 0)]);
    assert_eq!(drain(&mut peer), framed(&frame));
    assert_eq!(dp.backend_interest(), Some(EventSet::IN), "nothing left to write");
}

#[test]
fn backend_frames_split_and_joined_land_in_rx_buffers() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, false, 1500);
    for i in 0..3u16 {
        add_chain(&rx, i, &[(0x10000 + u64::from(i) * 0x1000, 2048, WRITE)]);
    }
    let (a, b, c) = (pattern(100, 1), pattern(1514, 2), pattern(42, 3));
    let fa = framed(&a);
    // The first frame arrives in three pieces: nothing is delivered until it is whole.
    for piece in [&fa[..3], &fa[3..50]] {
        peer.write_all(piece).unwrap();
        dp.process_rx();
        assert!(used(&rx).is_empty());
    }
    peer.write_all(&fa[50..]).unwrap();
    // ...and the next two in one write.
    let mut bc = framed(&b);
    bc.extend(framed(&c));
    peer.write_all(&bc).unwrap();
    dp.process_rx();
    assert_eq!(used(&rx), vec![(0, 112), (1, 1526), (2, 54)]);
    for (i, f) in [a, b, c].iter().enumerate() {
        let got = read_guest(&m, 0x10000 + i as u64 * 0x1000, HDR_LEN + f.len());
        assert_eq!(got[..HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "zeroed header, num_buffers 1");
        assert_eq!(&got[HDR_LEN..], &f[..]);
    }
}

#[test]
fn one_frame_spans_several_rx_chains_with_mrg_rxbuf() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
    for i in 0..4u16 {
        add_chain(&rx, i, &[(0x10000 + u64::from(i) * 0x1000, 512, WRITE)]);
    }
    let f = pattern(1400, 9);
    peer.write_all(&framed(&f)).unwrap();
    dp.process_rx();
    assert_eq!(used(&rx), vec![(0, 512), (1, 512), (2, 388)]);
    let mut got = Vec::new();
    for (i, len) in [512, 512, 388].into_iter().enumerate() {
        got.extend(read_guest(&m, 0x10000 + i as u64 * 0x1000, len));
    }
    assert_eq!(got[..HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0], "num_buffers 3");
    assert_eq!(&got[HDR_LEN..], &f[..]);
}

#[test]
fn without_rx_buffers_the_socket_is_not_read() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
    // Two 512-byte buffers cannot hold a 1400-byte frame: they are put back, not used.
    add_chain(&rx, 0, &[(0x10000, 512, WRITE)]);
    add_chain(&rx, 1, &[(0x11000, 512, WRITE)]);
    let f = pattern(1400, 4);
    peer.write_all(&framed(&f)).unwrap();
    dp.process_rx();
    assert!(used(&rx).is_empty());
    assert_eq!(dp.backend_interest(), Some(EventSet::empty()), "not watching for input");
    peer.write_all(&framed(&f)).unwrap();
    dp.process_rx();
    let second = 4 + f.len() as i32;
    assert_eq!(unread_bytes(&dp.backend.sock), second, "the second frame stays in the kernel");
    add_chain(&rx, 2, &[(0x12000, 2048, WRITE)]);
    dp.rx_notified();
    assert_eq!(used(&rx), vec![(0, 512), (1, 512), (2, 388)]);
    assert_eq!(dp.backend_interest(), Some(EventSet::empty()), "out of buffers again");
    assert_eq!(unread_bytes(&dp.backend.sock), second);
}

#[test]
fn hostile_tx_chains_are_completed_and_not_sent() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
    add_chain(&tx, 0, &[(0x10000, 100, WRITE)]); // writable only
    add_chain(&tx, 1, &[(0xfff_0000, 100, 0)]); // outside RAM
    add_chain(&tx, 2, &[(0x10000, u32::MAX, 0)]); // huge
    add_chain(&tx, 3, &[(0x10000, HDR_LEN as u32, 0)]); // header, no frame
    add_chain(&tx, 4, &[(0x10000, HDR_LEN as u32 + 1515, 0)]); // over MTU + 14
    add_chain(&tx, 5, &[(0x10000, 4, 0)]); // shorter than the header
                                           // A descriptor whose "next" is itself.
    tx.add_desc_chains(&[RawDescriptor::from(SplitDescriptor::new(0x10000, 200, NEXT, 6))], 6).unwrap();
    // A "next" index past the table: virtio-queue ends the chain there, so the one valid
    // descriptor before it is sent as a 188-byte frame (all of it within RAM).
    tx.add_desc_chains(&[RawDescriptor::from(SplitDescriptor::new(0x10000, 200, NEXT, 999))], 7).unwrap();
    dp.process_tx();
    assert_eq!(used(&tx).len(), 8, "every chain is returned");
    let sent = drain(&mut peer);
    assert_eq!(sent.len(), 4 + 188, "only the truncated chain was sent");
    assert_eq!(sent[..4], 188u32.to_be_bytes());
    assert!(dp.backend_alive());
}

#[test]
fn hostile_rx_chains_get_nothing_and_do_not_break_merging() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
    add_chain(&rx, 0, &[(0x10000, 1024, 0)]); // read-only
    add_chain(&rx, 1, &[(0xfff_0000, 1024, WRITE)]); // outside RAM
    add_chain(&rx, 2, &[(0x10000, u32::MAX, WRITE)]); // huge
    add_chain(&rx, 3, &[(0x10000, 8, WRITE)]); // smaller than the header
    add_chain(&rx, 4, &[(0x20000, 1024, WRITE)]);
    add_chain(&rx, 5, &[(0x21000, 1024, WRITE)]);
    let f = pattern(1500, 5);
    peer.write_all(&framed(&f)).unwrap();
    dp.process_rx();
    assert_eq!(used(&rx), vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 1024), (5, 488)]);
    let mut got = read_guest(&m, 0x20000, 1024);
    got.extend(read_guest(&m, 0x21000, 488));
    assert_eq!(got[10], 2, "num_buffers counts only the chains holding the frame");
    assert_eq!(&got[HDR_LEN..], &f[..]);

    // A looping writable chain holds the frame within RAM (its one buffer written over and over).
    rx.add_desc_chains(&[RawDescriptor::from(SplitDescriptor::new(0x30000, 64, WRITE | NEXT, 6))], 6).unwrap();
    peer.write_all(&framed(&pattern(100, 6))).unwrap();
    dp.rx_notified();
    assert_eq!(used(&rx).len(), 7);
}

#[test]
fn frames_over_the_mtu_from_the_backend_are_dropped() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, false, 1500);
    add_chain(&rx, 0, &[(0x10000, 4096, WRITE)]);
    peer.write_all(&framed(&pattern(1515, 1))).unwrap();
    peer.write_all(&framed(&pattern(60, 2))).unwrap();
    dp.process_rx();
    assert_eq!(used(&rx), vec![(0, 72)], "the oversized frame is skipped, the next delivered");
    assert!(dp.backend_alive());
}

#[test]
fn bad_length_from_the_backend_stops_it() {
    for bad in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
        let m = mem();
        let (rx, tx) =
            (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
        add_chain(&rx, 0, &[(0x10000, 4096, WRITE)]);
        peer.write_all(&bad.to_be_bytes()).unwrap();
        peer.write_all(&[0; 64]).unwrap();
        dp.process_rx();
        assert!(!dp.backend_alive());
        assert_eq!(dp.backend_interest(), None);
        assert!(used(&rx).is_empty());
        // TX goes on, dropping frames.
        add_chain(&tx, 0, &[(0x10000, 100, 0)]);
        dp.process_tx();
        assert_eq!(used(&tx), vec![(0, 0)]);
        assert!(drain(&mut peer).is_empty());
    }
}

#[test]
fn tx_completes_after_the_backend_closed() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
    drop(peer);
    for i in 0..3 {
        add_chain(&tx, i, &[(0x10000, 100, 0)]);
        dp.process_tx();
    }
    assert_eq!(used(&tx).len(), 3);
    assert!(!dp.backend_alive());
    // The hang-up seen by epoll, and RX after it: no panic, nothing used.
    add_chain(&rx, 0, &[(0x10000, 4096, WRITE)]);
    dp.backend_event(EventSet::IN | EventSet::HANG_UP);
    dp.rx_notified();
    assert!(used(&rx).is_empty());
}

#[test]
fn rx_after_hang_up_delivers_what_was_sent_then_stops() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut dp = datapath(&m, &rx, &tx, ours, true, 1500);
    peer.write_all(&framed(&pattern(60, 1))).unwrap();
    drop(peer);
    dp.backend_event(EventSet::IN | EventSet::HANG_UP);
    assert_eq!(dp.backend_interest(), None, "a hung-up socket is not watched (it would always be ready)");
    assert!(dp.backend_alive(), "its data is still to be delivered");
    add_chain(&rx, 0, &[(0x10000, 4096, WRITE)]);
    dp.rx_notified();
    assert_eq!(used(&rx), vec![(0, 72)]);
    assert!(!dp.backend_alive());
}

#[test]
fn a_full_socket_holds_tx_chains_in_the_queue() {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 21)]).unwrap();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let small: libc::c_int = 4096;
    // SAFETY: SO_SNDBUF takes one int.
    unsafe {
        libc::setsockopt(ours.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, (&small as *const libc::c_int).cast(), 4);
    }
    let mut dp = datapath(&m, &rx, &tx, ours, true, 65535);
    let frame = pattern(60000, 3);
    m.write_slice(&[0; HDR_LEN], GuestAddress(0x100000)).unwrap();
    m.write_slice(&frame, GuestAddress(0x100000 + HDR_LEN as u64)).unwrap();
    for i in 0..16 {
        add_chain(&tx, i, &[(0x100000, (HDR_LEN + frame.len()) as u32, 0)]);
    }
    dp.process_tx();
    let first = used(&tx).len();
    assert!(first < 16, "backpressure: {first} of 16 taken");
    assert!(dp.tx_blocked);
    assert_eq!(dp.backend_interest(), Some(EventSet::IN | EventSet::OUT));
    let mut out = Vec::new();
    for _ in 0..100_000 {
        out.extend(drain(&mut peer));
        dp.backend_event(EventSet::OUT);
        if used(&tx).len() == 16 && dp.backend.writer.pending() == 0 {
            break;
        }
    }
    out.extend(drain(&mut peer));
    assert_eq!(used(&tx).len(), 16);
    assert_eq!(out.len(), 16 * (4 + frame.len()));
    assert_eq!(&out[..4 + frame.len()], &framed(&frame)[..]);
}

#[test]
fn config_space_and_features() {
    let (ours, _peer) = UnixStream::pair().unwrap();
    let net = Net::new(ours, MAC, 1500).unwrap();
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let f = net.features();
    assert_eq!(f, VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF);
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0xdc, 0x05]);
    let (ours, _peer) = UnixStream::pair().unwrap();
    assert!(matches!(Net::new(ours, [1, 0, 0, 0, 0, 0], 1500), Err(NetError::BadMac(_))));
    let (ours, _peer) = UnixStream::pair().unwrap();
    assert!(matches!(Net::new(ours, MAC, 67), Err(NetError::BadMtu(67))));
}

/// Waits until the used ring has `n` entries.
fn wait_used(vq: &MockSplitQueue<GuestMemoryMmap>, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while used(vq).len() < n {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {n} used entries");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn device_thread_moves_frames_both_ways_and_survives_reset() {
    let m = mem();
    let (rx, tx) =
        (MockSplitQueue::create(&m, GuestAddress(RXQ), 16), MockSplitQueue::create(&m, GuestAddress(TXQ), 16));
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let mut net = Net::new(ours, MAC, 1500).unwrap();
    net.set_acked_features(net.features() | crate::devices::virtio::VIRTIO_F_VERSION_1);
    let events = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap()];
    let (rx_kick, tx_kick) = (events[0].try_clone().unwrap(), events[1].try_clone().unwrap());
    let interrupt = Arc::new(Interrupt::new().unwrap());
    let queues = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
    net.activate(ActiveQueues { mem: m.clone(), queues, events, interrupt: interrupt.clone() }).unwrap();

    // Backend -> guest: the frame waits in the socket until the guest gives a buffer.
    let f = pattern(200, 1);
    peer.write_all(&framed(&f)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    add_chain(&rx, 0, &[(0x10000, 2048, WRITE)]);
    rx_kick.write(1).unwrap();
    wait_used(&rx, 1);
    assert_eq!(&read_guest(&m, 0x10000 + HDR_LEN as u64, f.len()), &f);
    assert_ne!(interrupt.status() & INT_USED_RING, 0);

    // Guest -> backend.
    let g = pattern(300, 2);
    m.write_slice(&[0; HDR_LEN], GuestAddress(0x20000)).unwrap();
    m.write_slice(&g, GuestAddress(0x20000 + HDR_LEN as u64)).unwrap();
    add_chain(&tx, 0, &[(0x20000, (HDR_LEN + g.len()) as u32, 0)]);
    tx_kick.write(1).unwrap();
    wait_used(&tx, 1);
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; 4 + g.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, framed(&g));

    // A reset stops the thread and hands the backend (socket and framing state) back.
    net.reset();
    assert!(net.backend.is_some(), "the backend survives the reset");
    assert!(net.running.is_none());
}
