//! qcow2 from the raw target disk, written in-process instead of `qemu-img convert`.
//!
//! Layout, chosen so the file is written front to back in one pass: header cluster, then data
//! (compressed clusters packed byte after byte, plain clusters aligned), then the L2 tables,
//! the L1 table, the refcount table and its blocks, and finally the header. qcow2 lets
//! metadata live anywhere; this is what lets compression run on every core with output in order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;

use super::parallel::ordered_map;
use super::sparse::{data_extents, is_zero, read_block};

const MAGIC: u32 = 0x5146_49fb;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const V3_HEADER_LENGTH: u32 = 112;
/// Incompatible feature bit: the header's compression_type field is not zlib.
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const COMPAT_LAZY_REFCOUNTS: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2Compression {
    /// Raw deflate with a 4 KiB window: what every qemu reads.
    Deflate,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    Off,
    /// Every cluster gets a host cluster; unwritten ones stay holes in the file.
    Metadata,
    Falloc,
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Options {
    pub compress: bool,
    pub compression: Qcow2Compression,
    pub cluster_bits: u32,
    /// 2 (compat=0.10) or 3 (compat=1.1, the default).
    pub version: u32,
    pub preallocation: Preallocation,
    pub lazy_refcounts: bool,
    pub threads: usize,
}

impl Default for Qcow2Options {
    fn default() -> Self {
        Qcow2Options {
            compress: true,
            compression: Qcow2Compression::Deflate,
            cluster_bits: 16,
            version: 3,
            preallocation: Preallocation::Off,
            lazy_refcounts: false,
            threads: super::parallel::threads(),
        }
    }
}

/// The `-o` keys microdib honours; anything else is refused rather than silently ignored.
const KNOWN_OPTIONS: &str = "compat, cluster_size, compression_type, preallocation, lazy_refcounts, refcount_bits";

impl Qcow2Options {
    /// virt-dib's `-c unless -u` plus `--qemu-img-options` in qemu-img's `-o` syntax
    /// (`key=value,key=value`, `,,` for a literal comma).
    pub fn parse(compress: bool, options: Option<&str>) -> Result<Qcow2Options, String> {
        let mut o = Qcow2Options { compress, ..Default::default() };
        for (key, value) in split_qemu_options(options.unwrap_or(""))? {
            let bad = || format!("--qemu-img-options: invalid value ‘{value}’ for qcow2 option ‘{key}’");
            match key.as_str() {
                "compat" => {
                    o.version = match value.as_str() {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => return Err(bad()),
                    }
                }
                "cluster_size" => {
                    let n = parse_size(&value).ok_or_else(bad)?;
                    if !n.is_power_of_two() || !(512..=2 << 20).contains(&n) {
                        return Err(format!(
                            "--qemu-img-options: cluster_size must be a power of two between 512 and 2M, not {value}"
                        ));
                    }
                    o.cluster_bits = n.trailing_zeros();
                }
                "compression_type" => {
                    o.compression = match value.as_str() {
                        "zlib" => Qcow2Compression::Deflate,
                        "zstd" => Qcow2Compression::Zstd,
                        _ => return Err(bad()),
                    }
                }
                "preallocation" => {
                    o.preallocation = match value.as_str() {
                        "off" => Preallocation::Off,
                        "metadata" => Preallocation::Metadata,
                        "falloc" => Preallocation::Falloc,
                        "full" => Preallocation::Full,
                        _ => return Err(bad()),
                    }
                }
                "lazy_refcounts" => o.lazy_refcounts = parse_bool(&value).ok_or_else(bad)?,
                "refcount_bits" => {
                    if value != "16" {
                        return Err(format!("--qemu-img-options: microdib writes refcount_bits=16 only, not {value}"));
                    }
                }
                _ => {
                    return Err(format!(
                        "--qemu-img-options: unsupported qcow2 option ‘{key}’ (microdib knows {KNOWN_OPTIONS})"
                    ))
                }
            }
        }
        if o.version == 2 && o.lazy_refcounts {
            return Err("--qemu-img-options: lazy_refcounts needs compat=1.1".to_owned());
        }
        if o.version == 2 && o.compression == Qcow2Compression::Zstd {
            return Err("--qemu-img-options: compression_type=zstd needs compat=1.1".to_owned());
        }
        if o.compress && o.preallocation != Preallocation::Off {
            return Err("--qemu-img-options: preallocation cannot be combined with compression (use -u)".to_owned());
        }
        Ok(o)
    }
}

fn split_qemu_options(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                cur.push(',');
            }
            ',' => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    items.push(cur);
    items
        .into_iter()
        .filter(|i| !i.is_empty())
        .map(|i| match i.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_owned(), v.trim().to_owned())),
            None => Err(format!("--qemu-img-options: ‘{i}’ is not key=value")),
        })
        .collect()
}

fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    let shift = match unit {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// What a conversion read and wrote.
#[derive(Debug, Clone, Copy)]
pub struct Qcow2Summary {
    pub virtual_size: u64,
    pub bytes_out: u64,
}

/// One cluster after the workers are done with it.
enum Cluster {
    Zero,
    Plain(Vec<u8>),
    Compressed(Vec<u8>),
}

/// A run of consecutive guest clusters read in one go.
struct Run {
    first: u64,
    data: Vec<u8>,
}

/// Writes `src` (a raw disk image) as qcow2 into `out`, an empty file. `progress` gets the
/// number of source bytes processed so far and stops the conversion by returning an error.
pub fn write_qcow2(
    src: &File,
    out: &File,
    opts: &Qcow2Options,
    progress: &mut (dyn FnMut(u64) -> io::Result<()> + Send),
) -> io::Result<Qcow2Summary> {
    let len = src.metadata()?.len();
    let virtual_size = len.div_ceil(512) * 512;
    let cb = opts.cluster_bits;
    let cs = 1u64 << cb;
    let csize = cs as usize;
    let clusters = virtual_size.div_ceil(cs);
    let mut table = HostLayout::new(out, opts, clusters)?;

    let extents = data_extents(src, len)?;
    let per_run = ((1u64 << 20) / cs).max(1);
    let runs = extents
        .iter()
        .flat_map(|&(s, e)| {
            let (first, end) = (s / cs, e.div_ceil(cs));
            (first..end).step_by(per_run as usize).map(move |c| (c, (c + per_run).min(end)))
        })
        // Extents can share a cluster at their edges: never read a cluster twice.
        .scan(0u64, |next, (a, b)| {
            let a = a.max(*next);
            *next = (*next).max(b);
            Some((a, b))
        })
        .filter(|(a, b)| a < b)
        .map(|(a, b)| {
            let mut data = vec![0u8; ((b - a) * cs) as usize];
            read_block(src, a * cs, &mut data).map(|()| Run { first: a, data })
        });

    let (compress, kind) = (opts.compress, opts.compression);
    let work = |run: Run| -> (u64, Vec<Cluster>) {
        let cl = run
            .data
            .chunks(csize)
            .map(|c| match () {
                _ if is_zero(c) => Cluster::Zero,
                _ if compress => match compress_cluster(kind, c) {
                    Some(z) => Cluster::Compressed(z),
                    None => Cluster::Plain(c.to_vec()),
                },
                _ => Cluster::Plain(c.to_vec()),
            })
            .collect();
        (run.first, cl)
    };
    let mut done = 0u64;
    ordered_map(opts.threads, 4 * opts.threads, runs, work, |(first, cl): (u64, Vec<Cluster>)| {
        for (i, c) in cl.into_iter().enumerate() {
            table.put(first + i as u64, c)?;
        }
        done = ((first + per_run) * cs).min(len);
        progress(done)
    })?;
    let bytes_out = table.finish(virtual_size)?;
    progress(len)?;
    Ok(Qcow2Summary { virtual_size, bytes_out })
}

thread_local! {
    static DEFLATE: std::cell::RefCell<Option<flate2::Compress>> = const { std::cell::RefCell::new(None) };
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// A compressed cluster, or None when it would not be smaller than the cluster (qemu then
/// stores it plain too).
fn compress_cluster(kind: Qcow2Compression, data: &[u8]) -> Option<Vec<u8>> {
    let limit = data.len() - 1;
    match kind {
        Qcow2Compression::Deflate => DEFLATE.with(|cell| {
            let mut cell = cell.borrow_mut();
            // qemu inflates with a 2^12 window: a larger one would make clusters it cannot read.
            let c = cell
                .get_or_insert_with(|| flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, 12));
            c.reset();
            // Room for incompressible data (zlib's deflateBound): zlib-rs 0.6 panics when the
            // output fills up mid-block instead of reporting it.
            let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 128);
            match c.compress_vec(data, &mut out, flate2::FlushCompress::Finish) {
                Ok(flate2::Status::StreamEnd) if out.len() <= limit => Some(out),
                _ => None,
            }
        }),
        Qcow2Compression::Zstd => ZSTD.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                // Level 3 is zstd's default and what qemu uses.
                *cell = zstd::bulk::Compressor::new(3).ok();
            }
            let c = cell.as_mut()?;
            let mut out = vec![0u8; limit];
            let n = c.compress_to_buffer(data, &mut out).ok()?;
            out.truncate(n);
            Some(out)
        }),
    }
}

