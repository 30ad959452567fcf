//! A guard in front of every tar parser fed by the guest (the extra-data.d view, NAME.d, the
//! squashfs writer). The `tar` crate reads GNU long names/links and PAX records whole, sized by
//! the header, and expands sparse files to the size they claim; a hostile stream could make it
//! allocate gigabytes or zero-fill exabytes. This reader follows the stream's structure as the
//! bytes pass (headers, sparse extension blocks, data) and fails before a parser sees a header
//! that breaks a bound. By hand because no tar crate offers such limits.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Largest GNU long name/link or PAX record accepted.
pub const META_MAX: u64 = 1 << 20;
/// Largest size a sparse file may claim: 1 TiB (holes are expanded by the squashfs writer).
pub const SPARSE_SIZE_MAX: u64 = 1 << 40;
/// Most GNU sparse extension blocks after one header (21 chunks each).
pub const SPARSE_EXT_BLOCKS_MAX: u64 = 4096;

const BLOCK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Header,
    /// GNU sparse extension blocks follow the header; then `data` bytes.
    SparseExt,
    Data,
    /// A zero block was seen: what follows is not read by the tar parser.
    End,
}

/// Passes a tar stream through, checking it (see the module's first lines).
pub struct TarGuard<R> {
    inner: R,
    part: Part,
    block: [u8; BLOCK],
    filled: usize,
    /// Bytes of the current entry's data still to come, padding included.
    data_left: u64,
    /// The current entry's unpadded size (for records kept in `meta`).
    meta_size: u64,
    /// A PAX record being collected for checking.
    meta: Option<Vec<u8>>,
    /// A PAX `size` that overrides the next header's size field, as tar parsers do.
    next_size: Option<u64>,
    ext_blocks: u64,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("refused tar stream: {msg}"))
}

/// A numeric header field, read exactly as the `tar` crate reads it (a reader that disagreed
/// with the parser behind it could be shown a different stream): octal text up to the first
/// NUL, trimmed; or, when the top bit of the first byte is set, binary in the last 8 bytes
/// (here: all bytes, refusing what the crate would silently drop).
fn number(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(b)))
                .ok_or_else(|| bad("a size beyond 2^64".into()))?;
        }
        return Ok(n);
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let s = std::str::from_utf8(&field[..end]).map_err(|_| bad("a size that is not a number".into()))?;
    u64::from_str_radix(s.trim(), 8).map_err(|_| bad(format!("a size that is not a number ({s:?})")))
}

fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

impl<R> TarGuard<R> {
    pub fn new(inner: R) -> TarGuard<R> {
        TarGuard {
            inner,
            part: Part::Header,
            block: [0; BLOCK],
            filled: 0,
            data_left: 0,
            meta_size: 0,
            meta: None,
            next_size: None,
            ext_blocks: 0,
        }
    }

