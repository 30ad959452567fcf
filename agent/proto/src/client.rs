//! The host side: connect to the agent through the VMM's vsock Unix socket and talk to it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{read_frame, write_frame, ProtoError, Request, Response, AGENT_PORT, PROTOCOL_VERSION};

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// One connection to the agent.
pub struct AgentClient {
    stream: UnixStream,
    pub agent: String,
}

impl AgentClient {
    /// Connects through `uds` (the VMM's vsock socket), retrying until `timeout` while the
    /// guest boots, and says hello.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Self, ProtoError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::try_connect(uds) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn try_connect(uds: &Path) -> Result<Self, ProtoError> {
        let mut stream = UnixStream::connect(uds)?;
        stream.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())?;
        let mut line = Vec::new();
        {
            let mut r = BufReader::new(&mut stream);
            r.read_until(b'\n', &mut line)?;
            // BufReader may have read past the line only if the agent spoke first; it never does.
        }
        if !line.starts_with(b"OK ") {
            return Err(ProtoError::Closed);
        }
        write_frame(&mut stream, &Request::Hello { version: PROTOCOL_VERSION })?;
        match read_frame(&mut stream)? {
            Response::Hello { version, agent } if version == PROTOCOL_VERSION => Ok(AgentClient { stream, agent }),
            Response::Hello { version, .. } => Err(ProtoError::Io(std::io::Error::other(format!(
                "agent speaks protocol {version}, we speak {PROTOCOL_VERSION}"
            )))),
            other => Err(ProtoError::Io(std::io::Error::other(format!("unexpected answer {other:?}")))),
        }
    }

    pub fn ping(&mut self) -> Result<(), ProtoError> {
        write_frame(&mut self.stream, &Request::Ping)?;
        match read_frame(&mut self.stream)? {
            Response::Pong => Ok(()),
            other => Err(ProtoError::Io(std::io::Error::other(format!("unexpected answer {other:?}")))),
        }
    }

    /// Runs `argv` with exactly `env`; `on_output(is_stderr, bytes)` sees output as it arrives.
    pub fn run(
        &mut self,
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&str>,
        mut on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExitStatus, ProtoError> {
        let req = Request::Run {
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            cwd: cwd.map(|c| c.as_bytes().to_vec()),
            chroot: None,
            stdin: Vec::new(),
        };
        write_frame(&mut self.stream, &req)?;
        loop {
            match read_frame(&mut self.stream)? {
                Response::Stdout(d) => on_output(false, &d),
                Response::Stderr(d) => on_output(true, &d),
                Response::Exited(c) => return Ok(ExitStatus::Code(c)),
                Response::Signaled(s) => return Ok(ExitStatus::Signal(s)),
                Response::Error(e) => return Err(ProtoError::Io(std::io::Error::other(e))),
                other => return Err(ProtoError::Io(std::io::Error::other(format!("unexpected answer {other:?}")))),
            }
        }
    }

    /// Asks the agent to sync and end the VM.
    pub fn power_off(mut self) -> Result<(), ProtoError> {
        write_frame(&mut self.stream, &Request::PowerOff)?;
        match read_frame(&mut self.stream) {
            Ok(Response::Bye) | Err(ProtoError::Closed) => Ok(()),
            Ok(other) => Err(ProtoError::Io(std::io::Error::other(format!("unexpected answer {other:?}")))),
            Err(e) => Err(e),
        }
    }
}