/// Where clusters land in the output file and how often each host cluster is referenced.
struct HostLayout<'a> {
    out: io::BufWriter<&'a File>,
    file: &'a File,
    opts: Qcow2Options,
    cb: u32,
    /// Next free byte of the data area.
    pos: u64,
    /// Written position of `out` (to pad or seek only when needed).
    written: u64,
    refcounts: Vec<u16>,
    l2: BTreeMap<u64, Vec<u64>>,
    clusters: u64,
}

impl<'a> HostLayout<'a> {
    fn new(file: &'a File, opts: &Qcow2Options, clusters: u64) -> io::Result<Self> {
        let cs = 1u64 << opts.cluster_bits;
        let mut out = io::BufWriter::with_capacity(4 << 20, file);
        out.seek(SeekFrom::Start(cs))?;
        let mut layout = HostLayout {
            out,
            file,
            opts: opts.clone(),
            cb: opts.cluster_bits,
            pos: cs,
            written: cs,
            refcounts: vec![1],
            l2: BTreeMap::new(),
            clusters,
        };
        if opts.preallocation != Preallocation::Off {
            // Guest cluster i lives at host cluster 1 + i, written or not.
            layout.pos = cs * (1 + clusters);
            for i in 0..clusters {
                layout.set_l2(i, (cs * (1 + i)) | COPIED);
            }
            layout.refcounts.resize((1 + clusters) as usize, 1);
        }
        Ok(layout)
    }

    fn cs(&self) -> u64 {
        1 << self.cb
    }

    fn set_l2(&mut self, guest: u64, entry: u64) {
        let per = self.cs() / 8;
        let t = self.l2.entry(guest / per).or_insert_with(|| vec![0; per as usize]);
        t[(guest % per) as usize] = entry;
    }

    fn write_at(&mut self, at: u64, data: &[u8]) -> io::Result<()> {
        if at != self.written {
            self.out.seek(SeekFrom::Start(at))?;
        }
        self.out.write_all(data)?;
        self.written = at + data.len() as u64;
        Ok(())
    }

    fn add_ref(&mut self, cluster: u64) {
        let i = cluster as usize;
        if self.refcounts.len() <= i {
            self.refcounts.resize(i + 1, 0);
        }
        self.refcounts[i] += 1;
    }

    fn put(&mut self, guest: u64, c: Cluster) -> io::Result<()> {
        let cs = self.cs();
        match c {
            Cluster::Zero => Ok(()),
            Cluster::Plain(data) if self.opts.preallocation != Preallocation::Off => {
                self.write_at(cs * (1 + guest), &data)
            }
            Cluster::Plain(data) => {
                let at = self.pos.next_multiple_of(cs);
                self.write_at(at, &data)?;
                self.pos = at + cs;
                self.add_ref(at >> self.cb);
                self.set_l2(guest, at | COPIED);
                Ok(())
            }
            Cluster::Compressed(data) => {
                let len = data.len() as u64;
                let mut at = self.pos;
                // A host cluster holds at most u16::MAX references: start a new one before that.
                let last = (at + len - 1) >> self.cb;
                if (at >> self.cb..=last).any(|c| self.refcounts.get(c as usize).is_some_and(|&r| r == u16::MAX)) {
                    at = at.next_multiple_of(cs);
                }
                if at > self.written {
                    // Unused bytes inside a referenced cluster: zeros, not a seek past EOF later.
                    let pad = vec![0u8; (at - self.written) as usize];
                    let w = self.written;
                    self.write_at(w, &pad)?;
                }
                self.write_at(at, &data)?;
                self.pos = at + len;
                for c in at >> self.cb..=(at + len - 1) >> self.cb {
                    self.add_ref(c);
                }
                let x = 62 - (self.cb - 8);
                let sectors = ((at + len - 1) >> 9) - (at >> 9);
                self.set_l2(guest, COMPRESSED | (sectors << x) | at);
                Ok(())
            }
        }
    }

