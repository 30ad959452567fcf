//! The 8 KiB metadata-block writer: inodes, directories and the lookup tables are stored as a
//! sequence of blocks, each a 2-byte header (size, bit 15 = stored uncompressed) and data.

use std::io;

use super::compress::Compressor;

pub(super) const METADATA_SIZE: usize = 8192;

/// One metadata block with its header.
pub(super) fn metadata_block(comp: &Compressor, data: &[u8]) -> io::Result<Vec<u8>> {
    let (payload, header) = match comp.compress(data)? {
        Some(c) => (c, 0u16),
        None => (data.to_vec(), 0x8000u16),
    };
    // Both are at most 8192 bytes (compressed output is only kept when it is smaller).
    let len = u16::try_from(payload.len()).map_err(|_| io::Error::other("metadata block too large"))?;
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.extend_from_slice(&(len | header).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Accumulates a metadata stream and compresses it block by block, in memory.
pub(super) struct MetadataWriter<'c> {
    comp: &'c Compressor,
    pending: Vec<u8>,
    out: Vec<u8>,
}

impl<'c> MetadataWriter<'c> {
    pub(super) fn new(comp: &'c Compressor) -> Self {
        MetadataWriter { comp, pending: Vec::with_capacity(METADATA_SIZE * 2), out: Vec::new() }
    }

    /// Where the next byte goes: (offset of its block from the table start, offset inside
    /// the uncompressed block), the two halves of a squashfs metadata reference.
    pub(super) fn position(&self) -> (u64, u16) {
        // `pending` is flushed whenever it reaches METADATA_SIZE, so it always fits a u16.
        (self.out.len() as u64, self.pending.len() as u16)
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= METADATA_SIZE {
            let block = metadata_block(self.comp, &self.pending[..METADATA_SIZE])?;
            self.out.extend_from_slice(&block);
            self.pending.drain(..METADATA_SIZE);
        }
        Ok(())
    }

    /// The compressed table, the last partial block included.
    pub(super) fn finish(mut self) -> io::Result<Vec<u8>> {
        if !self.pending.is_empty() {
            let block = metadata_block(self.comp, &self.pending)?;
            self.out.extend_from_slice(&block);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::squashfs::SquashfsCompression;

    #[test]
    fn blocks_split_at_8k_and_positions_follow() {
        let comp = Compressor::new(SquashfsCompression::Gzip(9), 131072);
        let mut w = MetadataWriter::new(&comp);
        assert_eq!(w.position(), (0, 0));
        w.write(&[5u8; 8000]).unwrap();
        assert_eq!(w.position(), (0, 8000));
        w.write(&[6u8; 300]).unwrap();
        let (block, off) = w.position();
        assert!(block > 2 && block < 200, "{block}");
        assert_eq!(off, 108);
        let out = w.finish().unwrap();
        let first = u16::from_le_bytes([out[0], out[1]]);
        assert_eq!(first & 0x8000, 0);
        assert_eq!(u64::from(first) + 2, block);
    }
}
