//! Property tests: random sparse raw disks go through the qcow2 and VHD writers and qemu-img
//! (the oracle) must read back exactly the same bytes and size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;

use super::qcow2::{tests::assert_qemu_agrees, write_qcow2, Qcow2Options};
use super::vhd::write_vhd;

#[derive(Debug, Clone)]
enum Fill {
    Random(u64),
    Pattern(u8),
    /// Written zeros: allocated in the raw file, but must not cost space in the image.
    Zeros,
}

#[derive(Debug, Clone)]
struct Disk {
    sectors: u64,
    /// (offset, length, fill); offsets beyond the end are clamped.
    writes: Vec<(u64, u64, Fill)>,
    /// Puts data in the last sector too.
    data_at_end: bool,
}

fn disk() -> impl Strategy<Value = Disk> {
    let fill = prop_oneof![any::<u64>().prop_map(Fill::Random), any::<u8>().prop_map(Fill::Pattern), Just(Fill::Zeros)];
    (1u64..=24 * 1024, prop::collection::vec((0u64..12 << 20, 1u64..300_000, fill), 0..12), any::<bool>())
        .prop_map(|(sectors, writes, data_at_end)| Disk { sectors, writes, data_at_end })
}

fn make_raw(d: &Disk, p: &Path) {
    let f = File::create(p).unwrap();
    let len = d.sectors * 512;
    f.set_len(len).unwrap();
    for (off, n, fill) in &d.writes {
        let off = off % len;
        let n = (*n).min(len - off) as usize;
        let buf: Vec<u8> = match fill {
            Fill::Random(seed) => {
                let mut x = *seed | 1;
                (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            }
            Fill::Pattern(b) => (0..n).map(|i| if i % 7 == 0 { *b } else { b.wrapping_add(1) }).collect(),
            Fill::Zeros => vec![0; n],
        };
        f.write_all_at(&buf, off).unwrap();
    }
    if d.data_at_end {
        f.write_all_at(b"the very end", len - 12.min(len)).unwrap();
    }
}

fn variants() -> impl Strategy<Value = (bool, &'static str)> {
    prop::sample::select(vec![
        (true, ""),
        (true, "compression_type=zstd"),
        (true, "cluster_size=4k"),
        (true, "compat=0.10,cluster_size=512"),
        (false, ""),
        (false, "cluster_size=1M"),
        (false, "preallocation=metadata"),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_sparse_disks_round_trip(d in disk(), (compress, o) in variants(), threads in 1usize..4) {
        let dir = std::env::temp_dir().join(format!("microdib-roundtrip-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("disk.raw");
        make_raw(&d, &raw);

        let img = dir.join("disk.qcow2");
        let mut opts = Qcow2Options::parse(compress, Some(o)).unwrap();
        opts.threads = threads;
        let out = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&img).unwrap();
        let s = write_qcow2(&File::open(&raw).unwrap(), &out, &opts, &mut |_| Ok(())).unwrap();
        prop_assert_eq!(s.virtual_size, d.sectors * 512);
        assert_qemu_agrees(&raw, &img, "qcow2");

        let vhd = dir.join("disk.vhd");
        let mut w = std::io::BufWriter::new(File::create(&vhd).unwrap());
        let v = write_vhd(&File::open(&raw).unwrap(), &mut w, &mut |_| Ok(())).unwrap();
        drop(w);
        prop_assert_eq!(v.virtual_size, d.sectors * 512);
        assert_qemu_agrees(&raw, &vhd, "vpc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
