//! Running commands: output, input, exit, environment, and what is left of a command after it.

use std::time::Duration;

use microdib_agent::server::Outcome;
use microdib_proto::client::ExitStatus;
use microdib_proto::{Input, Request, Response};

use crate::support::{ends_within, seq, varied_bytes, within, Agent, Cmd, Output, RawHost, TempDir, MIB};

#[test]
fn stdout_and_stderr_arrive_separately_each_in_order() {
    let mut agent = Agent::start();
    let out = agent.run(&Cmd::sh("for i in 1 2 3 4 5; do echo out $i; echo err $i >&2; done")).unwrap();
    assert_eq!(out.stdout_text(), "out 1\nout 2\nout 3\nout 4\nout 5\n");
    assert_eq!(out.stderr_text(), "err 1\nerr 2\nerr 3\nerr 4\nerr 5\n");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn mebibytes_of_output_on_both_streams_at_once_arrive_complete() {
    let mut agent = Agent::start();
    let out = agent.run(&Cmd::sh("seq 1000000 & seq 1000000 >&2; wait")).unwrap();
    let expected = seq(1_000_000);
    assert!(expected.len() > 6 * MIB);
    assert!(out.stdout_text() == expected, "stdout: {} bytes of {}", out.stdout.len(), expected.len());
    assert!(out.stderr_text() == expected, "stderr: {} bytes of {}", out.stderr.len(), expected.len());
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn streamed_input_reaches_the_command_whole() {
    let mut agent = Agent::start();
    let input = varied_bytes(8 * MIB);
    let out = agent.run_with_input(&Cmd::new(&["cat"]), &input[..]).unwrap();
    assert!(out.stdout == input, "{} bytes came back of {}", out.stdout.len(), input.len());
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn input_given_with_the_request_reaches_the_command() {
    let mut host = RawHost::start();
    host.send(&Cmd::new(&["cat"]).request(Input::Bytes(b"given with the request\n".to_vec())));
    let mut out = Output::default();
    assert_eq!(host.recv_end(&mut out), Response::Exited(0));
    assert_eq!(out.stdout_text(), "given with the request\n");
}

#[test]
fn the_exit_code_is_reported() {
    let mut agent = Agent::start();
    assert_eq!(agent.run(&Cmd::sh("exit 3")).unwrap().status, Some(ExitStatus::Code(3)));
    assert_eq!(agent.run(&Cmd::new(&["true"])).unwrap().status, Some(ExitStatus::Code(0)));
}

#[test]
fn death_by_signal_is_reported_with_the_signal() {
    let mut agent = Agent::start();
    let out = agent.run(&Cmd::sh("kill -TERM $$")).unwrap();
    assert_eq!(out.status, Some(ExitStatus::Signal(libc::SIGTERM)));
}

#[test]
fn the_environment_is_exactly_the_one_given() {
    let mut agent = Agent::start();
    let out = agent.run(&Cmd::new(&["env"]).env("GREETING", "hello world")).unwrap();
    let text = out.stdout_text();
    let mut vars: Vec<&str> = text.lines().collect();
    vars.sort();
    assert_eq!(vars, ["GREETING=hello world", &format!("PATH={}", microdib_proto::GUEST_PATH)]);
}

#[test]
fn the_command_runs_in_the_directory_given() {
    let dir = TempDir::new("cwd");
    let mut agent = Agent::start();
    let out = agent.run(&Cmd::new(&["pwd"]).cwd(dir.path())).unwrap();
    assert_eq!(out.stdout_text(), format!("{}\n", dir.path().display()));
}

#[test]
fn a_missing_program_is_an_error_naming_it_and_the_connection_goes_on() {
    within(Duration::from_secs(20), || {
        let mut agent = Agent::start();
        let err = agent.run(&Cmd::new(&["/nonexistent/microdib-test-program"])).unwrap_err().to_string();
        assert!(err.contains("cannot run /nonexistent/microdib-test-program"), "{err}");
        assert!(err.contains("No such file or directory"), "{err}");
        agent.client.ping().unwrap();
    });
}

#[test]
fn an_empty_command_line_is_an_error() {
    let mut agent = Agent::start();
    let err = agent.run(&Cmd::new(&[])).unwrap_err().to_string();
    assert!(err.contains("empty argv"), "{err}");
}

#[test]
fn a_background_child_holding_the_output_is_killed_once_the_command_has_ended() {
    // The child keeps stdout open: without the kill no answer could come for 300 s.
    let out = within(Duration::from_secs(30), || Agent::start().run(&Cmd::sh("sleep 300 & echo $!")).unwrap());
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
    let child: u32 = out.stdout_text().trim().parse().unwrap();
    assert!(ends_within(child, Duration::from_secs(5)), "the background child {child} still runs");
}

#[test]
fn a_command_whose_input_is_broken_off_is_killed_with_its_background_child() {
    let mut host = RawHost::start();
    // Neither reads its input nor holds the output: only killing the group ends them.
    host.send(&Cmd::sh("sleep 300 >/dev/null 2>&1 & echo $$ $!; exec sleep 300").request(Input::Stream));
    let pids = host.recv_line();
    let (command, child) = pids.trim().split_once(' ').unwrap();
    let (command, child): (u32, u32) = (command.parse().unwrap(), child.parse().unwrap());
    host.send(&Request::Stdin(b"some input\n".to_vec()));
    host.stop_sending();
    let mut out = Output::default();
    assert_eq!(host.recv_end(&mut out), Response::Error("the host stopped sending the command's input".into()));
    assert!(ends_within(command, Duration::from_secs(5)), "the command {command} still runs");
    assert!(ends_within(child, Duration::from_secs(5)), "the background child {child} still runs");
    assert_eq!(host.outcome(), Outcome::Disconnected);
}

#[test]
fn a_missing_program_given_streamed_input_is_an_error_and_the_connection_goes_on() {
    within(Duration::from_secs(30), || {
        let mut agent = Agent::start();
        let input = varied_bytes(4 * MIB);
        let err = agent.run_with_input(&Cmd::new(&["/nonexistent/microdib-test-program"]), &input[..]).unwrap_err();
        assert!(err.to_string().contains("cannot run /nonexistent/microdib-test-program"), "{err}");
        agent.client.ping().unwrap();
    });
}

#[test]
fn the_input_of_a_command_that_could_not_start_is_dropped_unanswered() {
    within(Duration::from_secs(30), || {
        let mut host = RawHost::start();
        host.send(&Cmd::new(&["/nonexistent/microdib-test-program"]).request(Input::Stream));
        // Many frames, nothing read back until all are sent: were each answered, the answers
        // would fill the connection, the agent would stop reading, and the host stop sending.
        for _ in 0..100_000 {
            host.send(&Request::Stdin(b"x".to_vec()));
        }
        host.send(&Request::StdinEnd);
        host.send(&Request::Ping);
        let Response::Error(e) = host.recv().unwrap() else { panic!("no error") };
        assert!(e.contains("cannot run /nonexistent/microdib-test-program"), "{e}");
        assert_eq!(host.recv().unwrap(), Response::Pong);
    });
}
