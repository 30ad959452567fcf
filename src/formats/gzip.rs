//! Parallel gzip for tgz, the way pigz does it: the input is cut into blocks, each deflated on
//! its own core with the previous block's last 32 KiB as dictionary and ended with a sync flush,
//! so the pieces join into one ordinary gzip member that plain `gunzip` reads.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress};

use super::parallel::{ordered_map, threads};

const BLOCK: usize = 256 << 10;
const WINDOW: usize = 32 << 10;
/// An empty final block with fixed codes: ends a deflate stream after a sync flush.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

struct Block {
    dict: Vec<u8>,
    data: Vec<u8>,
}

struct Deflated {
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

/// A gzip writer compressing on every core; `finish` must be called to complete the file.
pub struct ParallelGzEncoder<W> {
    feed: Option<SyncSender<Vec<u8>>>,
    pending: Vec<u8>,
    worker: Option<JoinHandle<io::Result<W>>>,
}

impl<W: Write + Send + 'static> ParallelGzEncoder<W> {
    pub fn new(mut out: W, level: u32) -> ParallelGzEncoder<W> {
        let (tx, rx) = sync_channel::<Vec<u8>>(2);
        let worker = std::thread::spawn(move || -> io::Result<W> {
            // mtime 0, no name: the output depends on the input only. OS 3 = Unix.
            out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3])?;
            let mut dict = Vec::new();
            let blocks = rx.into_iter().map(|data: Vec<u8>| {
                let next = data[data.len().saturating_sub(WINDOW)..].to_vec();
                Ok::<_, io::Error>(Block { dict: std::mem::replace(&mut dict, next), data })
            });
            let mut crc = crc32fast::Hasher::new();
            let mut len = 0u64;
            ordered_map(
                threads(),
                4 * threads(),
                blocks,
                |b| deflate(&b, level),
                |d: io::Result<Deflated>| {
                    let d = d?;
                    out.write_all(&d.bytes)?;
                    crc.combine(&d.crc);
                    len += d.len;
                    Ok(())
                },
            )?;
            out.write_all(&FINAL_EMPTY_BLOCK)?;
            out.write_all(&crc.finalize().to_le_bytes())?;
            out.write_all(&(len as u32).to_le_bytes())?;
            out.flush()?;
            Ok(out)
        });
        ParallelGzEncoder { feed: Some(tx), pending: Vec::with_capacity(BLOCK), worker: Some(worker) }
    }

    fn send_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.pending, Vec::with_capacity(BLOCK));
        match &self.feed {
            Some(f) if f.send(block).is_ok() => Ok(()),
            // The worker stopped: its error says why.
            _ => Err(self.join().err().unwrap_or_else(|| io::Error::other("gzip worker stopped"))),
        }
    }

    fn join(&mut self) -> io::Result<W> {
        self.feed = None;
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("gzip worker panicked")),
            None => Err(io::Error::other("gzip worker already stopped")),
        }
    }

    /// Writes the end of the stream, waits for everything to be written and gives the
    /// underlying writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.send_pending()?;
        self.join()
    }
}

impl<W: Write + Send + 'static> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == BLOCK {
            self.send_pending()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W> Drop for ParallelGzEncoder<W> {
    fn drop(&mut self) {
        // Ends the worker (it sees the closed feed); an unfinished file is a partial output.
        self.feed = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn deflate(b: &Block, level: u32) -> io::Result<Deflated> {
    let mut c = Compress::new(Compression::new(level), false);
    if !b.dict.is_empty() {
        c.set_dictionary(&b.dict).map_err(io::Error::other)?;
    }
    let mut bytes = Vec::with_capacity(b.data.len() + b.data.len() / 8 + 128);
    // Sync flush byte-aligns the end so the next block's bytes can follow directly.
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&b.data[consumed..], &mut bytes, FlushCompress::Sync).map_err(io::Error::other)?;
        if c.total_in() as usize == b.data.len() && bytes.len() < bytes.capacity() {
            break;
        }
        bytes.reserve(64 << 10);
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b.data);
    Ok(Deflated { bytes, crc, len: b.data.len() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A Write that hands what it gets to a shared buffer (the encoder owns its writer).
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn gunzip_reads_it_back() {
        for size in [0usize, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 12345] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8 ^ (i >> 11) as u8).collect();
            let out = Shared::default();
            let mut gz = ParallelGzEncoder::new(out.clone(), 6);
            for piece in data.chunks(10_000) {
                gz.write_all(piece).unwrap();
            }
            gz.finish().unwrap();
            let gz_bytes = out.0.lock().unwrap().clone();
            let mut child =
                Command::new("gunzip").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let feeder = std::thread::spawn(move || stdin.write_all(&gz_bytes));
            let o = child.wait_with_output().unwrap();
            feeder.join().unwrap().unwrap();
            assert!(o.status.success(), "size {size}");
            assert!(o.stdout == data, "size {size}: content differs");
            if size > BLOCK {
                // The dictionary carries over: repeated data across blocks compresses well.
                assert!(out.0.lock().unwrap().len() < size / 4, "size {size}");
            }
        }
    }
}
