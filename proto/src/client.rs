//! The host side: connect to the agent through the VMM's vsock Unix socket and talk to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{read_frame, write_frame, Input, ProtoError, Request, Response, AGENT_PORT, PROTOCOL_VERSION};

/// Size of the Stdin frames we send.
const STDIN_CHUNK: usize = 256 * 1024;

fn run_request(argv: &[&str], env: &[(&str, &str)], cwd: Option<&str>, stdin: Input) -> Request {
    run_request_in(argv, env, cwd, None, stdin)
}

fn run_request_in(
    argv: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&str>,
    chroot: Option<&str>,
    stdin: Input,
) -> Request {
    Request::Run {
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
        cwd: cwd.map(|c| c.as_bytes().to_vec()),
        chroot: chroot.map(|c| c.as_bytes().to_vec()),
        stdin,
    }
}

fn unexpected(r: Response) -> ProtoError {
    ProtoError::Io(std::io::Error::other(format!("unexpected answer {r:?}")))
}

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
            match Self::try_connect(uds, deadline) {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// One attempt, which gives up at `deadline`: a VMM that accepts but never answers (its
    /// guest not up yet, or gone) must not hold the caller past it.
    fn try_connect(uds: &Path, deadline: Instant) -> Result<Self, ProtoError> {
        let mut stream = UnixStream::connect(uds)?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        stream.set_read_timeout(Some(left))?;
        stream.set_write_timeout(Some(left))?;
        stream.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())?;
        let mut line = Vec::new();
        {
            // "OK <port>\n" is short; a longer line is not the answer.
            let mut r = BufReader::new((&mut stream).take(64));
            r.read_until(b'\n', &mut line)?;
            // BufReader may have read past the line only if the agent spoke first; it never does.
        }
        if !line.starts_with(b"OK ") {
            return Err(ProtoError::Closed);
        }
        Self::hello(stream)
    }

    /// Talks to an agent already at the other end of `stream` (no VMM in between, so no
    /// `CONNECT` line): the agent's own tests serve one end of a socketpair.
    pub fn over_stream(stream: UnixStream) -> Result<Self, ProtoError> {
        Self::hello(stream)
    }

    /// Says hello and checks the agent speaks our protocol version.
    fn hello(mut stream: UnixStream) -> Result<Self, ProtoError> {
        write_frame(&mut stream, &Request::Hello { version: PROTOCOL_VERSION })?;
        match read_frame(&mut stream)? {
            Response::Hello { version, agent } if version == PROTOCOL_VERSION => {
                // Commands may run for hours: no time limit once connected.
                stream.set_read_timeout(None)?;
                stream.set_write_timeout(None)?;
                Ok(AgentClient { stream, agent })
            }
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
        on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExitStatus, ProtoError> {
        write_frame(&mut self.stream, &run_request(argv, env, cwd, Input::Bytes(Vec::new())))?;
        self.collect(on_output)
    }

    /// Like `run`, inside `chroot` (with /proc, /sys and /dev bind-mounted there); `cwd` is then
    /// a path inside the chroot.
    pub fn run_chrooted(
        &mut self,
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&str>,
        chroot: &str,
        on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExitStatus, ProtoError> {
        write_frame(&mut self.stream, &run_request_in(argv, env, cwd, Some(chroot), Input::Bytes(Vec::new())))?;
        self.collect(on_output)
    }

    /// Like `run`, feeding the command's standard input from `input` while it runs.
    pub fn run_with_input<R: Read + Send>(
        &mut self,
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&str>,
        input: R,
        on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExitStatus, ProtoError> {
        self.streamed(&run_request(argv, env, cwd, Input::Stream), input, on_output)
    }

    /// Unpacks the tar stream `input` into the guest directory `dir`.
    pub fn tar_in<R: Read + Send>(
        &mut self,
        dir: &str,
        input: R,
        on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExitStatus, ProtoError> {
        self.streamed(&Request::TarIn { dir: dir.as_bytes().to_vec() }, input, on_output)
    }

    /// Packs the guest directory `dir` into a tar stream written to `out`; `on_stderr` sees tar's
    /// messages.
    pub fn tar_out<W: Write>(
        &mut self,
        dir: &str,
        out: &mut W,
        mut on_stderr: impl FnMut(&[u8]),
    ) -> Result<ExitStatus, ProtoError> {
        write_frame(&mut self.stream, &Request::TarOut { dir: dir.as_bytes().to_vec() })?;
        let mut write_err = None;
        let status = self.collect(|is_err, data| {
            if is_err {
                on_stderr(data)
            } else if write_err.is_none() {
                if let Err(e) = out.write_all(data) {
                    write_err = Some(e);
                }
            }
        })?;
        match write_err {
            Some(e) => Err(e.into()),
            None => Ok(status),
        }
    }

    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ProtoError> {
        write_frame(&mut self.stream, &Request::ReadFile { path: path.as_bytes().to_vec() })?;
        match read_frame(&mut self.stream)? {
            Response::File(d) => Ok(d),
            Response::Error(e) => Err(ProtoError::Io(std::io::Error::other(e))),
            other => Err(unexpected(other)),
        }
    }

    pub fn write_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), ProtoError> {
        write_frame(
            &mut self.stream,
            &Request::WriteFile { path: path.as_bytes().to_vec(), mode, data: data.to_vec() },
        )?;
        match read_frame(&mut self.stream)? {
            Response::Done => Ok(()),
            Response::Error(e) => Err(ProtoError::Io(std::io::Error::other(e))),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `req`, then `input` as Stdin frames from a second thread while this one collects
    /// the answers (so a command that writes while it reads never deadlocks us).
    fn streamed<R: Read + Send>(
        &mut self,
        req: &Request,
        mut input: R,
        on_output: impl FnMut(bool, &[u8]),
    ) -> Result<ExitStatus, ProtoError> {
        write_frame(&mut self.stream, req)?;
        let mut writer = self.stream.try_clone()?;
        std::thread::scope(|scope| {
            let feeder = scope.spawn(move || -> Result<(), ProtoError> {
                let mut buf = vec![0u8; STDIN_CHUNK];
                loop {
                    let n = match input.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e.into()),
                    };
                    write_frame(&mut writer, &Request::Stdin(buf[..n].to_vec()))?;
                }
                write_frame(&mut writer, &Request::StdinEnd)
            });
            let status = self.collect(on_output);
            let fed = feeder.join().unwrap_or(Err(ProtoError::Closed));
            let status = status?;
            fed.map(|()| status)
        })
    }

    /// Reads output frames until the command's end.
    fn collect(&mut self, mut on_output: impl FnMut(bool, &[u8])) -> Result<ExitStatus, ProtoError> {
        loop {
            match read_frame(&mut self.stream)? {
                Response::Stdout(d) => on_output(false, &d),
                Response::Stderr(d) => on_output(true, &d),
                Response::Exited(c) => return Ok(ExitStatus::Code(c)),
                Response::Signaled(s) => return Ok(ExitStatus::Signal(s)),
                Response::Error(e) => return Err(ProtoError::Io(std::io::Error::other(e))),
                other => return Err(unexpected(other)),
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