    /// Advances over `bytes`, which the caller is about to receive.
    fn inspect(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.part {
                Part::End => return Ok(()),
                Part::Data => {
                    let n = (self.data_left.min(bytes.len() as u64)) as usize;
                    if let Some(m) = &mut self.meta {
                        let want = (self.meta_size as usize).saturating_sub(m.len()).min(n);
                        m.extend_from_slice(&bytes[..want]);
                    }
                    self.data_left -= n as u64;
                    bytes = &bytes[n..];
                    if self.data_left == 0 {
                        self.entry_done()?;
                    }
                }
                Part::Header | Part::SparseExt => {
                    let n = (BLOCK - self.filled).min(bytes.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
                    self.filled += n;
                    bytes = &bytes[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        if self.part == Part::Header {
                            self.header()?;
                        } else {
                            self.sparse_ext()?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn header(&mut self) -> io::Result<()> {
        let b = &self.block;
        if b.iter().all(|&x| x == 0) {
            // The `tar` crate stops at the first zero block.
            self.part = Part::End;
            return Ok(());
        }
        let kind = b[156];
        // Extension records only count as such in a ustar or GNU header, as in the crate.
        let recognized = &b[257..265] == b"ustar\x0000" || &b[257..265] == b"ustar  \0";
        let header_size = number(&b[124..136])?;
        let size = match kind {
            // Records describing the next entry are never overridden themselves.
            b'x' | b'g' | b'L' | b'K' => header_size,
            _ => self.next_size.take().unwrap_or(header_size),
        };
        match kind {
            b'x' | b'g' | b'L' | b'K' if size > META_MAX => {
                return Err(bad(format!(
                    "a {} record of {size} bytes (at most {META_MAX})",
                    match kind {
                        b'L' => "long name",
                        b'K' => "long link",
                        _ => "PAX",
                    }
                )));
            }
            // Only a local record's `size` applies to the next entry; a later one replaces it.
            b'x' if recognized => {
                self.meta = Some(Vec::with_capacity(size as usize));
                self.meta_size = size;
                self.next_size = None;
            }
            b'S' => {
                let real = number(&b[483..495])?;
                if real > SPARSE_SIZE_MAX {
                    return Err(bad(format!("a sparse file of {real} bytes (at most {SPARSE_SIZE_MAX})")));
                }
            }
            _ => {}
        }
        self.data_left = padded(size);
        if kind == b'S' && b[482] == 1 {
            self.ext_blocks = 0;
            self.part = Part::SparseExt;
        } else {
            self.start_data()?;
        }
        Ok(())
    }

    fn sparse_ext(&mut self) -> io::Result<()> {
        self.ext_blocks += 1;
        if self.ext_blocks > SPARSE_EXT_BLOCKS_MAX {
            return Err(bad(format!("more than {SPARSE_EXT_BLOCKS_MAX} sparse extension blocks")));
        }
        if self.block[504] != 1 {
            self.start_data()?;
        }
        Ok(())
    }

    fn start_data(&mut self) -> io::Result<()> {
        if self.data_left == 0 {
            self.entry_done()
        } else {
            self.part = Part::Data;
            Ok(())
        }
    }

    /// The current entry's data is through: check a collected PAX record.
    fn entry_done(&mut self) -> io::Result<()> {
        self.part = Part::Header;
        let Some(meta) = self.meta.take() else { return Ok(()) };
        let mut size_seen = false;
        for (key, value) in pax_records(&meta)? {
            // As the crate: the first `size`, parsed untrimmed; one it cannot parse is ignored.
            let number = || std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok());
            match key {
                b"size" if !size_seen => {
                    size_seen = true;
                    self.next_size = number();
                }
                b"GNU.sparse.size" | b"GNU.sparse.realsize" => {
                    let n = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u64>().ok());
                    let n = n.ok_or_else(|| bad("a sparse size that is not a number".into()))?;
                    if n > SPARSE_SIZE_MAX {
                        return Err(bad(format!("a sparse file of {n} bytes (at most {SPARSE_SIZE_MAX})")));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `LEN KEY=VALUE\n` records; a malformed one is an error (parsers disagree on them).
fn pax_records(mut data: &[u8]) -> io::Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data.iter().position(|&b| b == b' ').ok_or_else(|| bad("a malformed PAX record".into()))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > space + 1 && l <= data.len())
            .ok_or_else(|| bad("a malformed PAX record".into()))?;
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").ok_or_else(|| bad("a malformed PAX record".into()))?;
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(|| bad("a malformed PAX record".into()))?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.inspect(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, size: u64, name: &str) -> [u8; BLOCK] {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_path(name).unwrap();
        h.set_cksum();
        *h.as_bytes()
    }

    /// Reads the whole stream through the guard into the `tar` crate, as the users do.
    fn parse(stream: Vec<u8>) -> io::Result<Vec<String>> {
        let mut a = tar::Archive::new(TarGuard::new(std::io::Cursor::new(stream)));
        let mut names = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            names.push(e.path()?.display().to_string());
            io::copy(&mut e, &mut io::sink())?;
        }
        Ok(names)
    }

    /// A header claiming an 8 GiB record, followed by a little data: refused at the header,
    /// before any parser reads (the stream would be 8 GiB long otherwise).
    fn bomb(kind: u8) -> Vec<u8> {
        let mut s = header(kind, 8 << 30, "././@LongLink").to_vec();
        s.extend_from_slice(&[b'a'; BLOCK * 4]);
        s
    }

    #[test]
    fn huge_metadata_records_are_refused_at_once() {
        for kind in [b'L', b'K', b'x', b'g'] {
            let started = std::time::Instant::now();
            let e = parse(bomb(kind)).unwrap_err();
            assert!(e.to_string().contains("refused tar stream"), "{kind}: {e}");
            assert!(started.elapsed().as_secs_f64() < 1.0);
        }
    }

    #[test]
    fn a_sparse_file_of_an_exabyte_is_refused() {
        let mut h = header(b'S', 512, "sparse");
        // realsize 2^60 in base-256.
        h[483] = 0x80;
        h[483 + 4..495].copy_from_slice(&(1u64 << 60).to_be_bytes());
        let mut t = tar::Header::from_byte_slice(&h).clone();
        t.set_cksum();
        let mut s = t.as_bytes().to_vec();
        s.extend_from_slice(&[0; BLOCK * 3]);
        let e = parse(s).unwrap_err();
        assert!(e.to_string().contains("a sparse file of 1152921504606846976 bytes"), "{e}");

        // The same through PAX 1.0 records.
        let record = b"30 GNU.sparse.realsize=1152921504606846976\n";
        let mut rec = record.to_vec();
        let len = rec.len();
        rec.splice(0..2, format!("{len}").bytes());
        let mut s = header(b'x', rec.len() as u64, "pax").to_vec();
        let mut data = rec.clone();
        data.resize(BLOCK, 0);
        s.extend_from_slice(&data);
        s.extend_from_slice(&header(b'0', 0, "f"));
        s.extend_from_slice(&[0; BLOCK * 2]);
        let e = parse(s).unwrap_err();
        assert!(e.to_string().contains("sparse file"), "{e}");
    }

    #[test]
    fn ordinary_streams_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let long = "d/".repeat(200) + "file";
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1000);
        h.set_mode(0o644);
        b.append_pax_extensions([("SCHILY.xattr.user.x", &b"v"[..])]).unwrap();
        b.append_data(&mut h, "big", &[7u8; 1000][..]).unwrap();
        let stream = b.into_inner().unwrap();
        assert_eq!(parse(stream.clone()).unwrap(), vec![long, "big".to_owned()]);
        // Byte for byte, in any read sizes.
        let mut g = TarGuard::new(std::io::Cursor::new(stream.clone()));
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = g.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, stream);
    }

    #[test]
    fn sparse_extension_chains_are_bounded() {
        let mut h = header(b'S', 0, "sparse");
        h[483..495].copy_from_slice(b"00000000000\0");
        h[482] = 1;
        let mut t = tar::Header::from_byte_slice(&h).clone();
        t.set_cksum();
        let mut s = t.as_bytes().to_vec();
        let mut ext = [0u8; BLOCK];
        ext[504] = 1;
        for _ in 0..(SPARSE_EXT_BLOCKS_MAX + 2) {
            s.extend_from_slice(&ext);
        }
        let mut g = TarGuard::new(std::io::Cursor::new(s));
        let e = io::copy(&mut g, &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("sparse extension blocks"), "{e}");
    }

    /// A header, then `total` bytes of data made up as they are read (8 GiB costs nothing).
    struct Endless {
        head: Vec<u8>,
        pos: u64,
        total: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let end = self.head.len() as u64 + self.total;
            let n = (end - self.pos).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let at = self.pos + i as u64;
                *b = self.head.get(at as usize).copied().unwrap_or(b'a');
            }
            self.pos += n as u64;
            Ok(n)
        }
    }

    fn bombs() -> Vec<(&'static str, Endless)> {
        let mut v: Vec<(&'static str, Endless)> = [(b'L', "L"), (b'K', "K"), (b'x', "x")]
            .into_iter()
            .map(|(k, name)| {
                (name, Endless { head: header(k, 8 << 30, "././@LongLink").to_vec(), pos: 0, total: 8 << 30 })
            })
            .collect();
        // A sparse file claiming 2^60 bytes, with 512 bytes stored and no map entries.
        let mut h = header(b'S', 512, "sparse");
        h[483] = 0x80;
        h[483 + 4..495].copy_from_slice(&(1u64 << 60).to_be_bytes());
        let mut t = tar::Header::from_byte_slice(&h).clone();
        t.set_cksum();
        let mut head = t.as_bytes().to_vec();
        head.extend_from_slice(&[0; BLOCK]);
        v.push(("sparse", Endless { head, pos: 0, total: 2 * BLOCK as u64 }));
        v
    }

    const CHILD: &str = "MICRODIB_TAR_BOMB_CHILD";

    /// The parsers themselves (the extra-data.d view, NAME.d, the squashfs writer) refuse each
    /// bomb within a second, in a process limited to 512 MiB of address space. Runs in a child
    /// (this test binary again), since the limit would bind every test's threads.
    #[test]
    fn every_guest_tar_parser_refuses_bombs_under_a_memory_limit() {
        if std::env::var_os(CHILD).is_some() {
            let limit = libc::rlimit { rlim_cur: 512 << 20, rlim_max: 512 << 20 };
            // SAFETY: setrlimit reads the struct we pass; the result is checked.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
            let dir = std::env::temp_dir().join(format!("microdib-tar-bombs-{}", std::process::id()));
            for (name, bomb) in bombs() {
                let started = std::time::Instant::now();
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let r = crate::engine::host_view::HostView::unpack(&dir, bomb, 16 << 30);
                assert!(r.is_err(), "host view took the {name} bomb");
                let r = crate::engine::named_dir::copy_out(
                    bombs().into_iter().find(|b| b.0 == name).unwrap().1,
                    &dir.join("x.d"),
                    u64::MAX,
                );
                assert!(r.is_err(), "NAME.d took the {name} bomb");
                let out = std::fs::File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.join("sq"))
                    .unwrap();
                let opts = crate::formats::squashfs::SquashfsOptions { threads: 1, ..Default::default() };
                let bomb = bombs().into_iter().find(|b| b.0 == name).unwrap().1;
                let r = crate::formats::squashfs::write_from_tar(bomb, &out, &opts, &mut |_| {});
                assert!(r.is_err(), "squashfs took the {name} bomb");
                let secs = started.elapsed().as_secs_f64();
                assert!(secs < 1.0, "the {name} bomb took {secs:.2} s");
                println!("refused {name}");
            }
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!(
                    "{}::every_guest_tar_parser_refuses_bombs_under_a_memory_limit",
                    module_path!().trim_start_matches("microdib::")
                ),
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if started.elapsed().as_secs() > 30 {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut out = String::new();
        let _ = child.stdout.take().unwrap().read_to_string(&mut out);
        assert!(status.is_some_and(|s| s.success()), "the child failed or hung ({status:?}):\n{out}");
        for name in ["L", "K", "x", "sparse"] {
            assert!(out.contains(&format!("refused {name}\n")), "{out}");
        }
    }

    /// The guard reads sizes exactly as the `tar` crate does: otherwise a stream could show it
    /// one layout and the parser another (a bomb header hidden in what the guard took for data).
    #[test]
    fn the_guard_and_the_parser_agree_on_sizes() {
        // "12\0 34": the crate reads 0o12 = 10 bytes (up to the NUL), so must the guard; what
        // follows those 10 bytes (padded to 512) is a header, here a 8 GiB long-name bomb.
        let mut h = header(b'0', 10, "f");
        h[124..136].copy_from_slice(b"12\0 34\0\0\0\0\0\0");
        let mut t = tar::Header::from_byte_slice(&h).clone();
        t.set_cksum();
        let mut s = t.as_bytes().to_vec();
        s.extend_from_slice(&[b'd'; BLOCK]);
        s.extend_from_slice(&bomb(b'L'));
        let e = parse(s).unwrap_err();
        assert!(e.to_string().contains("long name record"), "{e}");

        // A PAX size with a space is ignored by the crate (the header's size counts): the guard
        // must not take it either.
        let rec = b"13 size= 512\n";
        let mut s = header(b'x', rec.len() as u64, "pax").to_vec();
        let mut data = rec.to_vec();
        data.resize(BLOCK, 0);
        s.extend_from_slice(&data);
        s.extend_from_slice(&header(b'0', 0, "empty"));
        s.extend_from_slice(&bomb(b'K'));
        let e = parse(s).unwrap_err();
        assert!(e.to_string().contains("long link record"), "{e}");
    }
}

/// What a guest's stream may cost the host, counted as it is read: its bytes (headers, records,
/// data: whatever a PAX `size` or a sparse map says, it is what was read) and a fixed cost per
/// entry, which the parser's caller adds (`charge_entry`).
#[derive(Clone)]
pub struct Budget {
    spent: Rc<Cell<u64>>,
    limit: u64,
}

/// What each entry costs besides its bytes: a block and an inode where it lands, so a stream of
/// empty entries is bounded too.
pub const ENTRY_COST: u64 = 4096;

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget { spent: Rc::new(Cell::new(0)), limit }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the stream has used it all (a parser error then means: over budget).
    pub fn spent(&self) -> bool {
        self.spent.get() >= self.limit
    }

    /// One more entry; false once over budget.
    pub fn charge_entry(&self) -> bool {
        self.spent.set(self.spent.get().saturating_add(ENTRY_COST));
        self.spent.get() <= self.limit
    }

    /// `stream`, ending with an error once the budget is spent.
    pub fn reader<R: Read>(&self, stream: R) -> Budgeted<R> {
        Budgeted { inner: stream, budget: self.clone() }
    }
}

/// A stream read against a `Budget`.
pub struct Budgeted<R> {
    inner: R,
    budget: Budget,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.limit.saturating_sub(self.budget.spent.get());
        if left == 0 {
            return Err(io::Error::other("the stream is over its budget"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.spent.set(self.budget.spent.get() + n as u64);
        Ok(n)
    }
}
