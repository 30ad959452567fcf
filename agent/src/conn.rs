//! The two directions of one connection: requests are read by one thread at a time; answers
//! are written by the request loop and, while a command runs, by its output threads at once.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use microdib_proto::{read_frame, write_frame, ProtoError, Request, Response};

/// Splits a connection into its reading and its (shareable) writing side.
pub fn split(stream: UnixStream) -> std::io::Result<(Requests, Replies)> {
    let writer = stream.try_clone()?;
    Ok((Requests(stream), Replies(Arc::new(Mutex::new(writer)))))
}

pub struct Requests(UnixStream);

impl Requests {
    pub fn next(&mut self) -> Result<Request, ProtoError> {
        read_frame(&mut self.0)
    }
}

#[derive(Clone)]
pub struct Replies(Arc<Mutex<UnixStream>>);

impl Replies {
    /// Sends one frame, whole (the lock keeps frames of several writers apart); false once the
    /// host is gone.
    pub fn send(&self, msg: &Response) -> bool {
        let mut stream = self.0.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *stream, msg).is_ok()
    }
}
