//! Extended attributes: identical sets share one xattr id; the table is the key/value
//! metadata stream, then the id entries, then a header and the index (what the kernel reads).

use std::collections::HashMap;
use std::io;

use super::compress::Compressor;
use super::metadata::{metadata_block, MetadataWriter, METADATA_SIZE};
use super::tables::Out;

/// (prefix type, name without prefix, value), sorted.
type Set = Vec<(u16, Vec<u8>, Vec<u8>)>;

#[derive(Default)]
pub(super) struct Xattrs {
    ids: HashMap<Set, u32>,
    sets: Vec<Set>,
}

/// The squashfs prefix type of a full xattr name and the rest of it. squashfs only has
/// user., trusted. and security.; `system.*` (POSIX ACLs) cannot be represented, as in mksquashfs.
pub(super) fn split_name(full: &[u8]) -> Option<(u16, &[u8])> {
    let (ty, rest) = if let Some(r) = full.strip_prefix(b"user.") {
        (0, r)
    } else if let Some(r) = full.strip_prefix(b"trusted.") {
        (1, r)
    } else if let Some(r) = full.strip_prefix(b"security.") {
        (2, r)
    } else {
        return None;
    };
    (!rest.is_empty() && rest.len() <= 255).then_some((ty, rest))
}

const PREFIXES: [&str; 3] = ["user.", "trusted.", "security."];

impl Xattrs {
    /// The id for this set of (full name, value) pairs; None when none is representable.
    pub(super) fn intern(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> io::Result<Option<u32>> {
        let mut set: Set = pairs
            .into_iter()
            .filter_map(|(name, value)| split_name(&name).map(|(t, n)| (t, n.to_vec(), value)))
            .collect();
        if set.is_empty() {
            return Ok(None);
        }
        set.sort();
        // A name given twice keeps its last value, as setfattr would leave it.
        set.dedup_by(|b, a| {
            let same = a.0 == b.0 && a.1 == b.1;
            if same {
                std::mem::swap(&mut a.2, &mut b.2);
            }
            same
        });
        if let Some(&id) = self.ids.get(&set) {
            return Ok(Some(id));
        }
        let id = u32::try_from(self.sets.len()).map_err(|_| io::Error::other("too many xattr sets"))?;
        self.ids.insert(set.clone(), id);
        self.sets.push(set);
        Ok(Some(id))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Writes the xattr table; returns the xattr_id_table_start for the superblock.
    pub(super) fn write(&self, out: &mut Out, comp: &Compressor) -> io::Result<u64> {
        let mut kv = MetadataWriter::new(comp);
        let mut entries = Vec::with_capacity(self.sets.len() * 16);
        for set in &self.sets {
            let (block, offset) = kv.position();
            // Total size as listxattr would report it: full names with NUL, plus values.
            let mut size = 0u64;
            for (ty, name, value) in set {
                let vlen = u32::try_from(value.len()).map_err(|_| io::Error::other("xattr value too large"))?;
                // split_name bounds names to 255 bytes.
                kv.write(&ty.to_le_bytes())?;
                kv.write(&(name.len() as u16).to_le_bytes())?;
                kv.write(name)?;
                // Values are always stored inline; the out-of-line form (type bit 0x100) is an
                // optional saving for repeated large values.
                kv.write(&vlen.to_le_bytes())?;
                kv.write(value)?;
                size += (PREFIXES[usize::from(*ty)].len() + name.len() + 1 + value.len()) as u64;
            }
            entries.extend_from_slice(&((block << 16) | u64::from(offset)).to_le_bytes());
            entries.extend_from_slice(&(set.len() as u32).to_le_bytes());
            entries.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
        }
        let kv_start = out.append(&kv.finish()?)?;
        let mut index = Vec::new();
        for chunk in entries.chunks(METADATA_SIZE) {
            let at = out.append(&metadata_block(comp, chunk)?)?;
            index.extend_from_slice(&at.to_le_bytes());
        }
        let mut header = Vec::with_capacity(16 + index.len());
        header.extend_from_slice(&kv_start.to_le_bytes());
        header.extend_from_slice(&(self.sets.len() as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&index);
        out.append(&header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        p.iter().map(|(a, b)| (a.as_bytes().to_vec(), b.as_bytes().to_vec())).collect()
    }

    #[test]
    fn identical_sets_share_an_id() {
        let mut x = Xattrs::default();
        let a = x.intern(pairs(&[("user.a", "1"), ("trusted.b", "xyz")])).unwrap();
        let b = x.intern(pairs(&[("trusted.b", "xyz"), ("user.a", "1")])).unwrap();
        let c = x.intern(pairs(&[("user.a", "2")])).unwrap();
        assert_eq!(a, Some(0));
        assert_eq!(b, Some(0));
        assert_eq!(c, Some(1));
        assert_eq!(x.intern(pairs(&[("system.posix_acl_access", "x")])).unwrap(), None);
        assert_eq!(split_name(b"security.selinux"), Some((2, &b"selinux"[..])));
        assert_eq!(split_name(b"user."), None);
    }
}
