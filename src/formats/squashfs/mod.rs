//! A streaming, multi-threaded squashfs 4.0 writer: a tar stream of the image's root file
//! system in, a squashfs image (as the Linux kernel reads it) out.
//!
//! File data is cut into blocks as the tar stream is read, compressed on every core by
//! [`crate::formats::parallel::ordered_map`] and written in order, so memory stays bounded
//! whatever the file sizes; only the tree of inodes is kept until the tables are written at
//! the end. Tail ends are packed into fragment blocks, all-zero blocks become holes, and
//! identical files share their data (written once: a repeat is truncated away).

mod compress;
mod dir;
mod finish;
mod inode;
mod metadata;
mod reader;
mod tables;
mod tree;
mod xattr;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::rc::Rc;

use compress::Compressor;
use finish::Run;
use reader::{Counting, Input, Job, State};
use tables::{
    Out, Superblock, FLAG_ALWAYS_FRAGMENTS, FLAG_COMPRESSOR_OPTIONS, FLAG_DUPLICATES, FLAG_EXPORTABLE, FLAG_NO_XATTRS,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquashfsCompression {
    /// xz, preset 6, dictionary = block size (mksquashfs `-comp xz`).
    Xz,
    /// zstd at this level.
    Zstd(i32),
    /// zlib at this level (1..=9).
    Gzip(u32),
}

#[derive(Debug, Clone)]
pub struct SquashfsOptions {
    pub compression: SquashfsCompression,
    /// A power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    pub threads: usize,
    /// Directories (relative to the root) kept empty: e.g. `sys`, `proc`, `dev`.
    pub exclude_contents_of: Vec<String>,
    /// The superblock's creation time.
    pub mkfs_time: u32,
}

impl SquashfsCompression {
    /// `xz`, `zstd[:LEVEL]` (level 3 by default: fast, unlike mksquashfs's 15) or
    /// `gzip[:LEVEL]` (9 by default, as mksquashfs).
    pub fn parse(s: &str) -> Result<SquashfsCompression, String> {
        let bad = || format!("squashfs compression must be xz, zstd[:LEVEL] (1-22) or gzip[:LEVEL] (1-9), not ‘{s}’");
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l.parse::<i32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        match (name, level) {
            ("xz", None) => Ok(SquashfsCompression::Xz),
            ("zstd", l) if (1..=22).contains(&l.unwrap_or(3)) => Ok(SquashfsCompression::Zstd(l.unwrap_or(3))),
            ("gzip", l) if (1..=9).contains(&l.unwrap_or(9)) => Ok(SquashfsCompression::Gzip(l.unwrap_or(9) as u32)),
            _ => Err(bad()),
        }
    }
}

impl Default for SquashfsOptions {
    fn default() -> Self {
        SquashfsOptions {
            compression: SquashfsCompression::Xz,
            block_size: 131072,
            threads: crate::formats::parallel::threads(),
            exclude_contents_of: Vec::new(),
            mkfs_time: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquashfsSummary {
    pub inodes: u32,
    /// File data read from the stream (holes of sparse files included).
    pub bytes_in: u64,
    /// Size of the image file.
    pub bytes_out: u64,
}

/// A compressed (or stored) block on its way to the sink.
enum Stored {
    /// An all-zero data block: not written, size 0 in the block list.
    Hole,
    Raw(Vec<u8>),
    Packed(Vec<u8>),
}

enum Done {
    Block(Stored),
    FileEnd { dup: bool },
    Fragment(Stored),
}

const UNCOMPRESSED_DATA: u32 = 1 << 24;

fn compress(comp: &Compressor, data: Vec<u8>) -> io::Result<Stored> {
    Ok(match comp.compress(&data)? {
        Some(packed) => Stored::Packed(packed),
        None => Stored::Raw(data),
    })
}

fn work(comp: &Compressor, job: Job) -> io::Result<Done> {
    Ok(match job {
        Job::Block(data) if crate::formats::sparse::is_zero(&data) => Done::Block(Stored::Hole),
        Job::Block(data) => Done::Block(compress(comp, data)?),
        Job::FileEnd { dup } => Done::FileEnd { dup },
        Job::Fragment(data) => Done::Fragment(compress(comp, data)?),
    })
}

/// Writes blocks in stream order and records where they went.
struct Sink<'o, 'f> {
    out: &'o mut Out<'f>,
    start: Option<u64>,
    sizes: Vec<u32>,
    holes: u64,
    runs: Vec<Run>,
    fragments: Vec<(u64, u32)>,
}

impl Sink<'_, '_> {
    /// Appends a stored block; returns (offset, size word with the uncompressed bit).
    fn write(&mut self, block: Stored) -> io::Result<Option<(u64, u32)>> {
        let (bytes, flag) = match &block {
            Stored::Hole => return Ok(None),
            Stored::Raw(b) => (b, UNCOMPRESSED_DATA),
            Stored::Packed(b) => (b, 0),
        };
        // Blocks are at most 1 MiB.
        let size = bytes.len() as u32 | flag;
        Ok(Some((self.out.append(bytes)?, size)))
    }

    fn take(&mut self, done: io::Result<Done>) -> io::Result<()> {
        match done? {
            Done::Block(block) => match self.write(block)? {
                Some((at, size)) => {
                    self.start.get_or_insert(at);
                    self.sizes.push(size);
                }
                None => {
                    self.holes += 1;
                    self.sizes.push(0);
                }
            },
            Done::FileEnd { dup } => {
                let start = self.start.take();
                let sizes = std::mem::take(&mut self.sizes);
                let holes = std::mem::take(&mut self.holes);
                if dup {
                    // The same bytes are already in the image: drop this copy, the next
                    // block overwrites it and the final length cuts off any rest.
                    if let Some(s) = start {
                        self.out.pos = s;
                    }
                } else {
                    self.runs.push(Run { start: start.unwrap_or(self.out.pos), sizes, sparse_blocks: holes });
                }
            }
            Done::Fragment(block) => {
                let (at, size) = match block {
                    Stored::Hole => (self.out.pos, UNCOMPRESSED_DATA),
                    b => self.write(b)?.unwrap_or((self.out.pos, UNCOMPRESSED_DATA)),
                };
                self.fragments.push((at, size));
            }
        }
        Ok(())
    }
}

/// Writes the image to `out` (a fresh, empty file; you may seek in it and set its length).
/// `progress` is called with the number of tar-stream bytes consumed so far, now and then.
pub fn write_from_tar(
    tar: impl Read,
    out: &File,
    opts: &SquashfsOptions,
    progress: &mut dyn FnMut(u64),
) -> io::Result<SquashfsSummary> {
    let bs = opts.block_size;
    if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("squashfs block size {bs} is not a power of two from 4 KiB to 1 MiB"),
        ));
    }
    let comp = Compressor::new(opts.compression, bs);
    out.set_len(0)?;
    let mut o = Out { file: out, pos: tables::SUPERBLOCK_SIZE };
    // Tail ends of files bigger than a block go to fragments too (mksquashfs -always-use-fragments).
    let mut flags = FLAG_EXPORTABLE | FLAG_ALWAYS_FRAGMENTS;
    if let Some(options) = comp.options() {
        // Read before the decompressor exists: always stored uncompressed.
        let mut block = (options.len() as u16 | 0x8000).to_le_bytes().to_vec();
        block.extend_from_slice(&options);
        o.append(&block)?;
        flags |= FLAG_COMPRESSOR_OPTIONS;
    }

    let count = Rc::new(Cell::new(0u64));
    let mut archive =
        tar::Archive::new(Counting { inner: crate::formats::tar_guard::TarGuard::new(tar), count: count.clone() });
    let entries = archive.entries()?;
    let mut st = State::new(bs as usize, &opts.exclude_contents_of, opts.mkfs_time)?;
    let mut sink =
        Sink { out: &mut o, start: None, sizes: Vec::new(), holes: 0, runs: Vec::new(), fragments: Vec::new() };
    {
        let input = Input::new(entries, &mut st, count.clone(), progress);
        let comp = &comp;
        // Every file adds a cheap end-of-file item: a wide window keeps the workers busy through
        // runs of small files (at most 64 blocks, 8 MiB at the default block size, wait in it).
        let window = (4 * opts.threads).max(64);
        crate::formats::parallel::ordered_map(
            opts.threads,
            window,
            input,
            |job| work(comp, job),
            |done| sink.take(done),
        )?;
    }
    // GNU tar pads the archive to its record size after the end marker: read that too, so a
    // tar piping into us never fails on a closed pipe, and progress ends at the stream size.
    io::copy(&mut archive.into_inner(), &mut io::sink())?;
    progress(count.get());
    let (runs, fragments) = (std::mem::take(&mut sink.runs), std::mem::take(&mut sink.fragments));
    if st.fragments as usize != fragments.len() || st.block_runs as usize != runs.len() {
        return Err(io::Error::other("squashfs writer: block bookkeeping out of step"));
    }
    let t = finish::write_tables(&st.tree, &st.xattrs, &runs, &fragments, bs, &comp, &mut o)?;
    // Like mksquashfs, the flag says duplicates are looked for (and would be shared).
    flags |= FLAG_DUPLICATES;
    if t.xattr_id_table_start == tables::INVALID {
        flags |= FLAG_NO_XATTRS;
    }
    let sb = Superblock {
        inodes: t.inodes,
        mkfs_time: opts.mkfs_time,
        block_size: bs,
        fragments: st.fragments,
        compression: comp.id(),
        flags,
        no_ids: t.no_ids,
        root_inode: t.root_inode,
        bytes_used: o.pos,
        id_table_start: t.id_table_start,
        xattr_id_table_start: t.xattr_id_table_start,
        inode_table_start: t.inode_table_start,
        directory_table_start: t.directory_table_start,
        fragment_table_start: t.fragment_table_start,
        lookup_table_start: t.lookup_table_start,
    };
    // Padded to 4 KiB like mksquashfs (block devices and loop mounts want whole sectors).
    let len = o.pos.div_ceil(4096) * 4096;
    out.set_len(len)?;
    std::os::unix::fs::FileExt::write_all_at(out, &sb.bytes(), 0)?;
    Ok(SquashfsSummary { inodes: t.inodes, bytes_in: st.bytes_in, bytes_out: len })
}
