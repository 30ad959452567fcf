//! After the data: numbers the inodes (children before their directory, the root last, as
//! mksquashfs does), writes the inode and directory tables and the lookup tables.

use std::io;

use super::compress::Compressor;
use super::dir;
use super::inode::{self, Common, DirLocation, FileInode};
use super::metadata::MetadataWriter;
use super::reader::invalid;
use super::tables::{write_indexed_table, Ids, Out, INVALID};
use super::tree::{Kind, Tree, ROOT};
use super::xattr::Xattrs;

/// A file's run of data blocks as the sink wrote it.
pub(super) struct Run {
    pub start: u64,
    pub sizes: Vec<u32>,
    pub sparse_blocks: u64,
}

pub(super) struct Tables {
    pub inodes: u32,
    pub root_inode: u64,
    pub no_ids: u16,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
    pub lookup_table_start: u64,
    pub id_table_start: u64,
    pub xattr_id_table_start: u64,
}

/// The basic squashfs type, used in directory entries.
fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir(_) => 1,
        Kind::File(_) => 2,
        Kind::Symlink(_) => 3,
        Kind::BlockDev(_) => 4,
        Kind::CharDev(_) => 5,
        Kind::Fifo => 6,
    }
}

fn children(tree: &Tree, id: u32) -> Vec<u32> {
    match &tree.nodes[id as usize].kind {
        Kind::Dir(c) => c.values().copied().collect(),
        _ => Vec::new(),
    }
}

/// The inodes in write order, and per node (index = node id): inode number (0 = not
/// reachable), parent directory, and how many directory entries name it.
struct Numbering {
    order: Vec<u32>,
    number: Vec<u32>,
    parent: Vec<u32>,
    refs: Vec<u32>,
}

