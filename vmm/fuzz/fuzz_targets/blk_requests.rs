//! virtio-blk requests from fuzzer-made descriptor chains over a small disk file.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::{serve, RawDisk};

fn disk() -> &'static RawDisk {
    static D: OnceLock<RawDisk> = OnceLock::new();
    D.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("blk-fuzz-{}.raw", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(64 * 1024).unwrap();
        let d = RawDisk::open(&path, false).unwrap();
        let _ = std::fs::remove_file(&path); // the open file stays usable
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let (mem, mut q) = common::queue_from(data);
    let mut buf = vec![0u8; 64 * 1024];
    serve(disk(), &[0u8; 20], &mut q, &mem, &mut buf);
});
