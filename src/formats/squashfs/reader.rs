//! Turns the tar stream into work items for the compressor pool: full data blocks as they are
//! read, packed fragment blocks, and an end-of-file record; the headers go into the tree.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::tree::{split_path, Components, FileData, Kind, Node, Tree};
use super::xattr::Xattrs;

/// One unit of work, in stream order.
pub(super) enum Job {
    /// A full block of the current file.
    Block(Vec<u8>),
    /// The current file's blocks are all sent; `dup`: they repeat an earlier file and are to
    /// be dropped from the image.
    FileEnd { dup: bool },
    /// A packed block of tail ends, fragment number = order of these jobs.
    Fragment(Vec<u8>),
}

pub(super) fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn bad_entry(path: &str, msg: impl std::fmt::Display) -> io::Error {
    invalid(format!("tar entry '{path}': {msg}"))
}

/// Counts the bytes the tar parser consumes, for progress reports.
pub(super) struct Counting<R> {
    pub inner: R,
    pub count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// What the input side knows once the stream is consumed.
pub(super) struct State {
    pub tree: Tree,
    pub xattrs: Xattrs,
    pub bytes_in: u64,
    /// Fragment blocks sent so far.
    pub fragments: u32,
    /// Files whose full blocks were kept (ids of the sink's block runs).
    pub block_runs: u32,
    dedup: HashMap<(u64, [u8; 32]), FileData>,
    frag: Vec<u8>,
    block_size: usize,
    exclude: Vec<Components>,
}

impl State {
    pub(super) fn new(block_size: usize, exclude: &[String], implicit_mtime: u32) -> io::Result<State> {
        let exclude = exclude
            .iter()
            .map(|e| split_path(e.as_bytes()).map_err(|m| invalid(format!("exclusion '{e}': {m}"))))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(State {
            tree: Tree::new(implicit_mtime),
            xattrs: Xattrs::default(),
            bytes_in: 0,
            fragments: 0,
            block_runs: 0,
            dedup: HashMap::new(),
            frag: Vec::new(),
            block_size,
            exclude,
        })
    }

    /// Strictly below an excluded directory (the directory itself stays).
    fn excluded(&self, comps: &[Vec<u8>]) -> bool {
        self.exclude.iter().any(|e| comps.len() > e.len() && comps.starts_with(e))
    }

    fn add_tail(&mut self, tail: &[u8], queue: &mut VecDeque<Job>) -> (u32, u32) {
        if self.frag.len() + tail.len() > self.block_size {
            self.flush_fragment(queue);
        }
        // Tails are shorter than a block, which is at most 1 MiB.
        let at = (self.fragments, self.frag.len() as u32);
        self.frag.extend_from_slice(tail);
        at
    }

    fn flush_fragment(&mut self, queue: &mut VecDeque<Job>) {
        if !self.frag.is_empty() {
            queue.push_back(Job::Fragment(std::mem::take(&mut self.frag)));
            self.fragments += 1;
        }
    }
}

type Entry<'a, R> = tar::Entry<'a, Counting<R>>;

struct Current<'a> {
    data: Box<dyn Read + 'a>,
    path: String,
    node: u32,
    size: u64,
    left: u64,
    hash: Sha256,
    full_blocks: u64,
}

pub(super) struct Input<'a, 'p, R: Read> {
    entries: tar::Entries<'a, Counting<R>>,
    st: &'p mut State,
    cur: Option<Current<'a>>,
    queue: VecDeque<Job>,
    ended: bool,
    failed: bool,
    count: Rc<Cell<u64>>,
    reported: u64,
    progress: &'p mut dyn FnMut(u64),
}

/// The PAX records this writer uses.
#[derive(Default)]
struct Pax {
    mtime: Option<u64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    sparse_major: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_size: Option<u64>,
    sparse_map: Option<Vec<u8>>,
}

fn pax_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// PAX times are decimal seconds with an optional fraction; squashfs keeps whole seconds,
/// from 0 to u32::MAX.
fn pax_time(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let whole = s.split('.').next()?;
    if let Some(negative) = whole.strip_prefix('-') {
        return negative.parse::<u64>().ok().map(|_| 0);
    }
    whole.parse().ok()
}

