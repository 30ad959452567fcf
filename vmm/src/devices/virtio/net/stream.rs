//! The framing on the passt socket (qemu's "stream" netdev): each Ethernet frame is sent as a
//! 4-byte big-endian length followed by the frame. Both halves are non-blocking and bounded: the
//! reader holds at most one buffer of not-yet-delivered bytes, the writer at most `capacity`.

use std::io::{ErrorKind, Read, Write};

/// Size of the length prefix.
pub const PREFIX_LEN: usize = 4;
/// Largest frame the protocol allows: a 64 KiB IP packet plus the Ethernet header.
pub const MAX_FRAME: usize = 65535 + 14;
/// The reader's buffer: two largest frames, so a read is rarely cut short by a frame boundary.
const READ_BUF: usize = 2 * (PREFIX_LEN + MAX_FRAME);

/// Why the reader cannot produce more frames; every case ends the use of the backend.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the backend closed the connection")]
    Closed,
    #[error("the backend sent a frame length of {0} bytes (must be 1 to {MAX_FRAME})")]
    BadLength(u32),
    #[error("reading from the backend failed")]
    Io(#[source] std::io::Error),
}

/// Reassembles frames from whatever pieces the socket returns.
pub struct FrameReader {
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader { buf: vec![0; READ_BUF].into_boxed_slice(), start: 0, end: 0 }
    }
}

impl FrameReader {
    /// The complete frame at the front of the buffer, as (offset, length), if there is one.
    fn complete(&self) -> Result<Option<(usize, usize)>, StreamError> {
        let pending = &self.buf[self.start..self.end];
        let Some(prefix) = pending.first_chunk::<PREFIX_LEN>() else { return Ok(None) };
        let len = u32::from_be_bytes(*prefix);
        if len == 0 || len as usize > MAX_FRAME {
            return Err(StreamError::BadLength(len));
        }
        let len = len as usize;
        Ok((pending.len() >= PREFIX_LEN + len).then_some((self.start + PREFIX_LEN, len)))
    }

    /// Returns the next complete frame, reading from `src` only if none is buffered yet. `None`
    /// means `src` has nothing more for now. The frame stays at the front until `consume`.
    pub fn next_frame(&mut self, src: &mut impl Read) -> Result<Option<&[u8]>, StreamError> {
        loop {
            if let Some((off, len)) = self.complete()? {
                return Ok(Some(&self.buf[off..off + len]));
            }
            if self.end == self.buf.len() {
                // Make room: the incomplete frame moves to the front (it fits: see READ_BUF).
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match src.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(StreamError::Closed),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Io(e)),
            }
        }
    }

    /// Drops the frame `next_frame` returned.
    pub fn consume(&mut self) {
        if let Ok(Some((off, len))) = self.complete() {
            self.start = off + len;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
        }
    }

    /// Whether a complete frame is waiting in the buffer (so reading the socket is not needed).
    pub fn has_frame(&self) -> bool {
        matches!(self.complete(), Ok(Some(_)))
    }
}

/// Queues length-prefixed frames and writes them out as the socket accepts them.
pub struct FrameWriter {
    buf: Vec<u8>,
    /// Bytes before this were already written.
    start: usize,
    capacity: usize,
}

impl FrameWriter {
    /// A writer that holds at most `capacity` bytes (prefixes included) not yet written.
    pub fn new(capacity: usize) -> Self {
        FrameWriter { buf: Vec::new(), start: 0, capacity }
    }

    /// Bytes waiting for the socket.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether a frame of `len` bytes can be queued now.
    pub fn has_room(&self, len: usize) -> bool {
        self.pending() + PREFIX_LEN + len <= self.capacity
    }

    /// Queues one frame whose bytes `fill` writes into the slice it is given (of exactly `len`
    /// bytes). Returns false, queueing nothing, if there is no room or `fill` fails.
    pub fn push_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        let Ok(len32) = u32::try_from(len) else { return false };
        if len == 0 || len > MAX_FRAME || !self.has_room(len) {
            return false;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let at = self.buf.len();
        self.buf.extend_from_slice(&len32.to_be_bytes());
        self.buf.resize(at + PREFIX_LEN + len, 0);
        if !fill(&mut self.buf[at + PREFIX_LEN..]) {
            self.buf.truncate(at);
            return false;
        }
        true
    }

