//! Inode records (squashfs_fs.h layouts). The basic forms are used where they can hold the
//! inode, the extended ones for xattrs, hard links, sparse or > 4 GiB files and big dirs.

pub(super) const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
const NO_XATTR: u32 = 0xFFFF_FFFF;

/// The fields every inode starts with; `mode` is the permission bits only: the kernel adds
/// the type from the inode type (and refuses type bits here).
pub(super) struct Common {
    pub mode: u16,
    pub uid: u16,
    pub gid: u16,
    pub mtime: u32,
    pub number: u32,
}

fn header(b: &mut Vec<u8>, ty: u16, c: &Common) {
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&c.mode.to_le_bytes());
    b.extend_from_slice(&c.uid.to_le_bytes());
    b.extend_from_slice(&c.gid.to_le_bytes());
    b.extend_from_slice(&c.mtime.to_le_bytes());
    b.extend_from_slice(&c.number.to_le_bytes());
}

fn u32s(b: &mut Vec<u8>, vals: &[u32]) {
    for v in vals {
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// Where a directory's listing is: block offset in the directory table, offset inside it,
/// and the listing size + 3 (the kernel counts "." and "..").
pub(super) struct DirLocation {
    pub block: u32,
    pub offset: u16,
    pub size: u32,
}

/// A directory inode; `index` holds `index_count` serialized index entries.
pub(super) fn dir(
    c: &Common,
    at: &DirLocation,
    nlink: u32,
    parent: u32,
    xattr: Option<u32>,
    index_count: u16,
    index: &[u8],
) -> Vec<u8> {
    let mut b = Vec::with_capacity(40 + index.len());
    match (u16::try_from(at.size), xattr, index_count) {
        (Ok(size), None, 0) => {
            header(&mut b, 1, c);
            u32s(&mut b, &[at.block, nlink]);
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&at.offset.to_le_bytes());
            u32s(&mut b, &[parent]);
        }
        _ => {
            header(&mut b, 8, c);
            u32s(&mut b, &[nlink, at.size, at.block, parent]);
            b.extend_from_slice(&index_count.to_le_bytes());
            b.extend_from_slice(&at.offset.to_le_bytes());
            u32s(&mut b, &[xattr.unwrap_or(NO_XATTR)]);
            b.extend_from_slice(index);
        }
    }
    b
}

pub(super) struct FileInode<'a> {
    pub start: u64,
    pub size: u64,
    pub sparse: u64,
    pub nlink: u32,
    pub fragment: Option<(u32, u32)>,
    pub xattr: Option<u32>,
    pub blocks: &'a [u32],
}

pub(super) fn file(c: &Common, f: &FileInode) -> Vec<u8> {
    let mut b = Vec::with_capacity(56 + 4 * f.blocks.len());
    let (frag, offset) = f.fragment.unwrap_or((NO_FRAGMENT, 0));
    match (u32::try_from(f.start), u32::try_from(f.size)) {
        (Ok(start), Ok(size)) if f.nlink == 1 && f.xattr.is_none() && f.sparse == 0 => {
            header(&mut b, 2, c);
            u32s(&mut b, &[start, frag, offset, size]);
        }
        _ => {
            header(&mut b, 9, c);
            for v in [f.start, f.size, f.sparse] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            u32s(&mut b, &[f.nlink, frag, offset, f.xattr.unwrap_or(NO_XATTR)]);
        }
    }
    u32s(&mut b, f.blocks);
    b
}

pub(super) fn symlink(c: &Common, nlink: u32, target: &[u8], xattr: Option<u32>) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + target.len());
    header(&mut b, if xattr.is_some() { 10 } else { 3 }, c);
    // The reader bounds targets to 4095 bytes.
    u32s(&mut b, &[nlink, target.len() as u32]);
    b.extend_from_slice(target);
    if let Some(x) = xattr {
        u32s(&mut b, &[x]);
    }
    b
}

/// Character (`chr`) or block device; `rdev` in the kernel's new_encode_dev form.
pub(super) fn device(c: &Common, chr: bool, nlink: u32, rdev: u32, xattr: Option<u32>) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    let ty = match (chr, xattr.is_some()) {
        (false, false) => 4,
        (true, false) => 5,
        (false, true) => 11,
        (true, true) => 12,
    };
    header(&mut b, ty, c);
    u32s(&mut b, &[nlink, rdev]);
    if let Some(x) = xattr {
        u32s(&mut b, &[x]);
    }
    b
}

pub(super) fn fifo(c: &Common, nlink: u32, xattr: Option<u32>) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    header(&mut b, if xattr.is_some() { 13 } else { 6 }, c);
    u32s(&mut b, &[nlink]);
    if let Some(x) = xattr {
        u32s(&mut b, &[x]);
    }
    b
}

/// Linux's new_encode_dev; None when the numbers do not fit (12-bit major, 20-bit minor).
pub(super) fn encode_dev(major: u32, minor: u32) -> Option<u32> {
    (major < 4096 && minor < (1 << 20)).then_some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Common = Common { mode: 0o100644, uid: 0, gid: 1, mtime: 9, number: 3 };

    #[test]
    fn file_forms() {
        let basic =
            FileInode { start: 96, size: 10, sparse: 0, nlink: 1, fragment: Some((0, 5)), xattr: None, blocks: &[] };
        assert_eq!(file(&C, &basic).len(), 32);
        let linked = FileInode { nlink: 2, blocks: &[1, 2], ..basic };
        let b = file(&C, &linked);
        assert_eq!(b.len(), 56 + 8);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 9);
    }

    #[test]
    fn dir_forms_and_devices() {
        let small = DirLocation { block: 0, offset: 4, size: 3 };
        assert_eq!(dir(&C, &small, 2, 1, None, 0, &[]).len(), 32);
        assert_eq!(dir(&C, &small, 2, 1, None, 1, &[0; 13]).len(), 40 + 13);
        let big = DirLocation { block: 0, offset: 4, size: 70000 };
        assert_eq!(dir(&C, &big, 2, 1, None, 0, &[]).len(), 40);
        assert_eq!(encode_dev(1, 3), Some(0x103));
        assert_eq!(encode_dev(259, 0x12345), Some((0x45) | (259 << 8) | (0x12300 << 12)));
        assert_eq!(encode_dev(4096, 0), None);
    }
}