fn read_pax<R: Read>(e: &mut Entry<'_, R>) -> io::Result<Pax> {
    let mut pax = Pax::default();
    let Some(exts) = e.pax_extensions()? else { return Ok(pax) };
    for ext in exts {
        let ext = ext?;
        let (k, v) = (ext.key_bytes(), ext.value_bytes());
        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
            pax.xattrs.push((name.to_vec(), v.to_vec()));
            continue;
        }
        match k {
            b"mtime" => pax.mtime = pax_time(v),
            b"GNU.sparse.major" => pax.sparse_major = pax_u64(v),
            b"GNU.sparse.name" => pax.sparse_name = Some(v.to_vec()),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => pax.sparse_size = pax_u64(v),
            b"GNU.sparse.map" => pax.sparse_map = Some(v.to_vec()),
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                return Err(invalid("GNU sparse format 0.0 is not supported".into()));
            }
            // GNU tar's text ACLs (SCHILY.acl.*) are dropped: squashfs has no xattr type for
            // system.posix_acl_*, the kernel would not expose them either.
            _ => {}
        }
    }
    Ok(pax)
}

/// Reads until `buf` is full; a short read means the stream ended inside the entry.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tar stream ends inside the file")),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A file stored as GNU PAX sparse (1.0 map in the data, or 0.1 map in a record): yields the
/// expanded contents, zeros in the holes.
struct Sparse<'a> {
    inner: Box<dyn Read + 'a>,
    /// (offset, length) of the data chunks, checked increasing and within `size`.
    map: Vec<(u64, u64)>,
    next: usize,
    pos: u64,
    size: u64,
}

impl Read for Sparse<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        while let Some(&(off, len)) = self.map.get(self.next) {
            if self.pos >= off + len {
                self.next += 1;
                continue;
            }
            if self.pos < off {
                let n = (off - self.pos).min(buf.len() as u64) as usize;
                buf[..n].fill(0);
                self.pos += n as u64;
                return Ok(n);
            }
            let n = (off + len - self.pos).min(buf.len() as u64) as usize;
            let got = self.inner.read(&mut buf[..n])?;
            if got == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the tar stream ends inside the file"));
            }
            self.pos += got as u64;
            return Ok(got);
        }
        let n = (self.size - self.pos).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

fn parse_map(nums: &[u64], size: u64) -> Result<Vec<(u64, u64)>, String> {
    if !nums.len().is_multiple_of(2) {
        return Err("odd number of values in the sparse map".into());
    }
    let mut map = Vec::with_capacity(nums.len() / 2);
    let mut end = 0u64;
    for pair in nums.chunks(2) {
        let (off, len) = (pair[0], pair[1]);
        let chunk_end = off.checked_add(len).ok_or("sparse map overflows")?;
        if off < end || chunk_end > size {
            return Err("sparse map out of order or beyond the file size".into());
        }
        end = chunk_end;
        map.push((off, len));
    }
    Ok(map)
}

/// Reads the decimal, newline-separated 1.0 sparse map at the start of the entry's data
/// (padded to 512 bytes); returns the map and the bytes it took.
fn read_map_v1(r: &mut dyn Read, stored: u64) -> Result<(Vec<u64>, u64), String> {
    let mut nums = Vec::new();
    let mut want: Option<u64> = None;
    let mut digits = Vec::new();
    let mut used = 0u64;
    let mut block = [0u8; 512];
    loop {
        if used + 512 > stored {
            return Err("sparse map longer than the entry".into());
        }
        read_full(r, &mut block).map_err(|e| e.to_string())?;
        used += 512;
        for &b in &block {
            if b != b'\n' {
                if !b.is_ascii_digit() || digits.len() > 20 {
                    return Err("bad sparse map".into());
                }
                digits.push(b);
                continue;
            }
            let n = std::str::from_utf8(&digits).ok().and_then(|s| s.parse::<u64>().ok()).ok_or("bad sparse map")?;
            digits.clear();
            match want {
                None => {
                    // Every pair needs at least 4 map bytes: bounds the count by the entry size.
                    if n > stored / 4 {
                        return Err("sparse map count too large".into());
                    }
                    want = Some(n * 2);
                }
                Some(_) => nums.push(n),
            }
            if want == Some(nums.len() as u64) {
                return Ok((nums, used));
            }
        }
    }
}

impl<'a, 'p, R: Read> Input<'a, 'p, R> {
    pub(super) fn new(
        entries: tar::Entries<'a, Counting<R>>,
        st: &'p mut State,
        count: Rc<Cell<u64>>,
        progress: &'p mut dyn FnMut(u64),
    ) -> Self {
        Input {
            entries,
            st,
            cur: None,
            queue: VecDeque::new(),
            ended: false,
            failed: false,
            count,
            reported: 0,
            progress,
        }
    }

