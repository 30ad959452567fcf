//! Block compression for data, fragment and metadata blocks, with the same settings as
//! mksquashfs so the images are comparable (and read back by every squashfs reader).

use std::cell::RefCell;
use std::io::{self, Write};

use super::SquashfsCompression;

pub(super) struct Compressor {
    kind: SquashfsCompression,
    block_size: u32,
}

thread_local! {
    // A zstd context per worker thread: creating one per 128 KiB block costs more than zstd -3 itself.
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

impl Compressor {
    pub(super) fn new(kind: SquashfsCompression, block_size: u32) -> Compressor {
        Compressor { kind, block_size }
    }

    /// The superblock's compressor id.
    pub(super) fn id(&self) -> u16 {
        match self.kind {
            SquashfsCompression::Gzip(_) => 1,
            SquashfsCompression::Xz => 4,
            SquashfsCompression::Zstd(_) => 6,
        }
    }

    /// The compressor-options block payload, when the settings differ from the compressor's
    /// defaults (mksquashfs omits it otherwise, and so do we).
    pub(super) fn options(&self) -> Option<Vec<u8>> {
        match self.kind {
            SquashfsCompression::Xz => None,
            SquashfsCompression::Zstd(15) => None,
            SquashfsCompression::Zstd(level) => Some(level.to_le_bytes().to_vec()),
            SquashfsCompression::Gzip(9) => None,
            SquashfsCompression::Gzip(level) => {
                // level u32, window size u16 (15 = zlib's default), strategies u16 (0 = default).
                let mut o = level.to_le_bytes().to_vec();
                o.extend_from_slice(&15u16.to_le_bytes());
                o.extend_from_slice(&0u16.to_le_bytes());
                Some(o)
            }
        }
    }

    /// Compresses `data`; `None` when the result would not be smaller (the block is then
    /// stored as it is, flagged uncompressed).
    pub(super) fn compress(&self, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let out = match self.kind {
            SquashfsCompression::Xz => self.xz(data)?,
            SquashfsCompression::Zstd(level) => zstd_compress(data, level)?,
            SquashfsCompression::Gzip(level) => {
                let mut enc = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::new(level.min(9)),
                );
                enc.write_all(data)?;
                enc.finish()?
            }
        };
        Ok((out.len() < data.len()).then_some(out))
    }

    fn xz(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
        // mksquashfs: preset 6, dictionary = block size, CRC32 check, no BCJ filter.
        let mut opts = LzmaOptions::new_preset(6).map_err(io::Error::other)?;
        opts.dict_size(self.block_size.max(8192));
        let mut filters = Filters::new();
        filters.lzma2(&opts);
        let mut stream = Stream::new_stream_encoder(&filters, Check::Crc32).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 128);
        let mut input = data;
        loop {
            let before = stream.total_in();
            let status = stream.process_vec(input, &mut out, Action::Finish).map_err(io::Error::other)?;
            let used = usize::try_from(stream.total_in() - before).unwrap_or(input.len());
            input = input.get(used..).unwrap_or(&[]);
            if status == Status::StreamEnd {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(4096));
            }
        }
    }
}

fn zstd_compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let fresh = !matches!(&*slot, Some((l, _)) if *l == level);
        if fresh {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(data),
            None => Err(io::Error::other("zstd context missing")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_data_is_stored() {
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for kind in [SquashfsCompression::Xz, SquashfsCompression::Zstd(3), SquashfsCompression::Gzip(9)] {
            let c = Compressor::new(kind, 131072);
            assert!(c.compress(&noise).unwrap().is_none());
            assert!(c.compress(&[7u8; 4096]).unwrap().unwrap().len() < 200);
        }
    }

    #[test]
    fn xz_output_is_an_xz_stream_with_crc32() {
        let c = Compressor::new(SquashfsCompression::Xz, 131072);
        let out = c.compress(&[1u8; 10000]).unwrap().unwrap();
        assert_eq!(&out[..6], b"\xfd7zXZ\0");
        // Stream flags: check type 1 = CRC32.
        assert_eq!(out[7], 1);
    }
}