    /// Writes as much as `dst` takes without blocking. Errors (other than "would block") mean
    /// the backend is gone.
    pub fn flush(&mut self, dst: &mut impl Write) -> std::io::Result<()> {
        while self.start < self.buf.len() {
            match dst.write(&self.buf[self.start..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(())
    }

    /// Forgets everything queued (the backend is gone).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A source that returns its chunks one read at a time, then "would block".
    struct Chunks(VecDeque<Vec<u8>>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(mut c) = self.0.pop_front() else { return Err(ErrorKind::WouldBlock.into()) };
            let n = c.len().min(buf.len());
            buf[..n].copy_from_slice(&c[..n]);
            if n < c.len() {
                self.0.push_front(c.split_off(n));
            }
            Ok(n)
        }
    }

    fn framed(frame: &[u8]) -> Vec<u8> {
        let mut v = (frame.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        v
    }

    #[test]
    fn frames_split_and_joined_across_reads() {
        let a = framed(&[1; 100]);
        let b = framed(&[2; 3]);
        let c = framed(&[3; 60000]);
        let mut joined = a[50..].to_vec();
        joined.extend_from_slice(&b);
        joined.extend_from_slice(&c[..2]);
        let mut src = Chunks(VecDeque::from([a[..2].to_vec(), a[2..50].to_vec(), joined, c[2..].to_vec()]));
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        while let Some(f) = r.next_frame(&mut src).unwrap() {
            got.push(f.to_vec());
            r.consume();
        }
        assert_eq!(got, vec![vec![1; 100], vec![2; 3], vec![3; 60000]]);
        assert!(!r.has_frame());
    }

    #[test]
    fn many_large_frames_wrap_the_buffer() {
        let frame: Vec<u8> = (0..MAX_FRAME).map(|i| i as u8).collect();
        let mut all = Vec::new();
        for _ in 0..5 {
            all.extend(framed(&frame));
        }
        let chunks = all.chunks(40000).map(<[u8]>::to_vec).collect();
        let mut src = Chunks(chunks);
        let mut r = FrameReader::default();
        for _ in 0..5 {
            assert_eq!(r.next_frame(&mut src).unwrap().unwrap(), &frame[..]);
            r.consume();
        }
        assert!(r.next_frame(&mut src).unwrap().is_none());
    }

    #[test]
    fn bad_lengths_and_eof_are_errors() {
        for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
            let mut src = Chunks(VecDeque::from([len.to_be_bytes().to_vec()]));
            let mut r = FrameReader::default();
            assert!(matches!(r.next_frame(&mut src), Err(StreamError::BadLength(l)) if l == len));
        }
        let mut r = FrameReader::default();
        assert!(matches!(r.next_frame(&mut &[0u8, 0][..]), Err(StreamError::Closed)));
    }

    /// A sink that takes at most `room` bytes, then "would block".
    struct Sink {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_keeps_partial_writes_and_is_bounded() {
        let mut w = FrameWriter::new(20);
        assert!(w.push_with(6, |b| {
            b.copy_from_slice(b"abcdef");
            true
        }));
        assert!(w.has_room(6) && !w.has_room(7));
        assert!(!w.push_with(11, |_| true), "over capacity");
        assert!(!w.push_with(0, |_| true), "empty frame");
        assert!(!w.push_with(3, |_| false), "fill failed");
        assert_eq!(w.pending(), 10);
        let mut s = Sink { got: Vec::new(), room: 7 };
        w.flush(&mut s).unwrap();
        assert_eq!(w.pending(), 3);
        assert!(w.push_with(2, |b| {
            b.copy_from_slice(b"gh");
            true
        }));
        s.room = 100;
        w.flush(&mut s).unwrap();
        assert_eq!(w.pending(), 0);
        assert_eq!(s.got, b"\0\0\0\x06abcdef\0\0\0\x02gh");
    }
}
