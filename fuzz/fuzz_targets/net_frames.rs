//! virtio-net: TX chains and RX buffers from fuzzer-made queues, and the same bytes as the
//! length-prefixed stream from the backend (partial frames, bad lengths, oversized frames).
#![no_main]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::net::{Backend, Datapath};
use vmm::devices::virtio::Interrupt;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let (mem, txq) = common::queue_from(data);
    let (_, rxq) = common::queue_from(data.get(64..).unwrap_or_default());
    let (ours, mut peer) = UnixStream::pair().unwrap();
    // The backend's stream: the input read backwards, so it differs from the queue layout.
    // Capped well below the socket buffer so the write cannot block.
    let stream: Vec<u8> = data.iter().rev().take(32 * 1024).copied().collect();
    peer.write_all(&stream).unwrap();
    // Either the backend hung up, or it stays connected until the end of the run.
    let _peer = (flags & 1 == 0).then_some(peer);
    let mtu = if flags & 2 != 0 { 1500 } else { 65535 };
    let interrupt = Arc::new(Interrupt::new().unwrap());
    let mut dp = Datapath::new(mem, rxq, txq, interrupt, Backend::new(ours), flags & 4 != 0, mtu);
    dp.process_tx();
    dp.process_rx();
    dp.rx_notified();
    dp.process_tx();
});
