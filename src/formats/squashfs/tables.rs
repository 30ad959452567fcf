//! The superblock, the id table and the indexed lookup tables (fragments, export, ids), and
//! positional output to the image file.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::compress::Compressor;
use super::metadata::{metadata_block, METADATA_SIZE};

pub(super) const SUPERBLOCK_SIZE: u64 = 96;
pub(super) const INVALID: u64 = u64::MAX;

pub(super) const FLAG_ALWAYS_FRAGMENTS: u16 = 0x20;
pub(super) const FLAG_DUPLICATES: u16 = 0x40;
pub(super) const FLAG_EXPORTABLE: u16 = 0x80;
pub(super) const FLAG_NO_XATTRS: u16 = 0x200;
pub(super) const FLAG_COMPRESSOR_OPTIONS: u16 = 0x400;

/// Appends to the image at a tracked position (the superblock is written last at 0).
pub(super) struct Out<'f> {
    pub file: &'f File,
    pub pos: u64,
}

impl Out<'_> {
    /// Writes `bytes` at the current end; returns where they start.
    pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<u64> {
        let at = self.pos;
        self.file.write_all_at(bytes, at)?;
        self.pos += bytes.len() as u64;
        Ok(at)
    }
}

/// Writes `entries` as metadata blocks followed by the index of their absolute positions;
/// returns the index position (what the superblock points at).
pub(super) fn write_indexed_table(out: &mut Out, comp: &Compressor, entries: &[u8]) -> io::Result<u64> {
    let mut index = Vec::new();
    for chunk in entries.chunks(METADATA_SIZE) {
        let at = out.append(&metadata_block(comp, chunk)?)?;
        index.extend_from_slice(&at.to_le_bytes());
    }
    out.append(&index)
}

/// uids and gids share one table of up to 65536 ids, referenced by 16-bit index.
#[derive(Default)]
pub(super) struct Ids {
    map: HashMap<u32, u16>,
    list: Vec<u32>,
}

impl Ids {
    pub(super) fn index(&mut self, id: u32) -> io::Result<u16> {
        if let Some(&i) = self.map.get(&id) {
            return Ok(i);
        }
        // no_ids is a u16, so at most 65535 ids can be counted.
        let i = u16::try_from(self.list.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "more than 65535 distinct uids/gids"))?;
        self.map.insert(id, i);
        self.list.push(id);
        Ok(i)
    }

    pub(super) fn count(&self) -> u16 {
        // `index` keeps the list below 65536 entries.
        u16::try_from(self.list.len()).unwrap_or(u16::MAX)
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
        self.list.iter().flat_map(|id| id.to_le_bytes()).collect()
    }
}

pub(super) struct Superblock {
    pub inodes: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragments: u32,
    pub compression: u16,
    pub flags: u16,
    pub no_ids: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table_start: u64,
    pub xattr_id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
    pub lookup_table_start: u64,
}

impl Superblock {
    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE as usize);
        b.extend_from_slice(&0x7371_7368u32.to_le_bytes());
        b.extend_from_slice(&self.inodes.to_le_bytes());
        b.extend_from_slice(&self.mkfs_time.to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.fragments.to_le_bytes());
        b.extend_from_slice(&self.compression.to_le_bytes());
        b.extend_from_slice(&(self.block_size.trailing_zeros() as u16).to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.no_ids.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        for v in [
            self.root_inode,
            self.bytes_used,
            self.id_table_start,
            self.xattr_id_table_start,
            self.inode_table_start,
            self.directory_table_start,
            self.fragment_table_start,
            self.lookup_table_start,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_layout() {
        let sb = Superblock {
            inodes: 3,
            mkfs_time: 5,
            block_size: 131072,
            fragments: 1,
            compression: 4,
            flags: FLAG_EXPORTABLE,
            no_ids: 1,
            root_inode: 0x20,
            bytes_used: 4000,
            id_table_start: 1,
            xattr_id_table_start: INVALID,
            inode_table_start: 2,
            directory_table_start: 3,
            fragment_table_start: 4,
            lookup_table_start: 5,
        };
        let b = sb.bytes();
        assert_eq!(b.len(), 96);
        assert_eq!(&b[..4], b"hsqs");
        assert_eq!(u16::from_le_bytes([b[22], b[23]]), 17);
        assert_eq!(u16::from_le_bytes([b[28], b[29]]), 4);
        assert_eq!(&b[56..64], &[0xff; 8]);
    }

    #[test]
    fn ids_are_shared_and_limited() {
        let mut ids = Ids::default();
        assert_eq!(ids.index(0).unwrap(), 0);
        assert_eq!(ids.index(1234).unwrap(), 1);
        assert_eq!(ids.index(0).unwrap(), 0);
        assert_eq!(ids.bytes(), vec![0, 0, 0, 0, 0xd2, 4, 0, 0]);
        for i in 2..65535u32 {
            ids.index(100_000 + i).unwrap();
        }
        assert_eq!(ids.count(), 65535);
        assert!(ids.index(7).is_err());
    }
}