    fn report(&mut self, force: bool) {
        let now = self.count.get();
        if force || now >= self.reported + (4 << 20) {
            self.reported = now;
            (self.progress)(now);
        }
    }

    fn next_job(&mut self) -> io::Result<Option<Job>> {
        loop {
            if let Some(job) = self.queue.pop_front() {
                return Ok(Some(job));
            }
            if self.ended {
                return Ok(None);
            }
            self.report(false);
            if self.cur.is_some() {
                self.read_chunk()?;
                continue;
            }
            match self.entries.next() {
                None => {
                    self.ended = true;
                    self.st.flush_fragment(&mut self.queue);
                    self.report(true);
                }
                Some(entry) => {
                    let entry = entry.map_err(|e| invalid(format!("reading the tar stream: {e}")))?;
                    self.entry(entry)?;
                }
            }
        }
    }

    /// Reads the current file's next block (or tail) and queues what it produces.
    fn read_chunk(&mut self) -> io::Result<()> {
        let bs = self.st.block_size;
        let Some(cur) = self.cur.as_mut() else { return Ok(()) };
        let want = cur.left.min(bs as u64) as usize;
        let mut buf = vec![0u8; want];
        read_full(&mut cur.data, &mut buf).map_err(|e| bad_entry(&cur.path, e))?;
        cur.left -= want as u64;
        cur.hash.update(&buf);
        self.st.bytes_in += want as u64;
        if want == bs {
            cur.full_blocks += 1;
            self.queue.push_back(Job::Block(buf));
            if cur.left == 0 {
                self.finish_file(&[])?;
            }
        } else {
            self.finish_file(&buf)?;
        }
        Ok(())
    }

    fn finish_file(&mut self, tail: &[u8]) -> io::Result<()> {
        let Some(cur) = self.cur.take() else { return Ok(()) };
        let digest: [u8; 32] = cur.hash.finalize().into();
        let key = (cur.size, digest);
        if let Some(&earlier) = self.st.dedup.get(&key) {
            if cur.full_blocks > 0 {
                self.queue.push_back(Job::FileEnd { dup: true });
            }
            self.st.tree.set_file(cur.node, earlier);
            return Ok(());
        }
        let mut data = FileData { size: cur.size, blocks: None, fragment: None };
        if cur.full_blocks > 0 {
            // The sink records block runs in the order of these records.
            self.queue.push_back(Job::FileEnd { dup: false });
            data.blocks = Some(self.st.block_runs);
            self.st.block_runs = self.st.block_runs.checked_add(1).ok_or_else(|| invalid("too many files".into()))?;
        }
        if !tail.is_empty() {
            data.fragment = Some(self.st.add_tail(tail, &mut self.queue));
        }
        self.st.dedup.insert(key, data);
        self.st.tree.set_file(cur.node, data);
        Ok(())
    }