    /// Writes L2 tables, the L1 table, the refcounts and the header; returns the file size.
    fn finish(mut self, virtual_size: u64) -> io::Result<u64> {
        let cs = self.cs();
        let mut end = self.pos.next_multiple_of(cs);
        if self.opts.preallocation == Preallocation::Full {
            self.fill_unwritten_with_zeros()?;
        }
        let l1_entries = self.clusters.div_ceil(cs / 8);
        let mut l1 = vec![0u64; l1_entries as usize];
        let tables = std::mem::take(&mut self.l2);
        for (index, table) in &tables {
            self.write_at(end, &be_u64s(table))?;
            self.add_ref(end >> self.cb);
            if let Some(e) = l1.get_mut(*index as usize) {
                *e = end | COPIED;
            }
            end += cs;
        }
        let l1_offset = end;
        let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
        self.write_at(end, &be_u64s(&l1))?;
        for c in 0..l1_clusters {
            self.add_ref((end >> self.cb) + c);
        }
        end += l1_clusters * cs;

        // Refcount blocks must also count the table and themselves: iterate to a fixed point.
        let per_block = cs / 2;
        let first = end >> self.cb;
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let b = (first + blocks + table_clusters).div_ceil(per_block);
            let t = (b * 8).div_ceil(cs);
            if (b, t) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (b, t);
        }
        let table_offset = end;
        let blocks_offset = end + table_clusters * cs;
        for c in first..first + table_clusters + blocks {
            self.add_ref(c);
        }
        let total = first + table_clusters + blocks;
        self.refcounts.resize(total as usize, 0);
        let rt: Vec<u64> = (0..blocks).map(|j| blocks_offset + j * cs).collect();
        self.write_at(table_offset, &be_u64s(&rt))?;
        let refcounts = std::mem::take(&mut self.refcounts);
        for (j, chunk) in refcounts.chunks(per_block as usize).enumerate() {
            let bytes: Vec<u8> = chunk.iter().flat_map(|r| r.to_be_bytes()).collect();
            self.write_at(blocks_offset + j as u64 * cs, &bytes)?;
        }
        let header = self.header(virtual_size, l1_entries, l1_offset, table_offset, table_clusters);
        self.write_at(0, &header)?;
        self.out.flush()?;
        let size = total * cs;
        self.file.set_len(size)?;
        if self.opts.preallocation == Preallocation::Falloc {
            let data_len = self.clusters * cs;
            // SAFETY: fallocate on our own descriptor; mode 0 allocates without changing data.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, cs as libc::off_t, data_len as libc::off_t) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(size)
    }

    /// preallocation=full: every guest cluster's host cluster holds real (zero) bytes.
    fn fill_unwritten_with_zeros(&mut self) -> io::Result<()> {
        let cs = self.cs();
        self.out.flush()?;
        let data_end = cs * (1 + self.clusters);
        let extents = data_extents(self.file, data_end)?;
        let zeros = vec![0u8; cs as usize];
        let mut at = cs;
        for (s, e) in extents.into_iter().chain([(data_end, data_end)]) {
            let s = s.max(cs);
            while at < s {
                let n = (s - at).min(cs);
                self.write_at(at, &zeros[..n as usize])?;
                at += n;
            }
            at = at.max(e);
        }
        Ok(())
    }

    fn header(&self, size: u64, l1_entries: u64, l1: u64, rt: u64, rt_clusters: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(V3_HEADER_LENGTH as usize + 8);
        h.extend(MAGIC.to_be_bytes());
        h.extend(self.opts.version.to_be_bytes());
        h.extend(0u64.to_be_bytes()); // backing file offset
        h.extend(0u32.to_be_bytes()); // backing file name length
        h.extend(self.cb.to_be_bytes());
        h.extend(size.to_be_bytes());
        h.extend(0u32.to_be_bytes()); // no encryption
        h.extend((l1_entries as u32).to_be_bytes());
        h.extend(l1.to_be_bytes());
        h.extend(rt.to_be_bytes());
        h.extend((rt_clusters as u32).to_be_bytes());
        h.extend(0u32.to_be_bytes()); // snapshots
        h.extend(0u64.to_be_bytes());
        if self.opts.version >= 3 {
            let zstd = self.opts.compression == Qcow2Compression::Zstd;
            h.extend((if zstd { INCOMPAT_COMPRESSION_TYPE } else { 0 }).to_be_bytes());
            h.extend((if self.opts.lazy_refcounts { COMPAT_LAZY_REFCOUNTS } else { 0 }).to_be_bytes());
            h.extend(0u64.to_be_bytes()); // autoclear
            h.extend(4u32.to_be_bytes()); // refcount_order: 16-bit refcounts
            h.extend(V3_HEADER_LENGTH.to_be_bytes());
            h.push(u8::from(zstd));
            h.resize(V3_HEADER_LENGTH as usize, 0);
            h.extend([0u8; 8]); // end of header extensions
        }
        h
    }
}

