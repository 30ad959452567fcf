//! The protocol between microdib on the host and its agent, the guest's PID 1, over vsock.
//!
//! Framing: every message is a little-endian u32 length followed by that many bytes of
//! postcard-encoded [`Request`] (host to guest) or [`Response`] (guest to host). Frames over
//! [`MAX_FRAME`] are refused before any allocation. A connection carries one conversation at a
//! time; several commands run at once over several connections.

pub mod client;
pub mod net;

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change; both sides say theirs in `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Largest frame either side accepts.
pub const MAX_FRAME: u32 = 16 << 20;
/// Serial number of the appliance's root disk (squashfs); the agent mounts the disk that has it.
pub const APPLIANCE_DISK_SERIAL: &str = "microdib-appliance";
/// The appliance's PATH: the agent's own commands and the host's (`guest::paths`) use this one.
pub const GUEST_PATH: &str = "/sbin:/usr/sbin:/bin:/usr/bin";
/// Printed on the serial console when the agent is ready.
pub const READY_BANNER: &str = "microdib-agent: ready";

/// Host to guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello {
        version: u32,
    },
    Ping,
    /// Run a program. `env` is the whole environment (nothing is inherited). `chroot` runs it
    /// inside that directory with /proc, /sys and /dev bind-mounted. Answered with output
    /// frames as they come, then `Exited`/`Signaled` (or `Error` if it could not start).
    Run {
        argv: Vec<Vec<u8>>,
        env: Vec<(Vec<u8>, Vec<u8>)>,
        cwd: Option<Vec<u8>>,
        chroot: Option<Vec<u8>>,
        stdin: Input,
    },
    /// A piece of the running command's standard input (after `Run` with `Input::Stream`).
    Stdin(Vec<u8>),
    /// End of the running command's standard input.
    StdinEnd,
    /// Unpack a tar stream (sent as `Stdin` frames) into `dir`, keeping owners, modes, links,
    /// device nodes, sparse files and xattrs where the guest's tar can. Answered like `Run`.
    TarIn {
        dir: Vec<u8>,
    },
    /// Pack `dir` into a tar stream, sent back as `Stdout` frames. Answered like `Run`.
    TarOut {
        dir: Vec<u8>,
    },
    /// Read a whole (small) file: answered with `File`.
    ReadFile {
        path: Vec<u8>,
    },
    /// Create or replace a file with `data` and permission bits `mode`: answered with `Done`.
    WriteFile {
        path: Vec<u8>,
        mode: u32,
        data: Vec<u8>,
    },
    /// Flush file systems and end the VM.
    PowerOff,
}

/// Where a command's standard input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// `Stdin` frames from the host until `StdinEnd`.
    Stream,
}

/// Guest to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        version: u32,
        agent: String,
    },
    Pong,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(i32),
    Signaled(i32),
    /// The request could not be carried out.
    Error(String),
    /// PowerOff accepted; the VM is going down.
    Bye,
    /// The contents asked for with `ReadFile`.
    File(Vec<u8>),
    /// A request without other results succeeded.
    Done,
}

/// Protocol-level failures.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("the connection closed")]
    Closed,
}

/// Writes one framed message.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
    let body = postcard::to_stdvec(msg)?;
    let len = u32::try_from(body.len()).ok().filter(|&l| l <= MAX_FRAME).ok_or(ProtoError::TooLarge(u32::MAX))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one framed message; `Closed` on a clean end of stream before a frame starts.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(postcard::from_bytes(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msgs = vec![
            Request::Hello { version: PROTOCOL_VERSION },
            Request::Run {
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo \xff".to_vec()],
                env: vec![(b"PATH".to_vec(), b"/bin".to_vec())],
                cwd: Some(b"/".to_vec()),
                chroot: None,
                stdin: Input::Bytes(vec![]),
            },
            Request::PowerOff,
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write_frame(&mut buf, m).unwrap();
        }
        let mut r = std::io::Cursor::new(buf);
        for m in &msgs {
            assert_eq!(&read_frame::<_, Request>(&mut r).unwrap(), m);
        }
        assert!(matches!(read_frame::<_, Request>(&mut r), Err(ProtoError::Closed)));
    }

    #[test]
    fn hostile_frames_are_refused() {
        // Oversized length: refused without allocating it.
        let mut r = std::io::Cursor::new((MAX_FRAME + 1).to_le_bytes().to_vec());
        assert!(matches!(read_frame::<_, Response>(&mut r), Err(ProtoError::TooLarge(_))));
        // Truncated body, garbage body, truncated length.
        let mut r = std::io::Cursor::new([10u8, 0, 0, 0, 1, 2].to_vec());
        assert!(matches!(read_frame::<_, Response>(&mut r), Err(ProtoError::Io(_))));
        let mut r = std::io::Cursor::new([3u8, 0, 0, 0, 200, 200, 200].to_vec());
        assert!(matches!(read_frame::<_, Response>(&mut r), Err(ProtoError::Decode(_))));
        let mut r = std::io::Cursor::new([3u8, 0].to_vec());
        assert!(matches!(read_frame::<_, Response>(&mut r), Err(ProtoError::Io(_))));
        // A vector length prefix claiming far more elements than the frame holds.
        let mut r = std::io::Cursor::new([6u8, 0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f].to_vec());
        assert!(read_frame::<_, Response>(&mut r).is_err());
    }
}
