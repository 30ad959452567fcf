//! virtio-vsock TX packets from fuzzer-made chains, then RX processing with the same memory.
#![no_main]

mod common;

use std::os::unix::net::UnixListener;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::muxer::{GuestQueues, HostSide, Muxer};
use vmm_sys_util::epoll::Epoll;

fuzz_target!(|data: &[u8]| {
    let (mem, mut txq) = common::queue_from(data);
    let (_, mut rxq) = common::queue_from(data.get(64..).unwrap_or_default());
    let dir = std::env::temp_dir().join(format!("vsock-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("v");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let host = HostSide { guest_cid: 3, listener, uds_path: path, epoll: Epoll::new().unwrap() };
    let mut m = Muxer::new(host).unwrap();
    let mut q = GuestQueues::new(&mem, &mut rxq, &mut txq);
    m.process_tx(&mut q);
    m.process_rx(&mut q);
    m.process_tx(&mut q);
});
