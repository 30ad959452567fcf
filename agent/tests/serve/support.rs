//! Helpers: an agent on a socketpair, commands and their output as values, a raw protocol
//! end, temporary directories, watching processes.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use microdib_agent::server::{self, Outcome};
use microdib_proto::client::{AgentClient, ExitStatus};
use microdib_proto::{read_frame, write_frame, Input, ProtoError, Request, Response, GUEST_PATH};

/// The agent serving one connection on a thread of this process, the host's client on the other
/// end.
pub struct Agent {
    pub client: AgentClient,
    server: JoinHandle<Outcome>,
}

impl Agent {
    pub fn start() -> Agent {
        let (host, guest) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || server::serve(guest));
        let client = AgentClient::over_stream(host).unwrap();
        Agent { client, server }
    }

    pub fn run(&mut self, cmd: &Cmd) -> Result<Output, ProtoError> {
        let mut out = Output::default();
        out.status = Some(self.run_watching(cmd, |is_err, data| out.add(is_err, data))?);
        Ok(out)
    }

    /// Runs `cmd`, `on_output(is_stderr, data)` seeing each output frame as it comes.
    pub fn run_watching(&mut self, cmd: &Cmd, on_output: impl FnMut(bool, &[u8])) -> Result<ExitStatus, ProtoError> {
        self.client.run(&cmd.argv(), &cmd.env_pairs(), cmd.cwd.as_deref(), on_output)
    }

    pub fn run_with_input(&mut self, cmd: &Cmd, input: impl Read + Send) -> Result<Output, ProtoError> {
        let mut out = Output::default();
        let status =
            self.client.run_with_input(&cmd.argv(), &cmd.env_pairs(), cmd.cwd.as_deref(), input, |is_err, data| {
                out.add(is_err, data)
            })?;
        out.status = Some(status);
        Ok(out)
    }

    /// Asks the agent to power off (it must answer `Bye`) and says how its side ended: the
    /// server only reports the request; powering off is main's.
    pub fn power_off(self) -> Outcome {
        self.client.power_off().unwrap();
        self.server.join().unwrap()
    }

    /// Hangs up and says how the agent's side ended.
    pub fn hang_up(self) -> Outcome {
        drop(self.client);
        self.server.join().unwrap()
    }
}

/// A command line: by default the appliance's PATH and nothing else in the environment.
#[derive(Clone)]
pub struct Cmd {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
}

impl Cmd {
    pub fn new(argv: &[&str]) -> Cmd {
        Cmd {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![("PATH".into(), GUEST_PATH.into())],
            cwd: None,
        }
    }

    pub fn sh(script: &str) -> Cmd {
        Cmd::new(&["sh", "-c", script])
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cmd {
        self.cwd = Some(dir.to_str().unwrap().into());
        self
    }

    fn argv(&self) -> Vec<&str> {
        self.argv.iter().map(String::as_str).collect()
    }

    fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// The `Run` request for this command, for a raw host.
    pub fn request(&self, stdin: Input) -> Request {
        Request::Run {
            argv: self.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: self.env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            cwd: self.cwd.as_ref().map(|c| c.as_bytes().to_vec()),
            chroot: None,
            stdin,
        }
    }
}

/// What a command wrote and how it ended.
#[derive(Default, Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: Option<ExitStatus>,
}

impl Output {
    fn add(&mut self, is_err: bool, data: &[u8]) {
        if is_err { &mut self.stderr } else { &mut self.stdout }.extend_from_slice(data);
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8(self.stderr.clone()).unwrap()
    }
}

/// A host speaking frames itself, for what `AgentClient` never sends.
pub struct RawHost {
    stream: UnixStream,
    server: JoinHandle<Outcome>,
}

impl RawHost {
    pub fn start() -> RawHost {
        let (host, guest) = UnixStream::pair().unwrap();
        // A broken agent fails the test instead of hanging it.
        host.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let server = std::thread::spawn(move || server::serve(guest));
        RawHost { stream: host, server }
    }

    pub fn send(&mut self, request: &Request) {
        write_frame(&mut self.stream, request).unwrap();
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.stream, bytes).unwrap();
    }

    pub fn recv(&mut self) -> Result<Response, ProtoError> {
        read_frame(&mut self.stream)
    }

    /// The next answer that is not output, the output before it kept.
    pub fn recv_end(&mut self, out: &mut Output) -> Response {
        loop {
            match self.recv().unwrap() {
                Response::Stdout(d) => out.stdout.extend_from_slice(&d),
                Response::Stderr(d) => out.stderr.extend_from_slice(&d),
                end => return end,
            }
        }
    }

    /// Stdout up to and including the first newline.
    pub fn recv_line(&mut self) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            match self.recv().unwrap() {
                Response::Stdout(d) => line.extend_from_slice(&d),
                other => panic!("expected output, got {other:?}"),
            }
        }
        String::from_utf8(line).unwrap()
    }

    /// Stops sending (the agent reads end of stream) but goes on listening.
    pub fn stop_sending(&self) {
        self.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }

    pub fn outcome(self) -> Outcome {
        drop(self.stream);
        self.server.join().unwrap()
    }
}

/// Runs `f`, failing the test if it takes longer than `limit` (a hang) instead of hanging with it.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("still running after {limit:?}: it hangs"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the test body panicked"),
    }
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("microdib-agent-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir.canonicalize().unwrap())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody has reaped yet).
pub fn has_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to `limit` for process `pid` to end; whether it did.
pub fn ends_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !has_ended(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Reproducible bytes that are not all alike (xorshift).
pub fn varied_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// `1\n2\n...n\n`, as `seq n` writes it.
pub fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

pub const MIB: usize = 1024 * 1024;
