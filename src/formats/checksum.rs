//! `--checksum`: md5 and sha256 of each output, each on its own thread (virt-dib runs md5sum
//! and sha256sum at the same time), fed while the output is written where the format allows.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use md5::Digest;

use super::sparse::{data_extents, read_block};

const CHUNK: usize = 1 << 20;

/// The two digests of one file, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    pub md5: String,
    pub sha256: String,
}

/// Hashes a byte stream on two threads.
pub struct Summer {
    feeds: Vec<SyncSender<Arc<[u8]>>>,
    md5: JoinHandle<String>,
    sha256: JoinHandle<String>,
    pending: Vec<u8>,
}

fn hasher<D: Digest>() -> (SyncSender<Arc<[u8]>>, JoinHandle<String>) {
    let (tx, rx) = sync_channel::<Arc<[u8]>>(8);
    let h = std::thread::spawn(move || {
        let mut d = D::new();
        for chunk in rx {
            d.update(&chunk);
        }
        d.finalize().iter().map(|b| format!("{b:02x}")).collect()
    });
    (tx, h)
}

impl Default for Summer {
    fn default() -> Self {
        Self::new()
    }
}

impl Summer {
    pub fn new() -> Summer {
        let (m, md5) = hasher::<md5::Md5>();
        let (s, sha256) = hasher::<sha2::Sha256>();
        Summer { feeds: vec![m, s], md5, sha256, pending: Vec::with_capacity(CHUNK) }
    }

    pub fn update(&mut self, data: &[u8]) {
        if self.pending.len() + data.len() > CHUNK {
            self.flush_pending();
        }
        if data.len() >= CHUNK {
            self.send(Arc::from(data));
        } else {
            self.pending.extend_from_slice(data);
        }
    }

    /// Shares one buffer between both threads without copying (holes of sparse files).
    fn send(&mut self, chunk: Arc<[u8]>) {
        for f in &self.feeds {
            let _ = f.send(Arc::clone(&chunk));
        }
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let chunk: Arc<[u8]> = Arc::from(std::mem::take(&mut self.pending));
            self.pending.reserve(CHUNK);
            self.send(chunk);
        }
    }

    pub fn finish(mut self) -> Sums {
        self.flush_pending();
        self.feeds.clear();
        let join = |h: JoinHandle<String>| h.join().unwrap_or_default();
        Sums { md5: join(self.md5), sha256: join(self.sha256) }
    }
}

/// A writer that hashes what goes through it.
pub struct HashingWriter<W: Write> {
    inner: W,
    summer: Option<Summer>,
}

impl<W: Write> HashingWriter<W> {
    /// `hash` false makes it a plain pass-through (no --checksum).
    pub fn new(inner: W, hash: bool) -> Self {
        HashingWriter { inner, summer: hash.then(Summer::new) }
    }

    pub fn finish(mut self) -> io::Result<(W, Option<Sums>)> {
        self.inner.flush()?;
        Ok((self.inner, self.summer.map(Summer::finish)))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(s) = &mut self.summer {
            s.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sums of a file already written (raw disks, and formats whose header is written last):
/// holes are hashed from a shared zero buffer, not read.
pub fn sum_file(path: &Path) -> io::Result<Sums> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let zeros: Arc<[u8]> = Arc::from(vec![0u8; CHUNK]);
    let mut s = Summer::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0;
    let hash_zeros = |s: &mut Summer, mut n: u64| {
        s.flush_pending();
        while n > 0 {
            let k = n.min(CHUNK as u64) as usize;
            s.send(if k == CHUNK { Arc::clone(&zeros) } else { Arc::from(&zeros[..k]) });
            n -= k as u64;
        }
    };
    for (start, end) in data_extents(&f, len)? {
        hash_zeros(&mut s, start - at);
        let mut pos = start;
        while pos < end {
            let k = (end - pos).min(CHUNK as u64) as usize;
            read_block(&f, pos, &mut buf[..k])?;
            s.update(&buf[..k]);
            pos += k as u64;
        }
        at = end;
    }
    hash_zeros(&mut s, len - at);
    Ok(s.finish())
}

/// A checksum file in coreutils' format, naming the file as the user did (mode 0640).
pub fn write_sum_file(p: &Path, sum: &str, shown: &Path) -> io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(o.write(true).create_new(true), 0o640);
    let mut file = o.open(p)?;
    writeln!(file, "{sum}  {}", shown.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    #[test]
    fn sums_match_coreutils() {
        let d = std::env::temp_dir().join(format!("microdib-sums-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // Sparse with data at odd places, larger than a chunk.
        let data = d.join("out.raw");
        let f = File::create(&data).unwrap();
        f.set_len((5 << 20) + 77).unwrap();
        f.write_all_at(b"hello microdib\n", 3).unwrap();
        f.write_all_at(&vec![7u8; (1 << 20) + 5], 3 << 20).unwrap();
        let from_file = sum_file(&data).unwrap();
        let mut w = HashingWriter::new(Vec::new(), true);
        w.write_all(&std::fs::read(&data).unwrap()).unwrap();
        let (_, streamed) = w.finish().unwrap();
        assert_eq!(Some(&from_file), streamed.as_ref());
        for (tool, ext, sum) in [("md5sum", "md5", &from_file.md5), ("sha256sum", "sha256", &from_file.sha256)] {
            let sum_path = d.join(format!("out.raw.{ext}"));
            write_sum_file(&sum_path, sum, &data).unwrap();
            let expect = Command::new(tool).arg(&data).output().unwrap().stdout;
            assert_eq!(std::fs::read(&sum_path).unwrap(), expect, "{tool}");
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sum_path).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o640, "with umask 022");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