    fn entry(&mut self, mut e: Entry<'a, R>) -> io::Result<()> {
        let ty = e.header().entry_type();
        if ty.is_pax_global_extensions() {
            return Ok(());
        }
        let pax = read_pax(&mut e).map_err(|err| bad_entry(&String::from_utf8_lossy(&e.path_bytes()), err))?;
        let raw_path = match &pax.sparse_name {
            Some(n) => n.clone(),
            None => e.path_bytes().into_owned(),
        };
        let path = String::from_utf8_lossy(&raw_path).into_owned();
        let comps = split_path(&raw_path).map_err(|m| bad_entry(&path, m))?;
        if self.st.excluded(&comps) {
            return Ok(());
        }
        let h = e.header();
        let perm = (h.mode().map_err(|err| bad_entry(&path, err))? & 0o7777) as u16;
        let uid = h.uid().ok().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad_entry(&path, "bad uid"))?;
        let gid = h.gid().ok().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| bad_entry(&path, "bad gid"))?;
        let mtime = match pax.mtime {
            Some(t) => t,
            None => h.mtime().map_err(|err| bad_entry(&path, err))?,
        };
        let mtime = u32::try_from(mtime).unwrap_or(u32::MAX);
        let xattr = self.st.xattrs.intern(pax.xattrs)?;
        let node = |kind| Node { kind, perm, uid, gid, mtime, xattr };
        let tree = &mut self.st.tree;
        use tar::EntryType as T;
        match ty {
            T::Regular | T::Continuous | T::GNUSparse => {
                let (data, size): (Box<dyn Read + 'a>, u64) = if pax.sparse_major.is_some() || pax.sparse_map.is_some()
                {
                    let size = pax.sparse_size.ok_or_else(|| bad_entry(&path, "sparse file without a size"))?;
                    let stored = e.size();
                    let mut inner: Box<dyn Read + 'a> = Box::new(e);
                    let nums = match (&pax.sparse_major, &pax.sparse_map) {
                        (Some(1), _) => read_map_v1(&mut inner, stored).map_err(|m| bad_entry(&path, m))?.0,
                        (_, Some(m)) => std::str::from_utf8(m)
                            .ok()
                            .and_then(|s| s.split(',').map(|n| n.parse::<u64>().ok()).collect::<Option<Vec<_>>>())
                            .ok_or_else(|| bad_entry(&path, "bad GNU.sparse.map"))?,
                        _ => return Err(bad_entry(&path, "unsupported GNU sparse format")),
                    };
                    let map = parse_map(&nums, size).map_err(|m| bad_entry(&path, m))?;
                    (Box::new(Sparse { inner, map, next: 0, pos: 0, size }), size)
                } else {
                    let size = e.size();
                    (Box::new(e), size)
                };
                let id = tree.add(&comps, node(Kind::File(FileData { size, ..FileData::default() })));
                let id = id.map_err(|m| bad_entry(&path, m))?;
                if size > 0 {
                    let hash = Sha256::new();
                    self.cur = Some(Current { data, path, node: id, size, left: size, hash, full_blocks: 0 });
                }
            }
            T::Link => {
                let target = e.link_name_bytes().ok_or_else(|| bad_entry(&path, "hard link without a target"))?;
                let target = split_path(&target).map_err(|m| bad_entry(&path, format!("link target: {m}")))?;
                tree.link(&comps, &target).map_err(|m| bad_entry(&path, m))?;
            }
            T::Symlink => {
                let target = e.link_name_bytes().ok_or_else(|| bad_entry(&path, "symlink without a target"))?;
                if target.is_empty() || target.len() > 4095 || target.contains(&0) {
                    return Err(bad_entry(&path, "bad symlink target"));
                }
                tree.add(&comps, node(Kind::Symlink(target.into_owned()))).map_err(|m| bad_entry(&path, m))?;
            }
            T::Char | T::Block => {
                let major = h.device_major().ok().flatten();
                let minor = h.device_minor().ok().flatten();
                let rdev = major
                    .zip(minor)
                    .and_then(|(a, b)| super::inode::encode_dev(a, b))
                    .ok_or_else(|| bad_entry(&path, "bad device numbers"))?;
                let kind = if ty == T::Char { Kind::CharDev(rdev) } else { Kind::BlockDev(rdev) };
                tree.add(&comps, node(kind)).map_err(|m| bad_entry(&path, m))?;
            }
            T::Fifo => {
                tree.add(&comps, node(Kind::Fifo)).map_err(|m| bad_entry(&path, m))?;
            }
            T::Directory => {
                tree.add(&comps, node(Kind::Dir(Default::default()))).map_err(|m| bad_entry(&path, m))?;
            }
            other => return Err(bad_entry(&path, format!("unsupported entry type {:?}", other.as_byte() as char))),
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Input<'_, '_, R> {
    type Item = io::Result<Job>;

    fn next(&mut self) -> Option<io::Result<Job>> {
        if self.failed {
            return None;
        }
        match self.next_job() {
            Ok(job) => job.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_expansion() {
        let data: &[u8] = b"abcdef";
        let map = parse_map(&[2, 3, 8, 3], 12).unwrap();
        let mut s = Sparse { inner: Box::new(data), map, next: 0, pos: 0, size: 12 };
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"\0\0abc\0\0\0def\0");
        assert!(parse_map(&[5, 3, 2, 1], 12).is_err());
        assert!(parse_map(&[5, 30], 12).is_err());
        assert!(parse_map(&[u64::MAX, 2], 12).is_err());
    }

    #[test]
    fn v1_map() {
        let mut block = b"2\n0\n5\n100\n7\n".to_vec();
        block.resize(512, 0);
        block.extend_from_slice(&[9; 12]);
        let (nums, used) = read_map_v1(&mut &block[..], block.len() as u64).unwrap();
        assert_eq!(nums, vec![0, 5, 100, 7]);
        assert_eq!(used, 512);
        let huge = b"99999999999\n".to_vec();
        assert!(read_map_v1(&mut &huge[..], 1024).is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time(b"1700000000.123"), Some(1_700_000_000));
        assert_eq!(pax_time(b"-5.5"), Some(0));
        assert_eq!(pax_time(b"x"), None);
    }
}
