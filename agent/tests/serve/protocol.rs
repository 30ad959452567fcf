//! The conversation itself: greeting, requests out of place, broken frames, its end.

use microdib_agent::server::Outcome;
use microdib_proto::{Request, Response, MAX_FRAME};

use crate::support::{Agent, RawHost};

#[test]
fn hello_names_the_agent_and_ping_is_answered() {
    let mut agent = Agent::start();
    assert!(agent.client.agent.starts_with("microdib-agent "), "{}", agent.client.agent);
    agent.client.ping().unwrap();
    assert_eq!(agent.hang_up(), Outcome::Disconnected);
}

#[test]
fn power_off_is_answered_bye_and_left_to_the_caller() {
    let agent = Agent::start();
    assert_eq!(agent.power_off(), Outcome::PowerOffRequested);
}

#[test]
fn input_without_a_command_is_an_error() {
    let mut host = RawHost::start();
    host.send(&Request::Stdin(b"for nobody".to_vec()));
    assert_eq!(host.recv().unwrap(), Response::Error("no command is reading input".into()));
    host.send(&Request::Ping);
    assert_eq!(host.recv().unwrap(), Response::Pong);
}

#[test]
fn a_malformed_frame_is_answered_and_ends_the_conversation() {
    let mut host = RawHost::start();
    host.send_bytes(&[3, 0, 0, 0, 200, 200, 200]);
    let Response::Error(e) = host.recv().unwrap() else { panic!("no error") };
    assert!(e.starts_with("bad request: malformed message"), "{e}");
    assert_eq!(host.outcome(), Outcome::Disconnected);
}

#[test]
fn a_frame_over_the_limit_is_refused_before_it_is_read() {
    let mut host = RawHost::start();
    host.send_bytes(&(MAX_FRAME + 1).to_le_bytes());
    let Response::Error(e) = host.recv().unwrap() else { panic!("no error") };
    assert!(e.contains(&format!("frame of {} bytes is over", MAX_FRAME + 1)), "{e}");
    assert_eq!(host.outcome(), Outcome::Disconnected);
}
