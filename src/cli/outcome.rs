//! How a build's end reaches the user: the message and the exit status, virt-dib's way (an
//! extra-data.d script's own status passed on; a stop signal named; everything else an error
//! line and status 1).

use crate::engine::EngineError;
use crate::report::{Reporter, Stream};

/// Says how the build ended and returns the process's exit status.
pub fn conclude(reporter: &Reporter, result: &Result<(), EngineError>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(EngineError::Exit(code)) => (*code).clamp(1, 255) as u8,
        Err(EngineError::Signal(name)) => {
            let line = format!("{}: Exiting on signal {name}\n", reporter.prog());
            reporter.write(Stream::Err, line.as_bytes());
            1
        }
        Err(e) => {
            reporter.error(&e.to_string());
            1
        }
    }
}
