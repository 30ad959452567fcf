//! virtio-blk requests from fuzzer-made descriptor chains over a small disk file.
#![no_main]

mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::{Block, DiskConfig, DiskFormat};

fn disk() -> &'static Block {
    static D: OnceLock<Block> = OnceLock::new();
    D.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("blk-fuzz-{}.raw", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(64 * 1024).unwrap();
        let cfg = DiskConfig { path: path.clone(), format: DiskFormat::Raw, read_only: false, id: "fuzz".into() };
        let d = Block::new(&cfg).unwrap();
        let _ = std::fs::remove_file(&path); // the open file stays usable
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let (mem, mut q) = common::queue_from(data);
    disk().serve_queue(&mut q, &mem);
});
