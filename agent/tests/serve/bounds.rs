//! What the agent holds for a side that does not keep up: one chunk in flight, not a growing
//! buffer. A host that stops reading stops the command; a command that stops reading stops the
//! host.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use microdib_proto::client::ExitStatus;

use crate::support::{Agent, Cmd, TempDir, MIB};

/// How long the slow side stalls: ample time to move tens of MiB into a buffer, were there one.
const STALL: Duration = Duration::from_millis(500);

#[test]
fn a_host_that_stops_reading_output_holds_the_command_back() {
    let dir = TempDir::new("output-held-back");
    let marker = dir.path().join("past-8MiB");
    // The marker is made once the first 8 MiB are written, that is, taken by the agent.
    let cmd = Cmd::sh("head -c 8M /dev/zero; : > past-8MiB; head -c 8M /dev/zero").cwd(dir.path());
    let mut agent = Agent::start();
    let (mut received, mut marker_while_stalled) = (0, None);
    let status = agent
        .run_watching(&cmd, |_, data| {
            if marker_while_stalled.is_none() {
                std::thread::sleep(STALL);
                marker_while_stalled = Some(marker.exists());
            }
            received += data.len();
        })
        .unwrap();
    assert_eq!(marker_while_stalled, Some(false), "the command wrote 8 MiB while the host read nothing");
    assert_eq!(received, 16 * MIB);
    assert_eq!(status, ExitStatus::Code(0));
}

/// The input the host streams: `left` zero bytes, counting what the client has taken.
struct CountedZeros {
    left: usize,
    taken: Arc<AtomicUsize>,
}

impl Read for CountedZeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left);
        buf[..n].fill(0);
        self.left -= n;
        self.taken.fetch_add(n, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn a_command_that_does_not_read_its_input_holds_the_host_back() {
    let taken = Arc::new(AtomicUsize::new(0));
    let input = CountedZeros { left: 32 * MIB, taken: taken.clone() };
    let run = std::thread::spawn(move || {
        let mut agent = Agent::start();
        // It reads nothing for a second, then everything.
        agent.run_with_input(&Cmd::sh("sleep 1; exec cat >/dev/null"), input).unwrap()
    });
    std::thread::sleep(STALL);
    let taken_while_stalled = taken.load(Ordering::SeqCst);
    let out = run.join().unwrap();
    assert!(taken_while_stalled < 4 * MIB, "the host sent {taken_while_stalled} bytes to a command not reading");
    assert_eq!(taken.load(Ordering::SeqCst), 32 * MIB);
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}
