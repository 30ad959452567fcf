//! The agent's entry point: PID 1's setup when it is PID 1, then the vsock server, a thread
//! per connection.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use microdib_agent::server::{self, Outcome};
use microdib_agent::{pid1, vsock};
use microdib_proto::{AGENT_PORT, READY_BANNER};

fn main() {
    if pid1::is_pid1() {
        pid1::init();
    }
    let listener = match vsock::listen(AGENT_PORT) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("microdib-agent: cannot listen on vsock port {AGENT_PORT}: {e}");
            pid1::power_off();
        }
    };
    println!("{READY_BANNER}");
    let _ = std::io::stdout().flush();
    loop {
        match vsock::accept(&listener) {
            Ok(conn) => {
                let _ = std::thread::Builder::new().name("conn".into()).spawn(move || serve(conn));
            }
            Err(e) => {
                eprintln!("microdib-agent: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve(conn: UnixStream) {
    if server::serve(conn) == Outcome::PowerOffRequested {
        pid1::power_off();
    }
}
