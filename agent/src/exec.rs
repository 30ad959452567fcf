//! Running one command for the host: started with exactly the environment it was given, in a
//! process group of its own, optionally chrooted; its output sent as frames while it runs, its
//! input taken from the request or from `Stdin` frames; then how it ended.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use microdib_proto::{Input, Request, Response};

use crate::chroot::Chroot;
use crate::conn::{Replies, Requests};
use crate::sys;

/// A command to run, as the host described it.
pub struct Job {
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Inside the chroot if there is one.
    pub cwd: Option<Vec<u8>>,
    pub chroot: Option<Vec<u8>>,
    pub stdin: Input,
}

/// How long the command's output may stay open once it has ended (held by something it left
/// running in the background) before its process group is killed so the answer can go out.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The most one output frame carries.
const OUTPUT_CHUNK: usize = 64 * 1024;

/// Runs `job`, its output going out on `replies` and its streamed input coming from
/// `requests`; the answer that ends it (`Exited`, `Signaled` or `Error`).
pub fn run(job: Job, replies: &Replies, requests: &mut Requests) -> Response {
    match run_to_end(job, replies, requests) {
        Ok(status) => exit_answer(status),
        Err(message) => Response::Error(message),
    }
}

fn run_to_end(job: Job, replies: &Replies, requests: &mut Requests) -> Result<ExitStatus, String> {
    let Job { argv, env, cwd, chroot, stdin } = job;
    let (program, args) = argv.split_first().ok_or("empty argv")?;
    let mut cmd = command(program, args, &env);
    // Held until the command is done: dropping it unmounts and restores the chroot.
    let _chroot = match chroot {
        None => {
            if let Some(dir) = &cwd {
                cmd.current_dir(OsStr::from_bytes(dir));
            }
            None
        }
        Some(root) => Some(Chroot::prepare(&mut cmd, PathBuf::from(OsString::from_vec(root)), cwd)?),
    };
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", String::from_utf8_lossy(program)))?;
    // The command leads its process group, so the group has its id.
    let group = child.id();
    let output = OutputPumps::start(&mut child, replies);
    let fed = feed_input(child.stdin.take(), stdin, requests);
    if fed.is_err() {
        sys::kill_process_group(group);
        let _ = child.wait();
        output.finish(group, OUTPUT_GRACE);
        return Err("the host stopped sending the command's input".into());
    }
    let status = child.wait();
    output.finish(group, OUTPUT_GRACE);
    status.map_err(|e| format!("wait failed: {e}"))
}

/// The command with exactly `env`, its three standard streams piped to us, leading a process
/// group of its own so that everything it starts can be stopped with it.
fn command(program: &[u8], args: &[Vec<u8>], env: &[(Vec<u8>, Vec<u8>)]) -> Command {
    let mut cmd = Command::new(OsStr::from_bytes(program));
    cmd.args(args.iter().map(|a| OsStr::from_bytes(a)));
    cmd.env_clear();
    cmd.envs(env.iter().map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))));
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0);
    cmd
}

fn exit_answer(status: ExitStatus) -> Response {
    match (status.code(), status.signal()) {
        (Some(code), _) => Response::Exited(code),
        (None, Some(signal)) => Response::Signaled(signal),
        _ => Response::Error("unknown exit status".into()),
    }
}

/// The threads sending the command's stdout and stderr as frames while it runs.
struct OutputPumps(Vec<JoinHandle<()>>);

impl OutputPumps {
    fn start(child: &mut Child, replies: &Replies) -> Self {
        let mut pumps = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            pumps.push(pump(stdout, Response::Stdout, replies.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.push(pump(stderr, Response::Stderr, replies.clone()));
        }
        OutputPumps(pumps)
    }

    fn busy(&self) -> bool {
        self.0.iter().any(|p| !p.is_finished())
    }

    /// Waits until all output is sent; past `grace`, kills process group `group` (whatever still
    /// holds the output open is in it) and waits for the rest.
    fn finish(self, group: u32, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.busy() {
            sys::kill_process_group(group);
        }
        for pump in self.0 {
            let _ = pump.join();
        }
    }
}

/// Sends what `pipe` gives as `frame`s until it ends or the host is gone. One frame at a time:
/// a host that reads slowly stops the pipe, and with it the command.
fn pump(mut pipe: impl Read + Send + 'static, frame: fn(Vec<u8>) -> Response, replies: Replies) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; OUTPUT_CHUNK];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !replies.send(&frame(buf[..n].to_vec())) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    })
}

/// The host broke off the command's input: it closed the connection or sent another request.
struct Cancelled;

/// Gives the command its input; returns once all of it is handed over (Bytes: at once, written
/// from a thread of its own) or cut off.
fn feed_input(stdin: Option<ChildStdin>, input: Input, requests: &mut Requests) -> Result<(), Cancelled> {
    match input {
        Input::Bytes(bytes) => {
            write_in_background(stdin, bytes);
            Ok(())
        }
        Input::Stream => forward_stdin_frames(stdin, requests),
    }
}

/// A command that writes much before it reads must not stall on its own input.
fn write_in_background(stdin: Option<ChildStdin>, bytes: Vec<u8>) {
    if let Some(mut stdin) = stdin {
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
}

/// Writes `Stdin` frames into the command until `StdinEnd`, then closes its input. Each frame
/// is written before the next is read, so a command that does not read holds the host back.
fn forward_stdin_frames(mut stdin: Option<ChildStdin>, requests: &mut Requests) -> Result<(), Cancelled> {
    loop {
        match requests.next() {
            Ok(Request::Stdin(data)) => {
                // A command that stopped reading just loses the rest of its input.
                if stdin.as_mut().is_some_and(|s| s.write_all(&data).is_err()) {
                    stdin = None;
                }
            }
            Ok(Request::StdinEnd) => return Ok(()),
            Ok(_) | Err(_) => return Err(Cancelled),
        }
    }
}