/// Post-order over the reachable tree. Iterative: a hostile stream may nest deeply.
fn number(tree: &Tree) -> io::Result<Numbering> {
    let n = tree.nodes.len();
    let (mut number, mut parent, mut refs) = (vec![0u32; n], vec![0u32; n], vec![0u32; n]);
    let mut order = Vec::new();
    let mut stack = vec![(ROOT, children(tree, ROOT), 0usize)];
    while let Some(top) = stack.last_mut() {
        let (dir, i) = (top.0, top.2);
        if let Some(&c) = top.1.get(i) {
            top.2 += 1;
            refs[c as usize] += 1;
            if matches!(tree.nodes[c as usize].kind, Kind::Dir(_)) {
                if refs[c as usize] > 1 {
                    return Err(io::Error::other("directory reached twice in the tree"));
                }
                parent[c as usize] = dir;
                stack.push((c, children(tree, c), 0));
            } else if number[c as usize] == 0 {
                order.push(c);
                number[c as usize] = order.len() as u32;
            }
        } else {
            stack.pop();
            order.push(dir);
            number[dir as usize] = order.len() as u32;
        }
    }
    Ok(Numbering { order, number, parent, refs })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn write_tables(
    tree: &Tree,
    xattrs: &Xattrs,
    runs: &[Run],
    fragments: &[(u64, u32)],
    block_size: u32,
    comp: &Compressor,
    out: &mut Out,
) -> io::Result<Tables> {
    let Numbering { order, number, parent, refs } = number(tree)?;
    let count = u32::try_from(order.len()).map_err(|_| invalid("too many inodes".into()))?;
    let mut ids = Ids::default();
    let mut inodes = MetadataWriter::new(comp);
    let mut dirs = MetadataWriter::new(comp);
    let mut iref = vec![0u64; tree.nodes.len()];
    for &id in &order {
        let node = &tree.nodes[id as usize];
        let c = Common {
            mode: node.perm & 0o7777,
            uid: ids.index(node.uid)?,
            gid: ids.index(node.gid)?,
            mtime: node.mtime,
            number: number[id as usize],
        };
        let nlink = refs[id as usize].max(1);
        let bytes = match &node.kind {
            Kind::Dir(kids) => {
                let entries: Vec<dir::Entry> = kids
                    .iter()
                    .map(|(name, &k)| dir::Entry {
                        name,
                        inode_ref: iref[k as usize],
                        number: number[k as usize],
                        ty: basic_type(&tree.nodes[k as usize].kind),
                    })
                    .collect();
                let subdirs = kids.values().filter(|&&k| matches!(tree.nodes[k as usize].kind, Kind::Dir(_))).count();
                let (listing, headers) = dir::listing(&entries);
                let (block, offset) = dirs.position();
                // Written header by header to note which ones start a new metadata block.
                let (mut index, mut index_count, mut last_block) = (Vec::new(), 0u16, block);
                for (k, &(at, first)) in headers.iter().enumerate() {
                    let end = headers.get(k + 1).map_or(listing.len(), |h| h.0);
                    let (here, _) = dirs.position();
                    if here != last_block && index_count < u16::MAX {
                        let here32 = u32::try_from(here).map_err(|_| invalid("directory table too large".into()))?;
                        dir::index_entry(&mut index, at as u32, here32, entries[first].name);
                        index_count += 1;
                        last_block = here;
                    }
                    dirs.write(&listing[at..end])?;
                }
                let at = DirLocation {
                    block: u32::try_from(block).map_err(|_| invalid("directory table too large".into()))?,
                    offset,
                    size: u32::try_from(listing.len() + 3).map_err(|_| invalid("directory too large".into()))?,
                };
                let parent = if id == ROOT { count + 1 } else { number[parent[id as usize] as usize] };
                let nlink = u32::try_from(subdirs + 2).unwrap_or(u32::MAX);
                inode::dir(&c, &at, nlink, parent, node.xattr, index_count, &index)
            }
            Kind::File(f) => {
                let (start, sizes, sparse) = match f.blocks {
                    Some(r) => {
                        let run = runs.get(r as usize).ok_or_else(|| io::Error::other("missing block run"))?;
                        (run.start, &run.sizes[..], run.sparse_blocks * u64::from(block_size))
                    }
                    None => (0, &[][..], 0),
                };
                let f = FileInode {
                    start,
                    size: f.size,
                    sparse,
                    nlink,
                    fragment: f.fragment,
                    xattr: node.xattr,
                    blocks: sizes,
                };
                inode::file(&c, &f)
            }
            Kind::Symlink(t) => inode::symlink(&c, nlink, t, node.xattr),
            Kind::CharDev(rdev) => inode::device(&c, true, nlink, *rdev, node.xattr),
            Kind::BlockDev(rdev) => inode::device(&c, false, nlink, *rdev, node.xattr),
            Kind::Fifo => inode::fifo(&c, nlink, node.xattr),
        };
        let (block, offset) = inodes.position();
        iref[id as usize] = (block << 16) | u64::from(offset);
        inodes.write(&bytes)?;
    }

    let inode_table_start = out.append(&inodes.finish()?)?;
    let directory_table_start = out.append(&dirs.finish()?)?;
    let frag_entries: Vec<u8> = fragments
        .iter()
        .flat_map(|&(start, size)| {
            let mut e = start.to_le_bytes().to_vec();
            e.extend_from_slice(&size.to_le_bytes());
            e.extend_from_slice(&0u32.to_le_bytes());
            e
        })
        .collect();
    let fragment_table_start = write_indexed_table(out, comp, &frag_entries)?;
    let export: Vec<u8> = order.iter().flat_map(|&id| iref[id as usize].to_le_bytes()).collect();
    let lookup_table_start = write_indexed_table(out, comp, &export)?;
    let id_table_start = write_indexed_table(out, comp, &ids.bytes())?;
    let xattr_id_table_start = if xattrs.is_empty() { INVALID } else { xattrs.write(out, comp)? };
    Ok(Tables {
        inodes: count,
        root_inode: iref[ROOT as usize],
        no_ids: ids.count(),
        inode_table_start,
        directory_table_start,
        fragment_table_start,
        lookup_table_start,
        id_table_start,
        xattr_id_table_start,
    })
}