fn be_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("microdib-qcow2-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn convert(raw: &Path, out: &Path, opts: &Qcow2Options) -> Qcow2Summary {
        let src = File::open(raw).unwrap();
        let dst = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(out).unwrap();
        write_qcow2(&src, &dst, opts, &mut |_| Ok(())).unwrap()
    }

    fn qemu_img(args: &[&str]) -> String {
        let o = Command::new("qemu-img").args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "qemu-img {args:?}: {text}");
        text
    }

    /// The oracle: qemu-img finds no errors or leaks and reads the same bytes and size as the raw.
    pub(crate) fn assert_qemu_agrees(raw: &Path, img: &Path, fmt: &str) {
        let size = std::fs::metadata(raw).unwrap().len();
        let (raw, img) = (raw.to_str().unwrap(), img.to_str().unwrap());
        let info = qemu_img(&["info", "-f", fmt, "--output=json", img]);
        assert!(info.contains(&format!("\"virtual-size\": {size},")), "{info}");
        if fmt == "qcow2" {
            let check = qemu_img(&["check", "-f", "qcow2", img]);
            assert!(check.contains("No errors were found"), "{check}");
        }
        qemu_img(&["compare", "-f", "raw", "-F", fmt, raw, img]);
    }

    #[test]
    fn options_follow_qemu_img() {
        let o = Qcow2Options::parse(true, Some("compat=0.10,cluster_size=128k")).unwrap();
        assert_eq!((o.version, o.cluster_bits, o.compress), (2, 17, true));
        let o =
            Qcow2Options::parse(false, Some("compression_type=zstd,preallocation=falloc,lazy_refcounts=on")).unwrap();
        assert_eq!(
            (o.compression, o.preallocation, o.lazy_refcounts),
            (Qcow2Compression::Zstd, Preallocation::Falloc, true)
        );
        for (bad, says) in [
            ("backing_file=x", "unsupported qcow2 option ‘backing_file’"),
            ("cluster_size=3000", "power of two"),
            ("compat=2", "invalid value ‘2’"),
            ("compat=0.10,compression_type=zstd", "needs compat=1.1"),
            ("preallocation=full", "cannot be combined"),
            ("refcount_bits=8", "refcount_bits=16 only"),
            ("compat", "not key=value"),
        ] {
            let e = Qcow2Options::parse(true, Some(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(split_qemu_options("a=b,,c,d=e").unwrap(), [("a".into(), "b,c".into()), ("d".into(), "e".into())]);
    }

    #[test]
    fn every_variant_passes_qemu_img_check_and_compare() {
        let d = tmpdir("variants");
        let raw = d.join("disk.raw");
        let f = File::create(&raw).unwrap();
        // 40 MiB + 1.5 KiB: not a multiple of any cluster size; data, text, zeros, a tail.
        f.set_len((40 << 20) + 1536).unwrap();
        let text: Vec<u8> = (0..3 << 20).map(|i: u32| b"microdib qcow2 "[(i % 15) as usize]).collect();
        f.write_all_at(&text, 1 << 20).unwrap();
        let noise: Vec<u8> = (0..2u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        f.write_all_at(&noise, 9 << 20).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 20 << 20).unwrap();
        f.write_all_at(b"end", (40 << 20) + 1530).unwrap();
        drop(f);
        for (i, (compress, o)) in [
            (true, ""),
            (true, "compression_type=zstd"),
            (true, "compat=0.10"),
            (true, "cluster_size=512"),
            (true, "cluster_size=2M"),
            (false, ""),
            (false, "cluster_size=4k,lazy_refcounts=on"),
            (false, "preallocation=metadata"),
            (false, "preallocation=falloc"),
            (false, "preallocation=full,compat=0.10"),
        ]
        .into_iter()
        .enumerate()
        {
            let opts = Qcow2Options::parse(compress, Some(o)).unwrap();
            let img = d.join(format!("{i}.qcow2"));
            let s = convert(&raw, &img, &opts);
            assert_qemu_agrees(&raw, &img, "qcow2");
            let info = qemu_img(&["info", "--output=json", img.to_str().unwrap()]);
            assert!(info.contains(&format!("\"virtual-size\": {}", (40 << 20) + 1536)), "{info}");
            let compat = if o.contains("0.10") { "0.10" } else { "1.1" };
            assert!(info.contains(&format!("\"compat\": \"{compat}\"")), "{o}: {info}");
            if o.contains("zstd") {
                assert!(info.contains("\"compression-type\": \"zstd\""), "{info}");
            }
            if compress {
                // Data compresses to under 3 MiB; metadata is five clusters (header, L2, L1, refcounts).
                let limit = (3 << 20) + 5 * (1u64 << opts.cluster_bits);
                assert!(s.bytes_out < limit, "{o}: {} bytes", s.bytes_out);
            }
            if o.contains("full") {
                assert!(s.bytes_out > 40 << 20);
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
