//! One connection's conversation: requests one at a time, each answered before the next is
//! read. Nothing a host sends may kill the agent (a PID 1 panic is a kernel panic): every
//! failure becomes an `Error` answer. Powering off is left to the caller.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use microdib_proto::{Input, ProtoError, Request, Response, PROTOCOL_VERSION};

use crate::conn::{self, Replies, Requests};
use crate::exec::{self, Job};
use crate::{files, tar};

/// How a conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host closed the connection, or it broke.
    Disconnected,
    /// The host asked for the VM to end, and was answered `Bye`.
    PowerOffRequested,
}

/// Serves requests on `stream` until the host goes away or asks to power off.
pub fn serve(stream: UnixStream) -> Outcome {
    let Ok((mut requests, replies)) = conn::split(stream) else { return Outcome::Disconnected };
    // Set once a streamed request is answered with `Error` (its command could not start, say):
    // the input the host still sends for it is dropped unanswered, up to its `StdinEnd`. Answers
    // would go unread, put the conversation out of step and, filling the connection, stop both.
    let mut dropping_input = false;
    loop {
        let request = match requests.next() {
            Ok(r) => r,
            Err(ProtoError::Closed) => return Outcome::Disconnected,
            Err(e) => {
                replies.send(&Response::Error(format!("bad request: {e}")));
                return Outcome::Disconnected;
            }
        };
        if dropping_input {
            dropping_input = matches!(request, Request::Stdin(_));
            if matches!(request, Request::Stdin(_) | Request::StdinEnd) {
                continue;
            }
        }
        let streams_input = streams_input(&request);
        let Some(answer) = answer(request, &replies, &mut requests) else {
            replies.send(&Response::Bye);
            return Outcome::PowerOffRequested;
        };
        dropping_input = streams_input && matches!(answer, Response::Error(_));
        if !replies.send(&answer) {
            return Outcome::Disconnected;
        }
    }
}

/// Whether the host follows `request` with `Stdin` frames and a `StdinEnd`.
fn streams_input(request: &Request) -> bool {
    matches!(request, Request::Run { stdin: Input::Stream, .. } | Request::TarIn { .. })
}

/// Carries out one request (a command's output goes out on `replies` as it comes) and gives
/// the answer that ends it; None for `PowerOff`, which ends the conversation instead.
fn answer(request: Request, replies: &Replies, requests: &mut Requests) -> Option<Response> {
    Some(match request {
        Request::Hello { .. } => Response::Hello {
            version: PROTOCOL_VERSION,
            agent: format!("microdib-agent {}", env!("CARGO_PKG_VERSION")),
        },
        Request::Ping => Response::Pong,
        Request::Run { argv, env, cwd, chroot, stdin } => {
            exec::run(Job { argv, env, cwd, chroot, stdin }, replies, requests)
        }
        Request::TarIn { dir } => match std::fs::create_dir_all(OsStr::from_bytes(&dir)) {
            Ok(()) => exec::run(tar::unpack_job(dir), replies, requests),
            Err(e) => Response::Error(format!("cannot create {}: {e}", String::from_utf8_lossy(&dir))),
        },
        Request::TarOut { dir } => exec::run(tar::pack_job(dir), replies, requests),
        Request::ReadFile { path } => files::read_file(&path),
        Request::WriteFile { path, mode, data } => files::write_file(&path, mode, &data),
        Request::Stdin(_) | Request::StdinEnd => Response::Error("no command is reading input".into()),
        Request::PowerOff => return None,
    })
}
