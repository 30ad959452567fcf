//! Directory listings: runs of entries under a header naming the inode metadata block and a
//! base inode number; a run ends at 256 entries, a new inode block, or an inode-number delta
//! that does not fit the entries' signed 16-bit field.

pub(super) struct Entry<'a> {
    pub name: &'a [u8],
    /// Inode reference: metadata block offset << 16 | offset inside the block.
    pub inode_ref: u64,
    pub number: u32,
    /// Basic inode type (1 dir, 2 file, 3 symlink, 4 block, 5 char, 6 fifo, 7 socket).
    pub ty: u16,
}

/// The listing of `entries` (already sorted by name bytes; names 1..=256 bytes), and where
/// each header starts in it with the index of its first entry (for the directory index).
pub(super) fn listing(entries: &[Entry]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut out = Vec::new();
    let mut headers = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let first = &entries[i];
        let block = first.inode_ref >> 16;
        let base = first.number;
        let run = entries[i..]
            .iter()
            .take(256)
            .take_while(|e| e.inode_ref >> 16 == block && i16::try_from(i64::from(e.number) - i64::from(base)).is_ok())
            .count();
        // `run` >= 1: the first entry always matches itself.
        headers.push((out.len(), i));
        out.extend_from_slice(&(run as u32 - 1).to_le_bytes());
        out.extend_from_slice(&(block as u32).to_le_bytes());
        out.extend_from_slice(&base.to_le_bytes());
        for e in &entries[i..i + run] {
            let delta = (i64::from(e.number) - i64::from(base)) as i16;
            out.extend_from_slice(&((e.inode_ref & 0xffff) as u16).to_le_bytes());
            out.extend_from_slice(&delta.to_le_bytes());
            out.extend_from_slice(&e.ty.to_le_bytes());
            out.extend_from_slice(&(e.name.len() as u16 - 1).to_le_bytes());
            out.extend_from_slice(e.name);
        }
        i += run;
    }
    (out, headers)
}

/// One directory index entry: a header that starts in a new directory-table block, so that
/// the kernel can skip to it when looking up a name in a big directory.
pub(super) fn index_entry(out: &mut Vec<u8>, offset_in_listing: u32, block: u32, first_name: &[u8]) {
    out.extend_from_slice(&offset_in_listing.to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&(first_name.len() as u32 - 1).to_le_bytes());
    out.extend_from_slice(first_name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_limits() {
        let names: Vec<Vec<u8>> = (0..600).map(|i| format!("{i:04}").into_bytes()).collect();
        let mut entries: Vec<Entry> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Entry { name: n, inode_ref: 7, number: i as u32 + 1, ty: 2 })
            .collect();
        // 600 entries, 12 + 8 + 4 bytes each plus 3 headers of 12 bytes.
        let (l, headers) = listing(&entries);
        assert_eq!(l.len(), 600 * 12 + 3 * 12);
        assert_eq!(headers, [(0, 0), (12 + 256 * 12, 256), (2 * (12 + 256 * 12), 512)]);
        // A new inode block and a big jump in inode numbers both start a new header.
        entries.truncate(3);
        entries[1].inode_ref = (10 << 16) | 5;
        entries[2].inode_ref = (10 << 16) | 9;
        entries[2].number = 40000;
        let (l, _) = listing(&entries);
        assert_eq!(l.len(), 3 * 12 + 3 * 12);
        assert_eq!(u32::from_le_bytes([l[16 + 12], l[17 + 12], l[18 + 12], l[19 + 12]]), 10);
    }
}
